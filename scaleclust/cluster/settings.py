"""The base of every config section. It lives here, below scaleclust.config, so that each clustering
method's module holds its own section and scaleclust.config composes them."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Base for config sections: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
