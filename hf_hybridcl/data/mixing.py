"""Mixup, CutMix and their coin-flip mix on a batch of one view, with mixed label distributions.

GenSCL (Kim et al. 2022, METHODS.md 5b) mixes each view independently: its own permutation ``perm`` and its own
``lam ~ Beta(alpha, alpha)``; the label distribution of row ``i`` is ``lam * onehot(y_i) + (1 - lam) * onehot(y_perm[i])``.

- Mixup (Zhang et al. 2018): ``x_i <- lam * x_i + (1 - lam) * x_perm[i]``.
- CutMix (Yun et al. 2019): paste one random box of ``x_perm`` into every image; the box side is
  ``sqrt(1 - lam)`` of the image side, centred uniformly and clipped to the image, and ``lam`` is then recomputed
  as the kept (unpasted) area fraction.
- ``mixup_cutmix``: a fair coin per call picks Mixup or CutMix.

All functions are pure: randomness comes only from the ``torch.Generator`` argument (CPU), so a seeded generator
reproduces the result. Both mixes are linear in the pixels, so they work on normalised views as well.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HybridCLError

MIX_MODES = ("none", "mixup", "cutmix", "mixup_cutmix")


class Mixed(NamedTuple):
    """A mixed batch: images ``(B, C, H, W)``, label distributions ``(B, num_classes)``, the kept fraction ``lam``
    of the original images and the permutation ``perm`` that gave the partner images."""

    images: torch.Tensor
    targets: torch.Tensor
    lam: float
    perm: torch.Tensor


def sample_beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of ``Beta(alpha, alpha)``, seeded from ``generator`` (torch has no generator-aware Beta sampler)."""
    if alpha <= 0:
        raise HybridCLError(f"mix_alpha must be positive, got {alpha}; the papers use 1.0.")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixed_targets(labels: torch.Tensor, perm: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """``lam * onehot(y) + (1 - lam) * onehot(y[perm])``, rows sum to 1."""
    onehot = F.one_hot(labels.long(), num_classes).float()
    return lam * onehot + (1.0 - lam) * onehot[perm]


def _permutation(batch_size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(batch_size, generator=generator).to(device)


def mixup(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    lam: float | None = None,
) -> Mixed:
    """Mixup of a batch with a random permutation of itself; ``lam`` overrides the Beta draw."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    lam = sample_beta(alpha, generator) if lam is None else float(lam)
    perm = _permutation(images.shape[0], generator, images.device)
    mixed = images * lam + images[perm] * (1.0 - lam)
    return Mixed(mixed, mixed_targets(labels, perm, lam, num_classes), lam, perm)


def cutmix_box(height: int, width: int, lam: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A box ``(top, bottom, left, right)`` (end-exclusive) with sides ``sqrt(1 - lam)`` of the image's, centred
    uniformly at random and clipped to the image."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (1,), generator=generator).item())
    cx = int(torch.randint(0, width, (1,), generator=generator).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


def cutmix(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    lam: float | None = None,
) -> Mixed:
    """CutMix: one random box of the permuted batch pasted into every image; the returned ``lam`` is the kept area
    fraction after clipping, and the label distributions use it. ``lam`` overrides the Beta draw of the box size."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    lam = sample_beta(alpha, generator) if lam is None else float(lam)
    perm = _permutation(images.shape[0], generator, images.device)
    height, width = images.shape[-2:]
    top, bottom, left, right = cutmix_box(height, width, lam, generator)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    box = ((rows >= top) & (rows < bottom))[:, None] & ((cols >= left) & (cols < right))[None, :]
    mixed = torch.where(box, images[perm], images)
    kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return Mixed(mixed, mixed_targets(labels, perm, kept, num_classes), kept, perm)


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    mode: str = "mixup_cutmix",
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> Mixed:
    """Apply ``mode`` (one of :data:`MIX_MODES`) to one view's batch; ``none`` returns the images and one-hot labels."""
    if mode not in MIX_MODES:
        raise HybridCLError(f"unknown mix {mode!r}; use one of {', '.join(MIX_MODES)} (method_args.mix=...).")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if mode == "none":
        identity = torch.arange(images.shape[0], device=images.device)
        return Mixed(images, mixed_targets(labels, identity, 1.0, num_classes), 1.0, identity)
    if mode == "mixup_cutmix":
        mode = "mixup" if torch.rand((), generator=generator).item() < 0.5 else "cutmix"
    fn = mixup if mode == "mixup" else cutmix
    return fn(images, labels, num_classes, alpha=alpha, generator=generator)


__all__ = ["MIX_MODES", "Mixed", "cutmix", "cutmix_box", "mix_batch", "mixed_targets", "mixup", "sample_beta"]
