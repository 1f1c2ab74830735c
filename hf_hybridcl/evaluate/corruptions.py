"""Accuracy under image corruptions (GCRL robustness protocol, METHODS.md 3j), applied in [0, 1] pixel space.

The processor's output is mapped back to [0, 1] (``x * std + mean``, exact because the processor normalises last),
corrupted, clipped to [0, 1] and normalised again. Severities (1 = mild, 3 = strong) at the model's input size:

- ``gaussian_noise``: additive N(0, sigma^2) with sigma 0.08 / 0.16 / 0.32;
- ``gaussian_blur``: Gaussian kernel with sigma 0.5 / 1.0 / 1.5 pixels (reflect padding);
- ``contrast``: ``(x - m) * c + m`` around each image's mean m, with c 0.5 / 0.3 / 0.15.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HybridCLError

SEVERITIES: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.08, 0.16, 0.32),
    "gaussian_blur": (0.5, 1.0, 1.5),
    "contrast": (0.5, 0.3, 0.15),
}


def to_unit(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised pixels -> [0, 1] pixels."""
    m, s = _stats(mean, pixels), _stats(std, pixels)
    return pixels * s + m


def from_unit(images: torch.Tensor, mean, std) -> torch.Tensor:
    """[0, 1] pixels -> normalised pixels (clipping to [0, 1] first)."""
    m, s = _stats(mean, images), _stats(std, images)
    return (images.clamp(0.0, 1.0) - m) / s


def _stats(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=like.dtype).view(1, -1, 1, 1)


def gaussian_noise(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (images + sigma * torch.randn(images.shape, generator=generator, dtype=images.dtype)).clamp(0.0, 1.0)


def gaussian_blur(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Separable Gaussian blur; the kernel covers +-3 sigma, limited by the image size (reflect padding)."""
    radius = max(1, min(int(math.ceil(3.0 * sigma)), min(images.shape[-2:]) - 1))
    coords = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(coords**2) / (2.0 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="reflect"), horizontal, groups=channels)
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), vertical, groups=channels)
    return out.clamp(0.0, 1.0)


def contrast(images: torch.Tensor, factor: float, seed: int = 0) -> torch.Tensor:
    means = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images - means) * factor + means).clamp(0.0, 1.0)


CORRUPTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
}


def corrupt(pixels: torch.Tensor, name: str, severity: int, mean, std, seed: int = 0) -> torch.Tensor:
    """Normalised pixels corrupted by ``name`` at ``severity`` (1..3), returned normalised."""
    if name not in CORRUPTIONS:
        raise HybridCLError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)} (eval.corruptions=[...]).")
    if not 1 <= severity <= len(SEVERITIES[name]):
        raise HybridCLError(f"corruption severity must be 1..{len(SEVERITIES[name])}, got {severity}.")
    images = to_unit(pixels, mean, std)
    return from_unit(CORRUPTIONS[name](images, SEVERITIES[name][severity - 1], seed=seed), mean, std)


def corruption_accuracy(
    logits_fn: Callable[[torch.Tensor], np.ndarray],
    pixels: torch.Tensor,
    labels: np.ndarray,
    mean,
    std,
    names: list[str],
    seed: int = 0,
) -> dict:
    """Accuracy of ``logits_fn`` on the clean and on every corrupted copy of a split."""
    labels = np.asarray(labels)
    accuracy = lambda x: float((logits_fn(x).argmax(1) == labels).mean())  # noqa: E731
    values = {"clean": accuracy(pixels)}
    per_severity: dict[int, list[float]] = {}
    for name in names:
        for severity in range(1, len(SEVERITIES.get(name, (0, 0, 0))) + 1):
            acc = accuracy(corrupt(pixels, name, severity, mean, std, seed=seed))
            values[f"{name}.s{severity}"] = acc
            per_severity.setdefault(severity, []).append(acc)
    for severity, accs in per_severity.items():
        values[f"mean.s{severity}"] = float(np.mean(accs))
    corrupted = [v for k, v in values.items() if not k.startswith(("clean", "mean."))]
    values["mean_corrupted"] = float(np.mean(corrupted)) if corrupted else float("nan")
    return {
        "value": values["mean_corrupted"],
        "values": values,
        "settings": {
            "corruptions": {name: list(SEVERITIES[name]) for name in names},
            "severity_parameters": "gaussian_noise: sigma; gaussian_blur: sigma in pixels; contrast: factor c",
            "pixel_space": "[0, 1] before normalisation, clipped",
            "seed": seed,
        },
    }
