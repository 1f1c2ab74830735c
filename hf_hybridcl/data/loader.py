"""Datasets that yield method views with reproducible per-sample randomness, and the epoch-seeded sampler.

Each sample's augmentation is seeded from ``(seed, epoch, index)``, so the views of a sample do not depend on the
number of data loader workers, on the process count, or on whether the run was resumed: 8 straight steps and
4 steps + resume + 4 steps see exactly the same pixels. The sampler's keys carry the epoch
(``key = epoch * len(dataset) + index``), so the dataset holds no epoch state and loader workers can stay alive
across epochs (``persistent_workers``).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .datasets import ImageList


class ViewDataset(Dataset):
    """Yields ``{"views": [tensor, ...], "labels": int, "index": int}`` for the key ``epoch * len(self) + index``
    (a plain index < ``len(self)`` is epoch 0)."""

    def __init__(self, images: ImageList, transform: Callable, seed: int = 0):
        self.images, self.transform, self.seed = images, transform, int(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int) -> dict:
        epoch, index = divmod(int(key), len(self.images))
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            views = self.transform(self.images.image(index))
        return {"views": views, "labels": int(self.images.labels[index]), "index": int(index)}


class EpochShuffleSampler(Sampler[int]):
    """A permutation seeded by ``(seed, epoch)``: identical on every process and after a resume. It yields the
    :class:`ViewDataset` keys ``epoch * num_samples + index``."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples, self.seed, self.epoch = num_samples, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        offset = self.epoch * self.num_samples
        return iter((torch.randperm(self.num_samples, generator=generator) + offset).tolist())
