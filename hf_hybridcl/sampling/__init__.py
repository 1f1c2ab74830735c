"""Sampling from energy-based models: SGLD / MSGLD on inputs and the persistent replay buffer (EBCLR, HDGE+JEM)."""

from .replay import STORAGE_DTYPES, BufferDraw, ReplayBuffer
from .sgld import diverged_rows, model_mode, msgld_noise_std, sgld_sample

__all__ = [
    "BufferDraw",
    "ReplayBuffer",
    "STORAGE_DTYPES",
    "diverged_rows",
    "model_mode",
    "msgld_noise_std",
    "sgld_sample",
]
