"""The one error the data loaders raise: its message is what the user reads."""


class DataError(RuntimeError):
    """A data set cannot be loaded: a missing or malformed file, a failed download."""
