"""Data: loading (hub name, local folder, embedded digits), per-method views, reproducible loaders."""

from .datasets import EMBEDDED_NAMES, ImageList, ImageSplits, load_image_splits
from .loader import EpochShuffleSampler, ViewDataset
from .views import VIEW_KINDS, ViewRecipe

__all__ = [
    "EMBEDDED_NAMES",
    "EpochShuffleSampler",
    "ImageList",
    "ImageSplits",
    "VIEW_KINDS",
    "ViewDataset",
    "ViewRecipe",
    "load_image_splits",
]
