"""The base of every config section, and the error a user can fix."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ctxvec.errors import UserInputError


class ConfigError(UserInputError):
    """A recipe or override the user can fix; the CLI turns it into exit code 2."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
