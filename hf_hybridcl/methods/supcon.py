"""SupCon (Khosla et al. 2020): supervised contrastive L_out between the projections of two augmented views.

Positives of an anchor are all other views with the same label (METHODS.md section 7, eq. 2 of the paper); negatives
and positives come from every process (local anchors against the gathered global batch, as in SimCLR's
:func:`~hf_hybridcl.methods.simclr.global_nt_xent`).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import HybridCLError
from ..losses import gather_no_grad, gather_with_grad, label_similarity_contrastive_loss, label_weights, rank_offset
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod

WeightFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def global_label_contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    targets1: torch.Tensor,
    targets2: torch.Tensor,
    weight_fn: WeightFn,
    tau: float,
    base_tau: float | None = None,
) -> torch.Tensor:
    """Label-similarity contrastive loss of two views with the contrast set gathered from all processes.

    ``targets`` are labels ``(n,)`` (SupCon, ``weight_fn = label_weights``) or label distributions ``(n, C)``
    (GenSCL, ``weight_fn = soft_label_weights``). Rows of the global contrast set are ``[all v1; all v2]``; the
    local anchors are the two slices of it that this process owns, each masked against its own rows via
    ``anchor_offset``. Returns the mean over the ``2n`` local anchors, so averaging over processes (what the
    data-parallel wrapper does with gradients) gives the single-process loss over the global batch."""
    n = z1.shape[0]
    g1, g2 = gather_with_grad(z1), gather_with_grad(z2)
    t1, t2 = gather_no_grad(targets1), gather_no_grad(targets2)
    big_n = g1.shape[0]
    contrast = torch.cat([g1, g2], dim=0)
    contrast_targets = torch.cat([t1, t2], dim=0)
    offset = rank_offset(n)
    loss_v1 = label_similarity_contrastive_loss(
        z1, contrast, weight_fn(targets1, contrast_targets), tau=tau, base_tau=base_tau, anchor_offset=offset
    )
    loss_v2 = label_similarity_contrastive_loss(
        z2, contrast, weight_fn(targets2, contrast_targets), tau=tau, base_tau=base_tau, anchor_offset=big_n + offset
    )
    return 0.5 * (loss_v1 + loss_v2)


def global_supcon(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float = 0.1, base_tau: float | None = None
) -> torch.Tensor:
    """SupCon L_out over both views of the global batch (both views share the image's label)."""
    return global_label_contrastive_loss(z1, z2, labels, labels, label_weights, tau, base_tau)


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
