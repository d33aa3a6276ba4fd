"""Settings read from a Lambda function's environment: one validated model each (msgspec).

Each field is read from the variable of its name in upper case (``table_name`` from
``TABLE_NAME``) and validated as the model says, at the first invocation: a bad value fails the
cold start with :class:`msgspec.ValidationError` naming the field (``- at `$.max_workers```),
instead of failing later. Environment strings become the fields' types (``"7"`` an ``int``)
as pydantic's lax mode did.

Why msgspec and not Pydantic (STYLE.md's habit): importing pydantic costs the parse handler's
cold start about 60 ms of CPU, a third of ``import boto3, pydicom``; msgspec's typed
``Struct`` with ``Meta`` constraints validates the same way for about 3 ms
(docs/performance.md, "Cold start").

A ``Struct``'s own constructor does not validate: build settings with
:meth:`EnvironmentSettings.from_environment`, never by calling the class.
"""

from __future__ import annotations

import os
from typing import Any, Self

import msgspec

__all__ = ["EnvironmentSettings"]


class EnvironmentSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A frozen model whose unset fields come from the environment (``FIELD_NAME``)."""

    @classmethod
    def from_environment(cls, **values: Any) -> Self:
        """The settings from ``values``, then the environment, validated.

        Raises
        ------
        msgspec.ValidationError
            A variable is missing or invalid; the message names the field, not its value.
        """
        data = {
            name: os.environ[name.upper()]
            for name in cls.__struct_fields__
            if name not in values and name.upper() in os.environ
        }
        data.update(values)
        return msgspec.convert(data, type=cls, strict=False)
