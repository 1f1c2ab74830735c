"""Loading image data sets: a Hugging Face data set by name, a local image folder, or the embedded digits.

Every loader returns :class:`ImageSplits`: a train and a test :class:`ImageList` of PIL images with integer labels
(``-1`` where the data has none) and the class names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import HybridCLError

EMBEDDED_NAMES = ("digits", "embedded", "default")
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
IMAGE_COLUMN_CANDIDATES = ("image", "img", "pixel_values", "picture", "photo")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "y")


@dataclass
class ImageList:
    """A random-access list of images (PIL, or a loader returning PIL) with integer labels."""

    images: Sequence[Any]
    labels: np.ndarray
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        item = self.images[index]
        if isinstance(item, (str, os.PathLike)):
            return _open_image(item)
        if isinstance(item, dict) and "bytes" in item:  # undecoded datasets Image feature
            import io

            return Image.open(io.BytesIO(item["bytes"]))
        return item

    @property
    def has_labels(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels >= 0).all())


@dataclass
class ImageSplits:
    train: ImageList
    test: ImageList
    name: str
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_image_splits(
    name_or_path: str = "digits",
    image_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageSplits:
    """Load a data set by name: ``digits`` (embedded, offline), a local folder, or a Hugging Face hub name."""
    if name_or_path in EMBEDDED_NAMES:
        return load_digits_splits(test_fraction=test_fraction, seed=seed)
    if os.path.isdir(name_or_path):
        return load_image_folder(name_or_path, test_fraction=test_fraction, seed=seed)
    if os.path.exists(name_or_path):
        raise HybridCLError(f"dataset path {name_or_path!r} is a file; give a folder of images (one sub-folder per class) instead.")
    return load_hub_dataset(name_or_path, image_column, label_column, test_fraction=test_fraction, seed=seed)


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """scikit-learn's handwritten digits (1,797 real 8x8 grayscale images, 10 classes), stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    names = [str(i) for i in range(10)]
    make = lambda idx: ImageList([Image.fromarray(pixels[i], mode="L") for i in idx], labels[idx], names)  # noqa: E731
    return ImageSplits(make(idx_train), make(idx_test), "digits", names)


def load_image_folder(root: str, test_fraction: float = 0.2, seed: int = 0) -> ImageSplits:
    """A local folder: ``root/<class>/<image>`` (split with ``seed``), or ``root/train/<class>/...`` and
    ``root/test/<class>/...``. Images are checked when listed, so a broken file fails now, not mid-training."""
    root_path = Path(root)
    if (root_path / "train").is_dir() and (root_path / "test").is_dir():
        train_files, train_labels, names = _scan_class_folders(root_path / "train")
        test_files, test_labels, test_names = _scan_class_folders(root_path / "test", names)
        if test_names != names:
            raise HybridCLError(f"{root}/test has classes {test_names} but {root}/train has {names}; use the same sub-folders.")
        return ImageSplits(
            ImageList(train_files, train_labels, names), ImageList(test_files, test_labels, names), str(root), names
        )
    files, labels, names = _scan_class_folders(root_path)
    idx_train, idx_test = _split_indices(labels, test_fraction, seed)
    pick = lambda idx: ImageList([files[i] for i in idx], labels[idx], names)  # noqa: E731
    return ImageSplits(pick(idx_train), pick(idx_test), str(root), names)


def _scan_class_folders(root: Path, names: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if class_dirs:
        found = [p.name for p in class_dirs]
        names = names if names is not None and set(found) == set(names) else found
        entries = [(str(f), names.index(d.name)) for d in class_dirs for f in sorted(d.rglob("*")) if _is_image(f)]
    else:  # a flat folder of unlabelled images
        names = names or []
        entries = [(str(f), -1) for f in sorted(root.iterdir()) if _is_image(f)]
    if not entries:
        raise HybridCLError(
            f"no images found in {root}; expected {root}/<class>/<image>.png (extensions: {sorted(IMAGE_EXTENSIONS)})."
        )
    for path, _ in entries:
        _verify_image(path)
    files, labels = zip(*entries)
    return list(files), np.asarray(labels, dtype=np.int64), names


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _verify_image(path: str) -> None:
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise HybridCLError(f"unreadable image file {path}: {err}. Remove or replace it, then run again.") from None


def _open_image(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (UnidentifiedImageError, OSError) as err:
        raise HybridCLError(f"unreadable image file {path}: {err}. Remove or replace it, then run again.") from None


def _split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.array([])
    stratify = labels if (labels >= 0).all() and len(counts) > 1 and counts.min() >= 2 else None
    return train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(f, "").strip().lower() in {"1", "true", "yes", "on"} for f in flags)


def load_hub_dataset(
    name: str,
    image_column: str | None = None,
    label_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> ImageSplits:
    """A Hugging Face data set by name (e.g. ``cifar10``), with image/label columns detected or given."""
    import datasets

    try:
        dataset = datasets.load_dataset(name)
    except Exception as err:  # ConnectionError, DatasetNotFoundError, FileNotFoundError, ...
        where = "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set)" if _hub_offline() else "could not be loaded"
        raise HybridCLError(
            f"data set {name!r} {where}: {type(err).__name__}. Use the embedded data (--dataset digits), a local "
            f"image folder (--dataset path/to/folder with one sub-folder per class), or go online and retry."
        ) from None
    if "train" not in dataset:
        raise HybridCLError(f"data set {name!r} has no 'train' split (splits: {list(dataset)}); give a data set with one.")
    train = dataset["train"]
    image_column = image_column or _detect_column(train, IMAGE_COLUMN_CANDIDATES, "image", name, is_image=True)
    if image_column not in train.column_names:
        raise HybridCLError(f"image column {image_column!r} not in {name!r} (columns: {train.column_names}); pass --image-column.")
    if label_column is None:
        label_column = next((c for c in LABEL_COLUMN_CANDIDATES if c in train.column_names), None)
    elif label_column not in train.column_names:
        raise HybridCLError(f"label column {label_column!r} not in {name!r} (columns: {train.column_names}); pass --label-column.")
    names = _class_names(train, label_column)
    test_split = next((s for s in ("test", "validation", "valid") if s in dataset), None)

    def to_list(split) -> ImageList:
        labels = np.asarray(split[label_column], dtype=np.int64) if label_column else np.full(len(split), -1)
        return ImageList(_ColumnView(split, image_column), labels, names)

    if test_split is not None:
        return ImageSplits(to_list(train), to_list(dataset[test_split]), name, names)
    full = to_list(train)
    idx_train, idx_test = _split_indices(full.labels, test_fraction, seed)
    return ImageSplits(
        to_list(train.select(idx_train.tolist())), to_list(train.select(idx_test.tolist())), name, names
    )


class _ColumnView:
    """Lazy, indexable view of one image column of a ``datasets.Dataset``."""

    def __init__(self, split, column: str):
        self.split, self.column = split, column

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        return self.split[int(index)][self.column]


def _detect_column(split, candidates, kind: str, name: str, is_image: bool = False) -> str:
    import datasets

    for column, feature in split.features.items():
        if is_image and isinstance(feature, datasets.Image):
            return column
    for column in candidates:
        if column in split.column_names:
            return column
    raise HybridCLError(f"no {kind} column found in {name!r} (columns: {split.column_names}); pass --{kind}-column.")


def _class_names(split, label_column: str | None) -> list[str]:
    import datasets

    if label_column is None:
        return []
    feature = split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    values = np.asarray(split[label_column])
    return [str(i) for i in range(int(values.max()) + 1)] if len(values) else []
