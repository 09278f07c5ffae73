"""Data sources and splits. See `schema` for the data model."""

from .schema import Catalog, Dataset, EventLog, GroundTruth, Samples
from .splits import make_splits, popularity_scores, training_rows_mask
from .synthetic import make_synthetic

__all__ = [
    "Catalog",
    "Dataset",
    "EventLog",
    "GroundTruth",
    "Samples",
    "make_splits",
    "make_synthetic",
    "popularity_scores",
    "training_rows_mask",
]
