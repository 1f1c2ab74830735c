"""JEM's generative term ``L_px`` for classifiers read as energy models (Grathwohl et al. 2020, eq. 5 and 11),
used by "HDGE + JEM" (Liu & Abbeel 2020; METHODS.md sections 2b and 2c).

A classifier's logits ``f(x)`` define ``log q(x) = LSE_y f(x)[y] - log Z``, i.e. the energy ``E(x) = -LSE_y f(x)[y]``.
The gradient of ``E_data[log q(x)]`` is estimated with samples ``x~`` from the model:

    L_px = -( mean_data LSE_y f(x)[y] - mean_sgld LSE_y f(x~)[y] )

The samples come from SGLD (:func:`~hf_hybridcl.sampling.sgld_sample`) started from a persistent replay buffer
(JEM settings: 10,000 slots initialised and re-initialised with uniform noise in [-1, 1], reinit 0.05, 20 steps,
step 1.0, noise 0.01, no gradient clamp, the network in eval mode while sampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..sampling import BufferDraw, ReplayBuffer, diverged_rows, sgld_sample

JEM_SGLD_DEFAULTS = {
    "steps": 20,
    "step_size": 1.0,
    "noise_std": 0.01,
    "buffer_size": 10000,
    "reinit_prob": 0.05,
}


def jem_px_loss(logits_data: torch.Tensor, logits_sgld: torch.Tensor) -> torch.Tensor:
    """``L_px = -(mean LSE_y f(x)[y] - mean LSE_y f(x~)[y])`` (JEM eq. 5; HDGE 2b). Logits are ``(B, C)``."""
    lse_data = torch.logsumexp(logits_data.float(), dim=1)
    lse_sgld = torch.logsumexp(logits_sgld.float(), dim=1)
    return -(lse_data.mean() - lse_sgld.mean())


def make_jem_buffer(
    sample_shape: Sequence[int],
    capacity: int = JEM_SGLD_DEFAULTS["buffer_size"],
    reinit_prob: float = JEM_SGLD_DEFAULTS["reinit_prob"],
    storage_dtype: str = "fp32",
) -> ReplayBuffer:
    """A JEM replay buffer: uniform-noise chains, counters unused (constant noise)."""
    return ReplayBuffer(capacity, sample_shape, storage_dtype=storage_dtype, reinit_prob=reinit_prob)


@dataclass
class JEMSamples:
    """SGLD samples of this process (``samples``), the global buffer draw and this process's rows of it."""

    samples: torch.Tensor
    draw: BufferDraw
    rows: slice


def sample_jem_sgld(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    buffer: ReplayBuffer,
    n: int,
    model: nn.Module | None = None,
    steps: int = JEM_SGLD_DEFAULTS["steps"],
    step_size: float = JEM_SGLD_DEFAULTS["step_size"],
    noise_std: float = JEM_SGLD_DEFAULTS["noise_std"],
    mode: str = "eval",
) -> JEMSamples:
    """Draw ``n`` chains per process from ``buffer`` (uniform re-initialisation), run SGLD on
    ``E(x) = -LSE_y logits_fn(x)[y]`` with ``model`` in ``mode``, write the samples back and return them.

    Call :func:`finish_jem_step` with the logits of the returned samples to restart diverged chains."""
    draw, rows = buffer.draw_shared(n)
    starts = draw.starts[rows]

    def energy(x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(logits_fn(x).float(), dim=1)

    samples = sgld_sample(energy, starts, steps=steps, step_size=step_size, noise_std=noise_std, model=model, mode=mode)
    return JEMSamples(samples=samples, draw=draw, rows=rows)


def finish_jem_step(
    buffer: ReplayBuffer, result: JEMSamples, logits_sgld: torch.Tensor, energy_threshold: float | None = 1e8
) -> int:
    """Write the samples back into their slots and restart (with uniform noise) the slots whose energy is
    non-finite or above ``energy_threshold`` in magnitude (HDGE's code aborts at |L| > 1e8). Returns how many."""
    energy = -torch.logsumexp(logits_sgld.detach().float(), dim=1)
    bad = diverged_rows(energy, result.samples, energy_threshold)
    return buffer.write_shared(result.draw, result.samples, bad)


__all__ = ["JEMSamples", "JEM_SGLD_DEFAULTS", "finish_jem_step", "jem_px_loss", "make_jem_buffer", "sample_jem_sgld"]
