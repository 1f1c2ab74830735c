"""Pixel tokenisers for the GCRL decoder (METHODS.md 3j): images in [0, 1] <-> token sequences in raster order.

Two schemes, both iGPT-style (one token per pixel, read row by row):

- ``uniform``: every channel is rounded to ``levels`` equally spaced values ``{0, 1/(L-1), ..., 1}`` (so black and
  white are exact and the round-trip error is at most half a level, ``0.5/(L-1)``). The channel indices are combined
  into one token, channel 0 most significant: ``token = sum_c q_c * L**(C-1-c)``; the vocabulary is ``L**C``
  (16 for grayscale at the default 16 levels, 512 for RGB at the default 8 levels per channel).
- ``kmeans``: a palette of ``K`` colours fitted by k-means on training pixels with a fixed seed; a pixel's token is
  the index of its nearest palette colour (Euclidean in [0, 1]^C); the vocabulary is ``K``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import HybridCLError

QUANTIZERS = ("uniform", "kmeans")


def default_levels(num_channels: int) -> int:
    """METHODS.md 3j defaults: 16 levels for grayscale, 8 per channel for RGB (a 512-token vocabulary)."""
    return 16 if num_channels == 1 else 8


class PixelQuantizer(nn.Module):
    """Maps ``(B, C, H, W)`` images in [0, 1] to ``(B, H*W)`` tokens and back.

    The k-means palette is a buffer, so it is saved and restored with the module's ``state_dict``."""

    def __init__(self, num_channels: int, kind: str = "uniform", levels: int | None = None, palette_size: int | None = None):
        super().__init__()
        if num_channels not in (1, 3):
            raise HybridCLError(f"the pixel quantiser supports 1 or 3 channels, got {num_channels}.")
        if kind not in QUANTIZERS:
            raise HybridCLError(f"unknown quantizer {kind!r}; use one of {QUANTIZERS} (method_args.quantizer=...).")
        self.num_channels = int(num_channels)
        self.kind = kind
        self.levels = int(levels) if levels is not None else default_levels(num_channels)
        if self.levels < 2:
            raise HybridCLError(f"quantiser levels must be at least 2, got {self.levels} (method_args.levels=...).")
        self.palette_size = int(palette_size) if palette_size is not None else self.levels**self.num_channels
        if kind == "kmeans" and self.palette_size < 2:
            raise HybridCLError(f"palette_size must be at least 2, got {self.palette_size} (method_args.palette_size=...).")
        shape = (self.palette_size, self.num_channels) if kind == "kmeans" else (0, self.num_channels)
        self.register_buffer("palette", torch.zeros(shape))
        self.register_buffer("palette_fitted", torch.tensor(kind == "uniform"))

    # -- description ---------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.palette_size if self.kind == "kmeans" else self.levels**self.num_channels

    def settings(self) -> dict:
        """JSON-serialisable constructor arguments (the palette itself lives in the state dict)."""
        return {"num_channels": self.num_channels, "kind": self.kind, "levels": self.levels, "palette_size": self.palette_size}

    def describe_dimension(self) -> str:
        """What one "dimension" of bits/dim means for this tokeniser (see metrics.bits_per_dim)."""
        if self.kind == "uniform":
            return (
                f"one sub-pixel (channel value) of the image quantised to {self.levels} levels per channel; "
                f"bits/dim = NLL per token / ln 2 / {self.num_channels}"
            )
        return (
            f"one sub-pixel, averaged: each token is one of {self.palette_size} k-means palette colours for a whole "
            f"pixel, so bits/dim = NLL per token / ln 2 / {self.num_channels} is the palette-index likelihood spread "
            f"over the pixel's {self.num_channels} channel value(s), not a likelihood of the raw sub-pixel values"
        )

    # -- palette -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_palette(self, pixels: torch.Tensor, seed: int = 0, iterations: int = 25, max_pixels: int = 100_000) -> None:
        """Fit the k-means palette on training pixels ``(B, C, H, W)`` or ``(M, C)`` in [0, 1] (k-means++ init,
        Lloyd iterations, a fixed seed: every process fitting the same data gets the same palette)."""
        if self.kind != "kmeans":
            raise HybridCLError("fit_palette needs quantizer='kmeans'; the uniform quantiser has no palette.")
        flat = pixels.movedim(1, -1).reshape(-1, self.num_channels) if pixels.ndim == 4 else pixels
        if flat.ndim != 2 or flat.shape[1] != self.num_channels:
            raise HybridCLError(f"fit_palette expects (B, {self.num_channels}, H, W) or (M, {self.num_channels}) pixels, got {tuple(pixels.shape)}.")
        flat = flat.detach().float().cpu().clamp(0.0, 1.0)
        generator = torch.Generator().manual_seed(int(seed))
        if flat.shape[0] > max_pixels:
            flat = flat[torch.randperm(flat.shape[0], generator=generator)[:max_pixels]]
        if flat.shape[0] < self.palette_size:
            raise HybridCLError(f"k-means needs at least {self.palette_size} pixels, got {flat.shape[0]}; lower palette_size.")
        centres = _kmeans_plus_plus(flat, self.palette_size, generator)
        for _ in range(iterations):
            assign = torch.cdist(flat, centres).argmin(dim=1)
            sums = torch.zeros_like(centres).index_add_(0, assign, flat)
            counts = torch.bincount(assign, minlength=self.palette_size).unsqueeze(1)
            # an empty cluster keeps its centre (k-means++ seeds make this rare and harmless)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        order = torch.argsort(centres.sum(dim=1), stable=True)  # dark to light: a readable, deterministic order
        self.palette.copy_(centres[order].to(self.palette.device))
        self.palette_fitted.fill_(True)

    # -- encode / decode -----------------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` in [0, 1] (clamped) -> ``(B, H*W)`` long tokens in raster order."""
        if images.ndim != 4 or images.shape[1] != self.num_channels:
            raise HybridCLError(f"expected images of shape (B, {self.num_channels}, H, W) in [0, 1], got {tuple(images.shape)}.")
        x = images.detach().float().clamp(0.0, 1.0)
        b = x.shape[0]
        if self.kind == "kmeans":
            self._check_fitted()
            flat = x.movedim(1, -1).reshape(-1, self.num_channels)
            return torch.cdist(flat, self.palette.float()).argmin(dim=1).view(b, -1)
        q = torch.round(x * (self.levels - 1)).long()  # (B, C, H, W)
        weights = self.levels ** torch.arange(self.num_channels - 1, -1, -1, device=x.device)
        tokens = (q * weights.view(1, -1, 1, 1)).sum(dim=1)
        return tokens.view(b, -1)

    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, H*W)`` tokens -> ``(B, C, H, W)`` images in [0, 1]."""
        if tokens.ndim != 2 or tokens.shape[1] != height * width:
            raise HybridCLError(f"expected tokens of shape (B, {height * width}), got {tuple(tokens.shape)}.")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise HybridCLError(f"tokens must lie in [0, {self.vocab_size}); got [{int(tokens.min())}, {int(tokens.max())}].")
        b = tokens.shape[0]
        if self.kind == "kmeans":
            self._check_fitted()
            colours = self.palette[tokens]  # (B, T, C)
        else:
            digits = []
            rest = tokens
            for _ in range(self.num_channels):
                digits.append(rest % self.levels)
                rest = torch.div(rest, self.levels, rounding_mode="floor")
            colours = torch.stack(digits[::-1], dim=-1).float() / (self.levels - 1)
        return colours.view(b, height, width, self.num_channels).movedim(-1, 1).contiguous()

    def _check_fitted(self) -> None:
        if not bool(self.palette_fitted):
            raise HybridCLError(
                "the k-means palette has not been fitted; call fit_palette on training pixels first "
                "(GCRL does this in on_train_start) or use quantizer='uniform'."
            )


def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ squared distance."""
    first = torch.randint(points.shape[0], (1,), generator=generator)
    centres = [points[first]]
    dist = torch.cdist(points, centres[0]).squeeze(1) ** 2
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # fewer distinct colours than k: repeat a point (its cluster stays empty)
            idx = torch.randint(points.shape[0], (1,), generator=generator)
        else:
            idx = torch.multinomial(dist / total, 1, generator=generator)
        centres.append(points[idx])
        dist = torch.minimum(dist, torch.cdist(points, points[idx]).squeeze(1) ** 2)
    return torch.cat(centres, dim=0)
