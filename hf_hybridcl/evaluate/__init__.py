"""Evaluation protocols on frozen encoders: each returns ``{"value", "values", "settings"}``."""

from .features import extract_features, pixel_tensor, processor_for
from .knn import knn_accuracy, knn_classify
from .linear import linear_probe

__all__ = ["extract_features", "knn_accuracy", "knn_classify", "linear_probe", "pixel_tensor", "processor_for"]
