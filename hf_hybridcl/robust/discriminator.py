"""Discriminator between benign and adversarial projections and the BCE divergence (Tran et al., METHODS.md 6b).

``D: R^P -> (0, 1)`` (logistic regression by default, or one hidden layer) tells the projection of the clean weak
view ``z(q)`` ("real", label 1) from that of its adversarial version ``z(q^adv)`` ("fake", label 0):

    L_D = ½ [ BCE(D(z(q)), 1) + BCE(D(z(q^adv)), 0) ]

D minimises ``L_D`` on detached projections; the encoder maximises it (``− w_d · L_D`` in its objective), which
shrinks a Jensen–Shannon-type estimate of the global divergence between benign and adversarial representations.
D returns logits; the sigmoid is folded into ``binary_cross_entropy_with_logits`` for numerical stability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError


class ProjectionDiscriminator(nn.Module):
    """Linear(P, 1) (``hidden_layers=0``, the paper's default) or Linear(P, P)–ReLU–Linear(P, 1); outputs logits."""

    def __init__(self, in_dim: int, hidden_layers: int = 0, hidden_dim: int | None = None):
        super().__init__()
        if hidden_layers not in (0, 1):
            raise HybridCLError(f"discriminator hidden layers must be 0 or 1 (method_args.disc_hidden), got {hidden_layers}.")
        if in_dim < 1:
            raise HybridCLError(f"discriminator input size must be positive, got {in_dim}; the model needs a projection head.")
        if hidden_layers == 0:
            self.net = nn.Sequential(nn.Linear(in_dim, 1))
        else:
            width = hidden_dim or in_dim
            self.net = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(inplace=True), nn.Linear(width, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.float()).squeeze(-1)


def fake_bce(discriminator: nn.Module, z_adv: torch.Tensor) -> torch.Tensor:
    """``BCE(D(z_adv), 0)``: the term the attack subtracts when the discriminator is used during generation."""
    logits = discriminator(z_adv)
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def divergence_loss(discriminator: nn.Module, z_clean: torch.Tensor, z_adv: torch.Tensor) -> torch.Tensor:
    """``L_D = ½ [BCE(D(z_clean), 1) + BCE(D(z_adv), 0)]`` (module docstring)."""
    real = discriminator(z_clean)
    fake = discriminator(z_adv)
    return 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )


__all__ = ["ProjectionDiscriminator", "divergence_loss", "fake_bce"]
