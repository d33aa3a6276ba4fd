"""``make test`` never claims a layer it did not run.

The Makefile is read as text: the layers ``test:`` depends on must each have tests, every
folder with tests must be one of them, and no layer's recipe can pass by running nothing.
The README's table and CI's script name the same layers.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAKEFILE = (ROOT / "Makefile").read_text(encoding="utf-8")
LAYERS = ("unit", "workflow", "infra", "integration", "notebooks")


def _rules() -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines), for the Makefile's explicit rules."""
    rules: dict[str, tuple[list[str], list[str]]] = {}
    current: list[str] | None = None
    text = MAKEFILE.replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("\t") and current is not None:
            current.append(line.strip())
            continue
        match = re.match(r"^([A-Za-z0-9_.%$()/-]+):(?!=)([^#]*)", line)
        if match and not line.startswith((" ", "\t")):
            current = []
            rules[match.group(1)] = (match.group(2).split(), current)
        elif line.strip() and not line.startswith("#"):
            current = None
    return rules


def _has_tests(layer: str) -> bool:
    return any((ROOT / "tests" / layer).rglob("test_*.py"))


def _test_layers() -> list[str]:
    prereqs, _ = _rules()["test"]
    return [p.removeprefix("test-") for p in prereqs if p.startswith("test-")]


def test_make_test_runs_lint_and_layers_that_have_tests() -> None:
    prereqs, _ = _rules()["test"]
    assert prereqs[0] == "lint"
    layers = _test_layers()
    assert layers, prereqs
    for layer in layers:
        assert _has_tests(layer), f"`make test` lists test-{layer} but tests/{layer}/ has no tests"


def test_every_layer_with_tests_is_in_make_test() -> None:
    for layer in LAYERS:
        if _has_tests(layer):
            assert layer in _test_layers(), f"tests/{layer}/ has tests but `make test` skips it"


def test_no_layer_recipe_can_pass_by_running_nothing() -> None:
    rules = _rules()
    assert not re.search(r"\bif\s+ls\b", MAKEFILE), "a recipe hides a missing layer"
    for layer in LAYERS:
        prereqs, recipe = rules[f"test-{layer}"]
        # pytest runs unconditionally on the layer's folder (it exits 5 when it collects none)
        assert any(
            line.startswith("$(PYTEST)") and line.endswith(f"tests/{layer}") for line in recipe
        ), recipe
        assert not any("|| true" in line or line.startswith("-") for line in recipe), recipe
        # and a folder without tests fails first, with one line that says so
        assert prereqs[0] == f"has-tests-{layer}", prereqs
    check = " ".join(rules["has-tests-%"][1])
    assert "exit 1" in check and "echo" in check


def test_readme_and_ci_name_the_layers_make_test_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Tests and checks", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| `make test` |"))
    for layer in _test_layers():
        assert f"`make test-{layer}`" in section, layer
        assert layer in row, f"the README's `make test` row does not name {layer}"
    for layer in set(LAYERS) - set(_test_layers()):
        assert layer not in row, f"the README's `make test` row claims {layer}"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci
    for layer in _test_layers():
        assert layer in ci, f".ci/run does not say that make test runs {layer}"


def test_every_target_the_readme_names_is_listed_by_make_help() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    helped = set(re.findall(r"^([a-z-]+):.*## ", MAKEFILE, flags=re.M))
    named = set(re.findall(r"`make ([a-z-]+)", readme))
    assert named <= helped, named - helped
