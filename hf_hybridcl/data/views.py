"""Per-method augmentation recipes ("views") as composable per-sample transforms.

A :class:`ViewRecipe` turns one PIL image into a list of tensors: two SimCLR-style strong views for contrastive
methods (Chen et al. 2020, sec. 3 / appendix A), one standard view for supervised training, or a strong and a weak
view for the robust method (METHODS.md 6e). Strengths scale down for small and grayscale images: colour jitter keeps
only brightness/contrast on grayscale, random grayscale is skipped, and Gaussian blur is applied only from 32 px up.
Outputs are normalised with the model's mean/std unless ``normalize`` is off (attacks work in [0, 1] pixels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

VIEW_KINDS = ("two_strong", "one_standard", "one_strong", "strong_weak", "plain")


@dataclass
class ViewRecipe:
    kind: str = "two_strong"
    image_size: int = 32
    num_channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool = True
    jitter_strength: float = 0.5
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    noise_std: float = 0.0
    normalize: bool = True

    def __post_init__(self):
        if self.kind not in VIEW_KINDS:
            raise ValueError(f"unknown view kind {self.kind!r}; choose one of {VIEW_KINDS}.")
        self.crop_scale = tuple(float(v) for v in self.crop_scale)

    def to_dict(self) -> dict:
        return asdict(self)

    def build(self) -> Callable[[Image.Image], list[torch.Tensor]]:
        strong, standard, weak = self._strong(), self._standard(), self._weak()
        plain = self._finish([v2.Resize((self.image_size, self.image_size), antialias=True)])
        recipes = {
            "two_strong": [strong, strong],
            "one_standard": [standard],
            "one_strong": [strong],
            "strong_weak": [strong, weak],
            "plain": [plain],
        }
        return _MultiView(recipes[self.kind], self.num_channels)

    def _strong(self) -> v2.Transform:
        ops: list[v2.Transform] = [v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True)]
        if self.flip:
            ops.append(v2.RandomHorizontalFlip())
        s = self.jitter_strength
        if s > 0 and self.jitter_p > 0:
            if self.num_channels == 3:
                jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
            else:
                jitter = v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s)
            ops.append(v2.RandomApply([jitter], p=self.jitter_p))
        if self.num_channels == 3 and self.grayscale_p > 0:
            ops.append(v2.RandomGrayscale(p=self.grayscale_p))
        if self.image_size >= 32 and self.blur_p > 0:
            kernel = max(3, int(0.1 * self.image_size) // 2 * 2 + 1)
            ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=self.blur_p))
        return self._finish(ops, noise=True)

    def _standard(self) -> v2.Transform:
        """Pad-and-crop + flip, the usual supervised CIFAR augmentation, scaled to the image size."""
        pad = max(1, self.image_size // 8)
        ops: list[v2.Transform] = [
            v2.Resize((self.image_size, self.image_size), antialias=True),
            v2.RandomCrop(self.image_size, padding=pad, padding_mode="reflect"),
        ]
        if self.flip:
            ops.append(v2.RandomHorizontalFlip())
        return self._finish(ops, noise=True)

    def _weak(self) -> v2.Transform:
        return self._standard()

    def _finish(self, ops: list[v2.Transform], noise: bool = False) -> v2.Transform:
        tail: list[Callable] = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if noise and self.noise_std > 0:
            tail.append(v2.GaussianNoise(mean=0.0, sigma=self.noise_std, clip=True))
        if self.normalize:
            tail.append(v2.Normalize(self.mean, self.std))
        # PIL ops first (crop/jitter work on the 8-bit image), then tensor conversion.
        return v2.Compose(ops + tail)


class _MultiView:
    """Convert the image to the model's channel mode, then apply each view transform."""

    def __init__(self, transforms: list[v2.Transform], num_channels: int):
        self.transforms = transforms
        self.mode = "L" if num_channels == 1 else "RGB"

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        image = image.convert(self.mode)
        return [t(image) for t in self.transforms]
