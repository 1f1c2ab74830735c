"""HDGE (Liu & Abbeel 2020, arXiv:2007.09070): a classifier trained with cross-entropy (log q(y|x)) plus a
contrastive approximation of the class-conditional generative term log q(x|y) in logit space (METHODS.md 2b-2c).

Per step: one standard augmented view, Gaussian input noise (``input_noise_std``, 0.03 in the paper, added to the
normalised input, i.e. in the paper's [-1, 1] pixel space for our default mean = std = 0.5), one forward pass, then

    L = ce_weight * CE(f(x), ybar) + contrast_weight * L_con(f(x), ybar; queue of past logits)

with HDGE-style label smoothing ``ybar`` and the queue updated with this step's raw logits right after its
negatives were read (as in the official code). The paper also adds the noise to *test* inputs; our evaluation
(linear probe, kNN, ``scripts/compare_digits.py``) uses clean inputs unless configured otherwise.
The exported model is the :class:`HybridCLForImageClassification`; its logits are also its representation.

"HDGE + JEM" (paper Table 4, sample generation): ``px_sgld_weight > 0`` adds ``px_sgld_weight * L_px``, JEM's
``-(mean LSE f(x) - mean LSE f(x~))`` with SGLD samples ``x~`` from a persistent replay buffer (JEM settings, METHODS.md
2c: 10,000 slots of uniform noise in [-1, 1], reinit 0.05, 20 steps, step 1.0, noise 0.01, network in eval mode while
sampling). The buffer exists only when the weight is positive; chains with a non-finite energy or |E| above
``sgld_energy_threshold`` are restarted (the official code aborts at |L| > 1e8).
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
)
from ..losses.jem import finish_jem_step, jem_px_loss, make_jem_buffer, sample_jem_sgld
from ..modeling_hybridcl import HybridCLForImageClassification, soft_cross_entropy
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
        # HDGE + JEM: the SGLD-trained log p(x) term (0 = off, the main method has no sampler)
        "px_sgld_weight": 0.0,
        "sgld_steps": 20,
        "sgld_step_size": 1.0,
        "sgld_noise": 0.01,
        "sgld_buffer_size": 10000,
        "sgld_reinit_prob": 0.05,
        "sgld_energy_threshold": 1e8,
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
        if hp["px_sgld_weight"] < 0 or hp["sgld_steps"] < 0 or hp["sgld_step_size"] < 0 or hp["sgld_noise"] < 0:
            raise HybridCLError("method_args.px_sgld_weight and the sgld_* settings must be >= 0 (JEM: 1.0, 20, 1.0, 0.01).")
        if hp["px_sgld_weight"] > 0:
            cfg = self.model_config
            self.px_buffer = make_jem_buffer(
                (cfg.num_channels, cfg.image_size, cfg.image_size), int(hp["sgld_buffer_size"]), float(hp["sgld_reinit_prob"])
            )

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
        diverged = None
        if hp["px_sgld_weight"] > 0:
            px, diverged = self._px_term(logits, x.shape[0])
            terms["px"] = (hp["px_sgld_weight"], px)

        loss = sum(weight * value for weight, value in terms.values())
        logs = {name: value.item() for name, (_, value) in terms.items()}
        if diverged is not None:
            logs["sgld_diverged"] = float(diverged)
        logs["train_acc"] = (logits.argmax(-1) == labels).float().mean().item()
        return loss, logs

    def _px_term(self, logits: torch.Tensor, n: int) -> tuple[torch.Tensor, int]:
        """JEM's L_px with SGLD samples from the replay buffer (uniform re-initialisation, model in eval mode)."""
        hp = self.hparams
        result = sample_jem_sgld(
            lambda v: self.model(pixel_values=v).logits,
            self.px_buffer,
            n,
            model=self.model,
            steps=int(hp["sgld_steps"]),
            step_size=float(hp["sgld_step_size"]),
            noise_std=float(hp["sgld_noise"]),
        )
        logits_sgld = self.model(pixel_values=result.samples).logits.float()
        diverged = finish_jem_step(self.px_buffer, result, logits_sgld, float(hp["sgld_energy_threshold"]))
        return jem_px_loss(logits, logits_sgld), diverged

    def export(self) -> HybridCLForImageClassification:
        return self.model
