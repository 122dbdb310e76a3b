"""What the worker's modules raise to one another: one module for the worker's exceptions."""


class LeaseLapsed(Exception):
    """The attempt's lease may have expired: it must not write until it is confirmed."""


class DatasetUnavailable(Exception):
    """The job's data set cannot be had: deleted, or its stored file is not what it was."""
