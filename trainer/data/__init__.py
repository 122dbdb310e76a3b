"""Data sets for the trainer, binarized to {0, 1} inputs: `load_dataset(name, data_dir)`."""

from trainer.data.datasets import DATASETS, DataError, Dataset, load_dataset

__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset"]
