"""The service's configuration errors, one module: an environment variable or the tokens file
that cannot be used (each message names it)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value a user set cannot be used; the message names the variable."""


class TokenFileError(ValueError):
    """The tokens file cannot be used; the message says why (never with a token in it)."""
