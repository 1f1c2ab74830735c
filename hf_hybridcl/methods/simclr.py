"""SimCLR (Chen et al. 2020): NT-Xent between the projections of two augmented views."""

from __future__ import annotations

import torch

from ..losses import gather_with_grad, label_similarity_contrastive_loss, rank_offset, view_pair_weights
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod


def global_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, similarity: str = "cosine") -> torch.Tensor:
    """NT-Xent with negatives from every process: local anchors against the gathered global batch.

    Rows are ordered view-major per process; the global contrast set is ``[all v1; all v2]``."""
    n = z1.shape[0]
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    big_n = g1.shape[0]
    contrast = torch.cat([g1, g2], dim=0)
    offset = rank_offset(n)
    weights_full = view_pair_weights(big_n, 2, device=z1.device)
    rows = torch.cat([torch.arange(offset, offset + n), torch.arange(big_n + offset, big_n + offset + n)]).to(z1.device)
    weights = weights_full[rows]
    # anchors are two non-contiguous slices of the contrast set: mask each against its own row
    loss_v1 = label_similarity_contrastive_loss(z1, contrast, weights[:n], tau=tau, similarity=similarity, anchor_offset=offset)
    loss_v2 = label_similarity_contrastive_loss(
        z2, contrast, weights[n:], tau=tau, similarity=similarity, anchor_offset=big_n + offset
    )
    return 0.5 * (loss_v1 + loss_v2)


class SimCLR(HybridMethod):
    name = "simclr"
    description = "NT-Xent contrastive learning between two augmented views (baseline)."
    paper = "Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual Representations, arXiv:2002.05709"
    view_kind = "two_strong"
    default_hparams = {"tau": 0.5}

    def build(self) -> None:
        self.model = HybridCLModel(self.model_config)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = batch["views"][:2]
        z = self.model(torch.cat([v1, v2], dim=0)).projection
        z1, z2 = z.chunk(2, dim=0)
        loss = global_nt_xent(z1, z2, self.hparams["tau"])
        return loss, {"nt_xent": loss.item()}

    def export(self) -> HybridCLModel:
        return self.model
