"""One contrastive loss in label-similarity form.

Every anchor ``i`` gets a softmax over its similarities to all other samples ``k != i`` and is trained towards
a target distribution proportional to a non-negative positive-weight row ``w_i``:

    loss_i = -(tau / base_tau) * sum_{j != i} w_ij * log p_ij / sum_{j != i} w_ij,
    p_ij   = exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau).

Special cases (METHODS.md sections 1, 4b, 5b, 7):
- SimCLR / NT-Xent (Chen et al. 2020, eq. 1): ``w`` is the identity pairing of two views of one image.
- SupCon (Khosla et al. 2020, L_out, eq. 2): ``w_ij = 1[y_i = y_j]``.
- GenSCL (Kim et al. 2022, eq. 5b): ``w_ij = cos(l_i, l_j)`` for label distributions ``l`` (Mixup/CutMix/teacher).
- EBCLR's discriminative term (Kim & Ye 2022, sec. 3): similarity ``-||z_i - z_j||^2`` instead of the cosine.

Anchors may be a slice of the contrast set (the local rows of a batch gathered across processes); ``anchor_offset``
says where that slice starts so the self-similarity is masked correctly.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Similarity = Literal["cosine", "neg_sqdist"]


def pairwise_similarity(anchors: torch.Tensor, contrast: torch.Tensor, similarity: Similarity = "cosine") -> torch.Tensor:
    """Similarity matrix ``(m, M)``: dot product of unit vectors, or negative squared Euclidean distance."""
    if similarity == "cosine":
        return anchors @ contrast.T
    if similarity == "neg_sqdist":
        sq = anchors.pow(2).sum(-1, keepdim=True) + contrast.pow(2).sum(-1).unsqueeze(0) - 2.0 * anchors @ contrast.T
        return -sq.clamp_min(0.0)
    raise ValueError(f"unknown similarity {similarity!r}; use 'cosine' or 'neg_sqdist'.")


def label_similarity_contrastive_loss(
    anchors: torch.Tensor,
    contrast: torch.Tensor,
    positive_weights: torch.Tensor,
    tau: float = 0.5,
    base_tau: float | None = None,
    similarity: Similarity = "cosine",
    anchor_offset: int = 0,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Mean over anchors of the label-similarity contrastive loss (module docstring).

    Args:
        anchors: ``(m, D)`` embeddings (unit-norm for ``cosine``).
        contrast: ``(M, D)`` embeddings; anchor ``i`` is row ``anchor_offset + i`` of it and is excluded.
        positive_weights: ``(m, M)`` non-negative target weights; the self column is ignored.
        tau: temperature; base_tau: loss scale ``tau / base_tau`` (SupCon/GenSCL code uses 0.07), default ``tau``.
    """
    m, big_m = anchors.shape[0], contrast.shape[0]
    if positive_weights.shape != (m, big_m):
        raise ValueError(f"positive_weights must have shape {(m, big_m)}, got {tuple(positive_weights.shape)}.")
    logits = pairwise_similarity(anchors.float(), contrast.float(), similarity) / tau
    rows = torch.arange(m, device=anchors.device)
    self_mask = torch.zeros(m, big_m, dtype=torch.bool, device=anchors.device)
    self_mask[rows, rows + anchor_offset] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    weights = positive_weights.float().masked_fill(self_mask, 0.0)
    per_anchor = -(weights * log_prob.masked_fill(self_mask, 0.0)).sum(1) / (weights.sum(1) + eps)
    scale = 1.0 if base_tau is None else tau / base_tau
    return scale * per_anchor.mean()


def view_pair_weights(batch_size: int, num_views: int = 2, device=None) -> torch.Tensor:
    """Positive weights of SimCLR: views of the same image are positives. Rows ordered view-major
    (``[v1 of all images, v2 of all images, ...]``), shape ``(V*B, V*B)``, diagonal zero."""
    ids = torch.arange(batch_size, device=device).repeat(num_views)
    return (ids[:, None] == ids[None, :]).float().fill_diagonal_(0.0)


