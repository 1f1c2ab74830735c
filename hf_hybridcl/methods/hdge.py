"""HDGE (Liu & Abbeel 2020, arXiv:2007.09070): a classifier trained with cross-entropy (log q(y|x)) plus a
contrastive approximation of the class-conditional generative term log q(x|y) in logit space (METHODS.md 2b-2c).

Per step: one standard augmented view, Gaussian input noise (``input_noise_std``, 0.03 in the paper, added to the
normalised input, i.e. in the paper's [-1, 1] pixel space for our default mean = std = 0.5), one forward pass, then

    L = ce_weight * CE(f(x), ybar) + contrast_weight * L_con(f(x), ybar; queue of past logits)

with HDGE-style label smoothing ``ybar`` and the queue updated with this step's raw logits right after its
negatives were read (as in the official code). The paper also adds the noise to *test* inputs; our evaluation
(linear probe, kNN, ``scripts/hdge_vs_ce.py``) uses clean inputs unless configured otherwise.
The exported model is the :class:`HybridCLForImageClassification`; its logits are also its representation.
"""

from __future__ import annotations

import torch

from ..errors import HybridCLError
from ..losses.hdge import (
    POSITIVE_SCORES,
    LogitQueue,
    check_queue_divisible,
    hdge_contrastive_loss,
    hdge_label_distribution,
    soft_cross_entropy,
)
from ..modeling_hybridcl import HybridCLForImageClassification
from .base import Batch, HybridMethod, TrainContext


class HDGE(HybridMethod):
    name = "hdge"
    description = "Hybrid discriminative-generative training: CE + logit-space contrastive log q(x|y) with a queue."
    paper = "Liu & Abbeel 2020, Hybrid Discriminative-Generative Training via Contrastive Learning, arXiv:2007.09070"
    requires_labels = True
    view_kind = "one_standard"
    default_hparams = {
        "ce_weight": 1.0,
        "contrast_weight": 1.0,
        "queue_size": 2048,
        "tau": 0.1,
        "positive_score": "official",
        "label_smoothing": 0.0,
        "input_noise_std": 0.03,
    }

    def build(self) -> None:
        hp = self.hparams
        if hp["positive_score"] not in POSITIVE_SCORES:
            raise HybridCLError(f"method_args.positive_score must be one of {POSITIVE_SCORES}, got {hp['positive_score']!r}.")
        if hp["tau"] <= 0 or hp["input_noise_std"] < 0 or int(hp["queue_size"]) < 1:
            raise HybridCLError("method_args.tau and queue_size must be positive and input_noise_std >= 0 (paper: 0.1, 65536, 0.03).")
        if self.model_config.num_labels != self.num_classes:
            raise HybridCLError(
                f"the model config has {self.model_config.num_labels} labels but the data has {self.num_classes} classes; "
                f"build the config with id2label from the data (the training loop does this)."
            )
        self.model = HybridCLForImageClassification(self.model_config)
        self.logit_queue = LogitQueue(self.num_classes, int(hp["queue_size"]))

    def on_train_start(self, ctx: TrainContext) -> None:
        """Fail before the first step if the queue cannot wrap exactly (the official code asserts the same)."""
        check_queue_divisible(self.logit_queue.size, int(ctx.recipe["train"]["batch_size"]))

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        labels = self.labels_of(batch)
        x = batch["views"][0]
        if hp["input_noise_std"] > 0:
            x = x + hp["input_noise_std"] * torch.randn_like(x)
        logits = self.model(pixel_values=x).logits.float()
        targets = hdge_label_distribution(labels, self.num_classes, hp["label_smoothing"])

        # name -> (weight, value); further terms (e.g. the JEM log p(x) term) are added to this dict
        terms: dict[str, tuple[float, torch.Tensor]] = {
            "ce": (hp["ce_weight"], soft_cross_entropy(logits, targets)),
            "contrast": (
                hp["contrast_weight"],
                hdge_contrastive_loss(logits, targets, self.logit_queue.queue, hp["tau"], hp["positive_score"]),
            ),
        }
        self.logit_queue.enqueue(logits)  # after the negatives were read, as in the official code

        loss = sum(weight * value for weight, value in terms.values())
        logs = {name: value.item() for name, (_, value) in terms.items()}
        logs["train_acc"] = (logits.argmax(-1) == labels).float().mean().item()
        return loss, logs

    def export(self) -> HybridCLForImageClassification:
        return self.model
