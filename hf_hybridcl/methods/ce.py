"""Plain supervised cross-entropy: the baseline of HDGE (METHODS.md 2g, Table 1) and GenSCL (5g, "CE").

``L = -sum_c t_c log softmax(f(x))_c`` with target ``t = onehot(y)`` or, with label smoothing ``eps``, HDGE's form
(METHODS.md section 7): ``1 - eps`` on the label and ``eps / (C - 1)`` on every other class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import HybridCLError
from ..losses.hdge import hdge_label_distribution
from ..modeling_hybridcl import HybridCLForImageClassification, soft_cross_entropy
from .base import Batch, HybridMethod


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` (B, C) against integer ``labels`` with HDGE-style label smoothing."""
    if label_smoothing == 0.0:
        return F.cross_entropy(logits.float(), labels.long())
    return soft_cross_entropy(logits, hdge_label_distribution(labels, logits.shape[-1], label_smoothing))


class CrossEntropy(HybridMethod):
    name = "ce"
    description = "Supervised cross-entropy on one standard view (baseline of HDGE and GenSCL)."
    paper = "Supervised baseline, e.g. Liu & Abbeel 2020 (arXiv:2007.09070) Table 1 and Kim et al. 2022 (arXiv:2206.00384)"
    requires_labels = True
    view_kind = "one_standard"
    default_hparams = {"label_smoothing": 0.0}

    def build(self) -> None:
        eps = self.hparams["label_smoothing"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 <= eps < 1.0:
            raise HybridCLError(f"method_args.label_smoothing must be in [0, 1), got {eps!r} (0.0 turns it off).")
        self.hparams["label_smoothing"] = float(eps)
        if self.model_config.num_labels != self.num_classes:
            raise HybridCLError(
                f"the model config has {self.model_config.num_labels} labels but the data has {self.num_classes} classes; "
                f"build the config with id2label from the data (the training loop does this)."
            )
        self.model = HybridCLForImageClassification(self.model_config)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        labels = self.labels_of(batch)
        logits = self.model(batch["views"][0]).logits
        loss = cross_entropy(logits, labels, self.hparams["label_smoothing"])
        accuracy = (logits.argmax(-1) == labels).float().mean()
        return loss, {"ce": loss.item(), "train_accuracy": accuracy.item()}

    def export(self) -> HybridCLForImageClassification:
        return self.model
