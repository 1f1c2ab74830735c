"""The two-view contrastive losses over the global batch: negatives and positives from every process.

Each process holds ``n`` images with two views. The contrast set is ``[all v1; all v2]`` gathered from every process
with :func:`gather_with_grad`; this process's anchors are its own two slices of it, each masked against its own rows
via ``anchor_offset``. Every process returns the mean over its ``2n`` anchors, so averaging over processes (what the
data-parallel wrapper does with gradients) gives exactly the single-process loss over the global batch.
"""

from __future__ import annotations

from typing import Callable

import torch

from .contrastive import (
    Similarity,
    label_similarity_contrastive_loss,
    label_weights,
    paired_contrastive_loss,
    soft_label_weights,
)
from ..distributed import gather_no_grad, gather_with_grad, rank_offset

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def global_two_view_contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    targets1: torch.Tensor,
    targets2: torch.Tensor,
    weight_fn: WeightFn,
    tau: float,
    base_tau: float | None = None,
    similarity: Similarity = "cosine",
) -> torch.Tensor:
    """Label-similarity contrastive loss of two views over the global batch (module docstring).

    ``targets`` are per-view labels ``(n,)`` (``weight_fn = label_weights``) or label distributions ``(n, C)``
    (``weight_fn = soft_label_weights``)."""
    n = z1.shape[0]
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    contrast = torch.cat([g1, g2], dim=0)
    contrast_targets = torch.cat([gather_no_grad(targets1), gather_no_grad(targets2)], dim=0)
    offset, big_n = rank_offset(n), g1.shape[0]
    loss_v1 = label_similarity_contrastive_loss(
        z1, contrast, weight_fn(targets1, contrast_targets), tau, base_tau, similarity, anchor_offset=offset
    )
    loss_v2 = label_similarity_contrastive_loss(
        z2, contrast, weight_fn(targets2, contrast_targets), tau, base_tau, similarity, anchor_offset=big_n + offset
    )
    return 0.5 * (loss_v1 + loss_v2)


def global_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5, similarity: Similarity = "cosine") -> torch.Tensor:
    """SimCLR NT-Xent (Chen et al. 2020, eq. 1) over the global batch: the positive of a view is the other view of
    the same image. ``similarity="neg_sqdist"`` gives EBCLR's discriminative term (Kim & Ye 2022, sec. 3.2).

    The identity-pairing case of :func:`global_two_view_contrastive_loss` (same value), computed as a cross-entropy
    over the contrast set with the self column masked: one positive per anchor needs no dense weight matrix."""
    n = z1.shape[0]
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    big_n, offset = g1.shape[0], rank_offset(n)
    rows = torch.arange(n, device=z1.device)
    own_v1, own_v2 = rows + offset, rows + big_n + offset  # this process's rows in [all v1; all v2]
    return paired_contrastive_loss(
        torch.cat([z1, z2], dim=0), torch.cat([g1, g2], dim=0), torch.cat([own_v1, own_v2]), torch.cat([own_v2, own_v1]),
        tau, similarity,
    )


def global_supcon(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float = 0.1, base_tau: float | None = None
) -> torch.Tensor:
    """SupCon L_out (Khosla et al. 2020, eq. 2) over both views of the global batch."""
    return global_two_view_contrastive_loss(z1, z2, labels, labels, label_weights, tau, base_tau)


def global_genscl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    dists1: torch.Tensor,
    dists2: torch.Tensor,
    tau: float = 0.1,
    base_tau: float | None = None,
) -> torch.Tensor:
    """GenSCL (Kim et al. 2022, METHODS.md 5b) over the global batch, with per-view label distributions."""
    return global_two_view_contrastive_loss(z1, z2, dists1, dists2, soft_label_weights, tau, base_tau)
