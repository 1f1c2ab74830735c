"""SupCon (Khosla et al. 2020): supervised contrastive L_out between the projections of two augmented views.

Positives of an anchor are all other views with the same label (METHODS.md section 7, eq. 2 of the paper); negatives
and positives come from every process (local anchors against the gathered global batch, as in SimCLR's
:func:`~hf_hybridcl.losses.global_supcon`).
"""

from __future__ import annotations

import torch

from ..errors import HybridCLError
from ..losses import global_supcon
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod

class SupCon(HybridMethod):
    name = "supcon"
    description = "Supervised contrastive learning (L_out): same-label views are positives (baseline)."
    paper = "Khosla et al. 2020, Supervised Contrastive Learning, arXiv:2004.11362"
    requires_labels = True
    view_kind = "two_strong"
    default_hparams = {"tau": 0.1, "base_tau": None}

    def build(self) -> None:
        check_temperatures(self.name, self.hparams)
        self.model = HybridCLModel(self.model_config)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = batch["views"][:2]
        labels = self.labels_of(batch)
        z = self.model(torch.cat([v1, v2], dim=0)).projection
        z1, z2 = z.chunk(2, dim=0)
        loss = global_supcon(z1, z2, labels, self.hparams["tau"], self.hparams["base_tau"])
        return loss, {"supcon": loss.item()}

    def export(self) -> HybridCLModel:
        return self.model


def check_temperatures(method: str, hparams: dict) -> None:
    """``tau`` and ``base_tau`` (if given) must be positive numbers."""
    for key in ("tau", "base_tau"):
        value = hparams.get(key)
        if value is None and key == "base_tau":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise HybridCLError(
                f"method_args.{key} of {method!r} must be a positive number, got {value!r} "
                f"(e.g. method_args.{key}=0.1{'; null means base_tau = tau' if key == 'base_tau' else ''})."
            )
