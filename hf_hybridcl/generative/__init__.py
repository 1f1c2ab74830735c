"""Generative parts of the hybrid methods: pixel tokenisers, the GCRL causal decoder, bits/dim and sampling."""

from .decoder import DecoderConfig, PixelDecoder, load_generator, save_generator
from .metrics import bits_per_dim, sample_tokens, save_image_grid, token_nll
from .quantize import QUANTIZERS, PixelQuantizer, default_levels

__all__ = [
    "QUANTIZERS",
    "DecoderConfig",
    "PixelDecoder",
    "PixelQuantizer",
    "bits_per_dim",
    "default_levels",
    "load_generator",
    "sample_tokens",
    "save_generator",
    "save_image_grid",
    "token_nll",
]
