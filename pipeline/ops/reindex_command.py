"""The `dicom-pipeline` subcommands of this operations module (registered by pipeline.cli)."""

from __future__ import annotations

from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add this module's subcommands to the CLI's subparsers."""
