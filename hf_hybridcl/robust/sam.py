"""Sharpness-aware minimisation as a wrapper around a base optimiser (Foret et al. 2021; ASAM, Kwon et al. 2021).

Tran et al. (METHODS.md 6b/6c step 3) apply (A)SAM to the **benign** contrastive loss only, and add the gradient
of the adversarial + divergence loss taken at the **unperturbed** weights before the base step:

1. ``g = ∇_w L_ben(w)``; :meth:`SAM.first_step` moves the weights to ``w + e`` with
   ``e = ρ g / ||g||`` (SAM) or ``e = ρ T² g / ||T g||`` with ``T = |w|`` elementwise (ASAM);
2. ``∇_w L_ben(w + e)`` is computed (with BatchNorm running statistics frozen: :func:`frozen_bn_stats`);
3. :meth:`SAM.second_step` restores ``w``, adds the stored extra gradients and steps the base optimiser.

With ``ρ = 0`` the wrapper is exactly the base optimiser (METHODS.md section 8, invariant 7).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..errors import HybridCLError

GradientStore = dict[int, torch.Tensor]  # id(param) -> gradient


class SAM:
    """(A)SAM around ``base_optimizer`` (any ``torch.optim.Optimizer``, also Accelerate's wrapper).

    The perturbation covers every parameter of the base optimiser's groups that has a gradient at
    :meth:`first_step`. Checkpointable through :meth:`state_dict` / :meth:`load_state_dict` (ρ, the mode and the
    base optimiser's state; a pending perturbation is not saved, so checkpoint between steps, as the loop does).
    """

    def __init__(self, base_optimizer: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False, eps: float = 1e-12):
        if rho < 0:
            raise HybridCLError(f"SAM rho must be >= 0, got {rho}; use 0.05 for SAM or 0.5-2 for ASAM.")
        self.base_optimizer = base_optimizer
        self.rho, self.adaptive, self.eps = float(rho), bool(adaptive), float(eps)
        self._perturbation: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    def _params(self) -> Iterator[torch.nn.Parameter]:
        for group in self.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """``||T g||`` over all parameters with a gradient (``T = |w|`` for ASAM, identity for SAM)."""
        norms = [((p.abs() if self.adaptive else 1.0) * p.grad).norm(p=2) for p in self._params() if p.grad is not None]
        if not norms:
            raise HybridCLError("SAM.first_step found no gradients; call backward on the benign loss first.")
        return torch.stack([n.float() for n in norms]).norm(p=2)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """Move the weights to ``w + e`` (module docstring) and remember ``e``."""
        if self._perturbation:
            raise HybridCLError("SAM.first_step called twice without second_step/restore; weights are already perturbed.")
        scale = self.rho / (self.grad_norm() + self.eps)
        for p in self._params():
            if p.grad is None:
                continue
            e = (p.pow(2) if self.adaptive else 1.0) * p.grad * scale.to(p.dtype)
            p.add_(e)
            self._perturbation[id(p)] = (p, e)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Back to the unperturbed weights ``w`` (gradients are kept)."""
        for p, e in self._perturbation.values():
            p.sub_(e)
        self._perturbation.clear()

    @torch.no_grad()
    def add_gradients(self, store: GradientStore | None) -> None:
        """``p.grad += store[p]`` for every stored gradient (the extra-gradient injection of Tran et al.)."""
        for p in self._params():
            extra = (store or {}).get(id(p))
            if extra is None:
                continue
            if p.grad is None:
                p.grad = extra.clone()
            else:
                p.grad.add_(extra)

    def second_step(self, extra_gradients: GradientStore | None = None, zero_grad: bool = True) -> None:
        """Restore ``w``, add the extra gradients, step the base optimiser."""
        self.restore()
        self.add_gradients(extra_gradients)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"rho": self.rho, "adaptive": self.adaptive, "base": self.base_optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rho, self.adaptive = float(state["rho"]), bool(state["adaptive"])
        self.base_optimizer.load_state_dict(state["base"])


def store_gradients(params: Iterable[torch.nn.Parameter]) -> GradientStore:
    """A detached copy of the current gradients, keyed by parameter identity (for :meth:`SAM.add_gradients`)."""
    return {id(p): p.grad.detach().clone() for p in params if p.grad is not None}


@contextlib.contextmanager
def frozen_bn_stats(*modules: nn.Module) -> Iterator[None]:
    """BatchNorm layers inside ``modules`` keep normalising with batch statistics in train mode, but their running
    mean/var do not move (SAM's perturbed pass must not update them).

    Implemented with ``momentum = 0`` (running ← 1·running + 0·batch) rather than copying saved values back, because
    BatchNorm saves its running buffers for backward: overwriting them before ``backward`` would break autograd,
    and swapping in new tensors would detach them from DDP's buffer broadcast. The batch counter is restored on exit.
    """
    norms = [m for module in modules for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    try:
        for m in norms:
            m.momentum = 0.0
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                with torch.no_grad():
                    m.num_batches_tracked.copy_(count)


__all__ = ["SAM", "GradientStore", "frozen_bn_stats", "store_gradients"]
