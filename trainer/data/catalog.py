"""The data sets a run may name and their class counts.

Apart from the loaders so the API can validate `dataset` and `grouping` without numpy
(its image has none); `trainer.data.datasets` registers a loader for each name here.
"""

from __future__ import annotations

CLASSES: dict[str, int] = {"digits": 10, "breast_cancer": 2, "mnist": 10, "cifar10": 10}
DATASETS: tuple[str, ...] = tuple(CLASSES)
