"""Stochastic gradient Langevin dynamics on the inputs of a network (METHODS.md sections 1 and 4c).

Sign convention: the caller gives an **energy** ``E(x)`` (one value per sample, lower = more likely) and the sampler
ascends the unnormalised log-density ``log q(x) = -E(x)``:

    x <- x - a * clamp(dE/dx, -delta, delta) + sigma * eps,    eps ~ N(0, I)

This is JEM's step (Grathwohl et al. 2020, eq. 11: the 1/2 dropped and ``a`` decoupled from ``sigma``) with the
elementwise gradient clamp and the per-chain noise of EBCLR's multi-stage SGLD (Kim & Ye 2022, sec. 4.2, "MSGLD"):
``sigma(kappa) = sigma_min + (sigma_max - sigma_min) * max(0, 1 - kappa / K_th)`` where ``kappa`` counts how many
SGLD runs a replay-buffer slot has already been through (:func:`msgld_noise_std`).

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so no parameter ``.grad`` is
created or changed (the official EBCLR code calls ``backward()`` and leaves junk gradients in the parameters),
and the model's parameters are frozen while sampling (:func:`~hf_hybridcl.input_gradients.frozen_parameters`).
The energy of a batch is summed before differentiation, which gives per-sample gradients only when samples do not
interact inside the network: no BatchNorm in training mode (EBCLR refuses it by default).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from ..errors import HybridCLError
from ..input_gradients import frozen_parameters

EnergyFn = Callable[[torch.Tensor], torch.Tensor]
Mode = Literal["eval", "train", "keep"]


def msgld_noise_std(counters: torch.Tensor, sigma_min: float, sigma_max: float, decay_count: float) -> torch.Tensor:
    """Per-chain noise std of MSGLD (EBCLR sec. 4.2): ``sigma_max`` at count 0, linear down to ``sigma_min`` at
    ``decay_count`` (``K_th``) and constant after. ``decay_count <= 0`` gives ``sigma_min`` everywhere."""
    counts = counters.float()
    if decay_count <= 0:
        return torch.full_like(counts, float(sigma_min))
    fresh = (1.0 - counts / float(decay_count)).clamp_min(0.0)
    return sigma_min + (sigma_max - sigma_min) * fresh


@contextmanager
def model_mode(model: nn.Module | None, mode: Mode) -> Iterator[None]:
    """Put ``model`` in eval or train mode inside the block and restore every sub-module's own flag afterwards."""
    if model is None or mode == "keep":
        yield
        return
    if mode not in ("eval", "train"):
        raise HybridCLError(f"SGLD model mode must be 'eval', 'train' or 'keep', got {mode!r}.")
    saved = [(m, m.training) for m in model.modules()]
    model.train(mode == "train")
    try:
        yield
    finally:
        for module, flag in saved:
            module.training = flag


def sgld_sample(
    energy_fn: EnergyFn,
    x0: torch.Tensor,
    *,
    steps: int,
    step_size: float,
    noise_std: float | torch.Tensor,
    grad_clamp: float | None = None,
    pixel_clamp: tuple[float, float] | None = None,
    model: nn.Module | None = None,
    mode: Mode = "eval",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run ``steps`` SGLD steps from ``x0`` (``(B, ...)``) and return the detached samples.

    Args:
        energy_fn: maps a batch ``(B, ...)`` to energies ``(B,)``; the sampler ascends ``-energy``.
        steps, step_size: number of updates and the gradient step ``a``.
        noise_std: a float, or a tensor ``(B,)`` with one std per chain (MSGLD, :func:`msgld_noise_std`).
        grad_clamp: clamp each gradient element to ``[-grad_clamp, grad_clamp]`` (EBCLR: 1.0); ``None`` = off.
        pixel_clamp: clamp the samples to ``(lo, hi)`` after every step; ``None`` = off (EBCLR and JEM).
        model: the network inside ``energy_fn``; it is put in ``mode`` during sampling and restored afterwards.
        generator: source of the noise (default: the torch global RNG).
    """
    if steps < 0 or step_size < 0:
        raise HybridCLError(f"SGLD needs steps >= 0 and step_size >= 0, got steps={steps}, step_size={step_size}.")
    if grad_clamp is not None and grad_clamp <= 0:
        raise HybridCLError(f"SGLD grad_clamp must be positive or None, got {grad_clamp}.")
    batch = x0.shape[0]
    if isinstance(noise_std, torch.Tensor):
        if noise_std.shape != (batch,):
            raise HybridCLError(f"SGLD noise_std must be a float or a ({batch},) tensor, got shape {tuple(noise_std.shape)}.")
        sigma = noise_std.to(device=x0.device, dtype=x0.dtype).view(batch, *([1] * (x0.ndim - 1)))
    else:
        sigma = torch.tensor(float(noise_std), device=x0.device, dtype=x0.dtype)
    x = x0.detach().clone()
    with model_mode(model, mode), frozen_parameters(model), torch.enable_grad():
        for _ in range(steps):
            x.requires_grad_(True)
            energy = energy_fn(x)
            if energy.shape != (batch,):
                raise HybridCLError(f"energy_fn must return one energy per sample, shape ({batch},), got {tuple(energy.shape)}.")
            (grad,) = torch.autograd.grad(energy.sum(), [x])
            if grad_clamp is not None:
                grad = grad.clamp(-grad_clamp, grad_clamp)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x.detach() - step_size * grad + sigma * noise
            if pixel_clamp is not None:
                x = x.clamp(pixel_clamp[0], pixel_clamp[1])
    return x.detach()


def diverged_rows(energy: torch.Tensor, samples: torch.Tensor | None = None, threshold: float | None = None) -> torch.Tensor:
    """Boolean ``(B,)`` mask of chains that diverged: non-finite energy, ``|energy| > threshold`` or non-finite
    pixels. Used to re-initialise the replay-buffer slots of exploding chains."""
    energy = energy.detach()
    bad = ~torch.isfinite(energy)
    if threshold is not None and threshold > 0:
        bad |= energy.abs() > threshold
    if samples is not None:
        bad |= ~torch.isfinite(samples.detach().flatten(1)).all(dim=1)
    return bad


__all__ = ["EnergyFn", "diverged_rows", "model_mode", "msgld_noise_std", "sgld_sample"]
