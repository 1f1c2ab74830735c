"""EBCLR's generative term (Kim & Ye 2022, arXiv:2202.04933; METHODS.md 4b) as pure functions.

The marginal ``q(v)`` of EBCLR's energy-based model is estimated with the "N" estimator over the other view's unit
projections, ``log q(z) ~ log sum_m exp(-||z - z'_m||^2 / tau)``, and trained by contrastive divergence against
SGLD samples ``z~`` (the method in :mod:`hf_hybridcl.methods.ebclr` runs the sampler and the replay buffer).
"""

from __future__ import annotations

import torch

from .contrastive import pairwise_similarity


def ebclr_marginal_log_density(z: torch.Tensor, contrast: torch.Tensor, tau: float) -> torch.Tensor:
    """``log sum_m exp(-||z_k - c_m||^2 / tau)`` per row of ``z`` (the negative marginal energy of EBCLR's
    "N" estimator, sec. 4b); ``z`` and ``contrast`` are unit vectors ``(k, D)`` and ``(M, D)``."""
    return torch.logsumexp(pairwise_similarity(z.float(), contrast.float(), "neg_sqdist") / tau, dim=1)


def ebclr_generative_loss(z1: torch.Tensor, z2: torch.Tensor, z_sgld: torch.Tensor, tau: float) -> torch.Tensor:
    """EBCLR's contrastive-divergence term (METHODS.md 4b): ``-mean_n log sum_m e^{-||z_n - z'_m||^2/tau}
    + mean_k log sum_m e^{-||z~_k - sg(z'_m)||^2/tau}`` on unit vectors (the L2 penalty is separate)."""
    data = ebclr_marginal_log_density(z1, z2, tau)
    model = ebclr_marginal_log_density(z_sgld, z2.detach(), tau)
    return -data.mean() + model.mean()


__all__ = ["ebclr_generative_loss", "ebclr_marginal_log_density"]
