"""Settings read from a Lambda function's environment: one validated Pydantic model each.

Each field is read from the variable of its name in upper case (``table_name`` from
``TABLE_NAME``) and validated as the model says, at the first invocation: a bad value fails the
cold start with pydantic's ``ValidationError`` naming it, instead of failing later. (A plain
model over ``os.environ``: pydantic-settings would add its many sources, and about 25 ms to
every cold start, for none of its features used here.)
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["EnvironmentSettings"]


class EnvironmentSettings(BaseModel):
    """A frozen model whose unset fields come from the environment (``FIELD_NAME``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    def __init__(self, **values: Any) -> None:
        from_environment = {
            name: os.environ[name.upper()]
            for name in type(self).model_fields
            if name not in values and name.upper() in os.environ
        }
        super().__init__(**from_environment, **values)
