"""Projected gradient descent (PGD) attacks in pixel space (Madry et al. 2018; METHODS.md sections 1 and 6c).

Convention used by every function here: **images are in [0, 1] pixels and the model callable normalises
internally** (wrap a model that expects normalised inputs in :class:`Normalize` / :class:`PixelModel`), so the
normalisation is applied exactly once and ``eps`` is measured in pixel units (8/255 means 8 grey levels).

- :func:`pgd` is the generic loop: uniform random start in the ε-ball, ``steps`` ascent steps on a scalar loss,
  projection onto the ε-ball (L∞ or L2) and clipping to [0, 1].
- :func:`contrastive_attack` is the instance-wise training attack (RoCL, Kim et al. 2020; Tran et al. 6b): it
  maximises the NT-Xent of the attacked view against its positive, optionally minus ``w_d · BCE(D(z_adv), 0)``.
- :func:`cross_entropy_attack` is the evaluation attack on a classifier.

Gradients are taken with ``torch.autograd.grad`` with respect to the input only, so parameter ``.grad`` fields
are never touched (the parameters are frozen during the attack); the modules are put in eval mode during the
attack and every module's own train/eval flag is restored afterwards; the returned tensors are detached.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError
from ..input_gradients import frozen_parameters
from ..losses import nt_xent_loss

Norm = Literal["linf", "l2"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel: maps [0, 1] pixels to the model's input space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise HybridCLError(f"Normalize needs one positive std per mean value, got mean={list(mean)} std={list(std)}.")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Back from the model's input space to [0, 1] pixels."""
        return x * self.std.to(x.dtype) + self.mean.to(x.dtype)


class PixelModel(nn.Module):
    """``module(normalize(x))`` with an optional output selector: a model callable on [0, 1] pixels."""

    def __init__(self, module: nn.Module, normalize: Normalize, output: Callable[[object], torch.Tensor] | None = None):
        super().__init__()
        self.module, self.normalize = module, normalize
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(self.normalize(x))
        return self.output(out) if self.output is not None else out


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their sub-modules) in eval mode; restore every sub-module's own flag on exit."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    try:
        for module in modules:
            module.eval()
        yield
    finally:
        for m, flag in saved:
            m.training = flag


def _check(x: torch.Tensor, eps: float, step_size: float, steps: int, norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise HybridCLError(f"unknown attack norm {norm!r}; use 'linf' or 'l2'.")
    if eps < 0 or step_size < 0 or steps < 0:
        raise HybridCLError(f"attack eps, step size and steps must be >= 0, got eps={eps}, step={step_size}, steps={steps}.")
    if x.ndim != 4:
        raise HybridCLError(f"attacks take images of shape (batch, channels, height, width), got {tuple(x.shape)}.")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise HybridCLError(
            f"attacks take [0, 1] pixels but the input spans [{lo:.3f}, {hi:.3f}]; pass un-normalised images and a "
            f"model that normalises internally (hf_hybridcl.robust.PixelModel)."
        )


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))


def _random_start(x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform sample of the ε-ball: per-pixel uniform for L∞; uniform direction and radius ``eps·u^(1/d)`` for L2."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
        return (2 * u - 1) * eps
    direction = torch.randn(x.shape, generator=generator, device="cpu").to(x.device, x.dtype)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    dim = x[0].numel()
    radius = torch.rand((x.shape[0],), generator=generator, device="cpu").to(x.device, x.dtype) ** (1.0 / dim)
    return direction * (eps * radius).view(-1, *([1] * (x.ndim - 1)))


def _project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _flat_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
    return delta * factor


def pgd(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    eps: float,
    step_size: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Maximise ``loss_fn(x_adv)`` (a scalar, summed or averaged over the batch) over the ε-ball around ``x``.

    L∞ step: ``x ← Π(x + a·sign(g))``; L2 step: ``x ← Π(x + a·g/||g||)``; after every step ``x_adv`` is clipped to
    [0, 1] (clipping moves each pixel towards ``x``, so it stays inside the ball). Returns a detached tensor.
    """
    _check(x, eps, step_size, steps, norm)
    x = x.detach()
    delta = _random_start(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    x_adv = (x + delta).clamp(0.0, 1.0)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = loss_fn(x_adv)
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if norm == "linf":
                step = step_size * grad.sign()
            else:
                step = step_size * grad / _flat_norm(grad).clamp_min(1e-12)
            delta = _project(x_adv + step - x, eps, norm)
            x_adv = (x + delta).clamp(0.0, 1.0)
    return x_adv.detach()


def contrastive_attack(
    encoder: nn.Module,
    x: torch.Tensor,
    z_positive: torch.Tensor,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 7,
    tau: float = 0.5,
    norm: Norm = "linf",
    discriminator: nn.Module | None = None,
    disc_weight: float = 0.0,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Instance-wise contrastive PGD (RoCL; Tran et al. METHODS.md 6b/6c step 1).

    Maximises ``L_NCE(z_positive, encoder(x_adv)) − disc_weight · BCE(D(encoder(x_adv)), 0)``, where ``encoder``
    maps [0, 1] pixels to unit-norm projections and ``z_positive`` are the (fixed) projections of the positive view.
    ``encoder`` and ``discriminator`` run in eval mode; their modes are restored afterwards.
    """
    z_positive = z_positive.detach()
    if z_positive.shape[0] != x.shape[0]:
        raise HybridCLError(f"contrastive_attack: {x.shape[0]} images but {z_positive.shape[0]} positive projections.")
    use_d = discriminator is not None and disc_weight > 0
    modules = [encoder] + ([discriminator] if use_d else [])

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        z_adv = encoder(x_adv)
        loss = nt_xent_loss(z_positive, z_adv, tau=tau)
        if use_d:
            logits = discriminator(z_adv)
            loss = loss - disc_weight * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
        return loss

    with eval_mode(*modules), frozen_parameters(*modules):
        return pgd(objective, x, eps, step_size, steps, norm, random_start, generator)


def cross_entropy_attack(
    classifier: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 10,
    norm: Norm = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted PGD on the cross-entropy of a classifier that maps [0, 1] pixels to logits (evaluation, ALF)."""

    def objective(x_adv: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(classifier(x_adv).float(), labels, reduction="sum")

    with eval_mode(classifier), frozen_parameters(classifier):
        return pgd(objective, x, eps, step_size, steps, norm, random_start, generator)


def linf_ball_ok(x: torch.Tensor, x_adv: torch.Tensor, eps: float, tol: float = 1e-6) -> bool:
    """True if ``x_adv`` is inside the L∞ ε-ball around ``x`` and inside [0, 1] (a check for tests and users)."""
    return bool((x_adv - x).abs().max() <= eps + tol and x_adv.min() >= -tol and x_adv.max() <= 1 + tol)


def l2_ball_ok(x: torch.Tensor, x_adv: torch.Tensor, eps: float, tol: float = 1e-5) -> bool:
    """True if ``x_adv`` is inside the per-image L2 ε-ball around ``x`` and inside [0, 1]."""
    norms = (x_adv - x).flatten(1).norm(dim=1)
    return bool((norms <= eps * (1 + tol) + tol).all() and x_adv.min() >= -tol and x_adv.max() <= 1 + tol)


__all__ = [
    "Normalize", "PixelModel", "eval_mode", "pgd", "contrastive_attack", "cross_entropy_attack",
    "linf_ball_ok", "l2_ball_ok",
]
