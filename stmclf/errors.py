"""User-facing errors: one line, exit code 2, no traceback (the CLI catches them)."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (file, config value, command line). The message is one line."""


class ConfigError(UserError):
    """A config value is wrong; the message names the key path and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)
