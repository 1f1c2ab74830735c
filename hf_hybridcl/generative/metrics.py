"""Generative metrics of the GCRL decoder (METHODS.md 3j): bits per dimension and autoregressive sampling.

What a "dimension" is: one sub-pixel (one channel value of one pixel) of the image at the resolution the decoder
models. A token codes a whole pixel, i.e. ``C`` sub-pixels, so

    bits/dim = (NLL in nats per token) / ln 2 / C.

With uniform quantisation to ``L`` levels this is the likelihood of the *quantised* image (``L`` values per
sub-pixel, not 256), so it is bounded by ``log2(L)`` (a uniform predictor) and is not comparable to the 8-bit
bits/dim of the literature. With a k-means palette a token is a palette index for the whole pixel; dividing by ``C``
spreads that per-pixel likelihood evenly over the channels, so it is a per-sub-pixel *normalisation* of a
palette-index likelihood (bounded by ``log2(K) / C``), not a likelihood of the sub-pixel values themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import HybridCLError
from .decoder import PixelDecoder


def token_nll(logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy in nats of ``tokens (B, T)`` under ``logits (B, T, V)`` (``mean`` per token or ``sum``)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1).long(), reduction=reduction)


def bits_per_dim(nll_nats_per_token: float | torch.Tensor, dims_per_token: int) -> float:
    """Convert a mean NLL in nats per token to bits per sub-pixel (see the module docstring)."""
    if dims_per_token < 1:
        raise HybridCLError(f"dims_per_token must be at least 1 (the image's channel count), got {dims_per_token}.")
    return float(nll_nats_per_token) / math.log(2.0) / dims_per_token


@torch.no_grad()
def sample_tokens(
    decoder: PixelDecoder,
    num_samples: int,
    encoder_tokens: torch.Tensor | None = None,
    temperature: float = 1.0,
    seed: int = 0,
) -> torch.Tensor:
    """Draw ``(num_samples, seq_len)`` token sequences autoregressively, one cached step per token.

    ``encoder_tokens`` ``(num_samples, M, memory_dim)`` conditions the samples (``None``: unconditional);
    ``temperature`` divides the logits (``< 1`` sharper, ``> 1`` flatter)."""
    if temperature <= 0:
        raise HybridCLError(f"sampling temperature must be positive, got {temperature}.")
    if encoder_tokens is not None and encoder_tokens.shape[0] != num_samples:
        raise HybridCLError(f"encoder_tokens has {encoder_tokens.shape[0]} rows for {num_samples} samples; give one row per sample.")
    was_training = decoder.training
    decoder.eval()
    device = decoder.head.weight.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    memory = decoder.build_memory(encoder_tokens, num_samples)
    caches: list[dict] = [{} for _ in decoder.blocks]
    tokens = torch.zeros(num_samples, decoder.config.seq_len, dtype=torch.long, device=device)
    for i in range(decoder.config.seq_len):
        logits = decoder.step(tokens[:, i - 1] if i else None, i, memory, caches).float() / temperature
        tokens[:, i] = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)
    decoder.train(was_training)
    return tokens


def save_image_grid(images: torch.Tensor, path: str, columns: int, scale: int = 4) -> str:
    """Tile ``(N, C, H, W)`` images in [0, 1] into a PNG with ``columns`` per row, 1-px white gutters, each image
    enlarged ``scale`` times with nearest-neighbour so single pixels stay visible. Returns ``path``."""
    from PIL import Image

    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] < 1:
        raise HybridCLError(f"save_image_grid expects (N, 1 or 3, H, W) images, got {tuple(images.shape)}.")
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    gutter = 1
    canvas = torch.ones(c, rows * (h + gutter) + gutter, columns * (w + gutter) + gutter)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = gutter + r * (h + gutter), gutter + col * (w + gutter)
        canvas[:, top : top + h, left : left + w] = images[i].detach().float().cpu().clamp(0, 1)
    array = (canvas * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if c == 1 else array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
    return path
