"""SimCLR (Chen et al. 2020): NT-Xent between the projections of two augmented views."""

from __future__ import annotations

import torch

from ..losses import global_nt_xent
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod


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
