"""The errors of the data loaders and of encoding an upload: their message is what the user
reads."""


class DataError(RuntimeError):
    """A data set cannot be loaded: a missing or malformed file, a failed download."""


class BadData(DataError):
    """An uploaded file cannot become a data set (trainer.data.encode). `status` is the HTTP
    status an upload gets: 413 for one that is (or expands to) more than the limit, 422 for
    everything else."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