def label_weights(labels: torch.Tensor, contrast_labels: torch.Tensor | None = None) -> torch.Tensor:
    """SupCon positive weights ``1[y_i = y_j]`` between anchor labels ``(m,)`` and contrast labels ``(M,)``."""
    contrast_labels = labels if contrast_labels is None else contrast_labels
    return (labels[:, None] == contrast_labels[None, :]).float()


def soft_label_weights(label_dists: torch.Tensor, contrast_label_dists: torch.Tensor | None = None) -> torch.Tensor:
    """GenSCL positive weights: cosine similarity of label distributions ``(m, C)`` and ``(M, C)`` (eq. 5b)."""
    contrast_label_dists = label_dists if contrast_label_dists is None else contrast_label_dists
    a = F.normalize(label_dists.float(), dim=-1)
    b = F.normalize(contrast_label_dists.float(), dim=-1)
    return a @ b.T


def paired_contrastive_loss(
    anchors: torch.Tensor,
    contrast: torch.Tensor,
    self_cols: torch.Tensor,
    positive_cols: torch.Tensor,
    tau: float,
    similarity: Similarity = "cosine",
) -> torch.Tensor:
    """The label-similarity loss when every anchor has exactly one positive (SimCLR's identity pairing): a
    cross-entropy over the contrast set with the anchor's own column masked. Same value as
    :func:`label_similarity_contrastive_loss` with a one-hot weight row, without the dense weight matrix."""
    logits = pairwise_similarity(anchors.float(), contrast.float(), similarity) / tau
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(anchors.shape[0], device=anchors.device), self_cols] = True
    return F.cross_entropy(logits.masked_fill(self_mask, float("-inf")), positive_cols)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5, similarity: Similarity = "cosine") -> torch.Tensor:
    """SimCLR NT-Xent over ``2N`` views of ``N`` images (METHODS.md section 1), mean over the ``2N`` anchors."""
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    rows = torch.arange(n, device=z.device)
    self_cols = torch.cat([rows, rows + n])
    return paired_contrastive_loss(z, z, self_cols, torch.cat([rows + n, rows]), tau, similarity)


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, tau: float = 0.1, base_tau: float | None = None) -> torch.Tensor:
    """SupCon L_out (Khosla et al. 2020, eq. 2) over all rows of ``z`` with integer ``labels``."""
    return label_similarity_contrastive_loss(z, z, label_weights(labels), tau=tau, base_tau=base_tau)


def genscl_loss(
    z: torch.Tensor, label_dists: torch.Tensor, tau: float = 0.1, base_tau: float | None = None
) -> torch.Tensor:
    """GenSCL loss (Kim et al. 2022, METHODS.md 5b) with label distributions ``(rows, C)``."""
    return label_similarity_contrastive_loss(z, z, soft_label_weights(label_dists), tau=tau, base_tau=base_tau)


class LabelSimilarityContrastiveLoss(nn.Module):
    """Thin module around :func:`label_similarity_contrastive_loss`."""

    def __init__(self, tau: float = 0.5, base_tau: float | None = None, similarity: Similarity = "cosine"):
        super().__init__()
        self.tau, self.base_tau, self.similarity = tau, base_tau, similarity

    def forward(self, anchors, contrast, positive_weights, anchor_offset: int = 0) -> torch.Tensor:
        return label_similarity_contrastive_loss(
            anchors, contrast, positive_weights, self.tau, self.base_tau, self.similarity, anchor_offset
        )


class NTXentLoss(nn.Module):
    """Thin module around :func:`nt_xent_loss`."""

    def __init__(self, tau: float = 0.5, similarity: Similarity = "cosine"):
        super().__init__()
        self.tau, self.similarity = tau, similarity

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent_loss(z1, z2, self.tau, self.similarity)
