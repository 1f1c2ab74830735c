"""GenSCL (Kim et al. 2022, arXiv:2206.00384): supervised contrastive learning with label *distributions*.

The positive weight of a pair is the cosine similarity of the two label distributions (METHODS.md 5b), so one-hot
labels give SupCon, and Mixup/CutMix-mixed labels or a teacher's soft predictions plug into the contrastive loss:

    L = L_GenSup(z, l_mixed) + kd_weight * L_GenSup(z, l_teacher)        (kd_weight = inf: teacher term only)

Each of the two strong views is mixed independently (own permutation, own lambda). The teacher sees the mixed images
(eval mode, no gradient). Negatives, positives and label distributions come from every process.

Reproducibility: the mixing randomness comes from a CPU generator seeded per call from ``(mix_seed, mix_calls,
rank)``. ``mix_seed`` is drawn from the torch RNG at construction (so it follows ``train.seed``) and both numbers
are buffers of the method, so Accelerate checkpoints them and a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..data.mixing import MIX_MODES, mix_batch
from ..errors import HybridCLError
from ..losses import global_genscl
from ..distributed import rank
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod
from .supcon import check_temperatures
from .teacher import load_teacher


class GenSCL(HybridMethod):
    name = "genscl"
    description = "Generalised supervised contrastive learning: label-distribution similarity, Mixup/CutMix, optional KD."
    paper = "Kim et al. 2022, A Generalized Supervised Contrastive Learning Framework, arXiv:2206.00384"
    requires_labels = True
    view_kind = "two_strong"
    default_hparams = {
        "tau": 0.1,
        "base_tau": None,
        "mix": "mixup_cutmix",
        "mix_alpha": 1.0,
        "teacher": None,
        "kd_weight": 1.0,
        "kd_tau": 1.0,
    }

    def build(self) -> None:
        hp = self.hparams
        check_temperatures(self.name, hp)
        if hp["mix"] not in MIX_MODES:
            raise HybridCLError(f"unknown method_args.mix {hp['mix']!r}; use one of {', '.join(MIX_MODES)}.")
        if isinstance(hp["mix_alpha"], bool) or not isinstance(hp["mix_alpha"], (int, float)) or hp["mix_alpha"] <= 0:
            raise HybridCLError(f"method_args.mix_alpha must be a positive number, got {hp['mix_alpha']!r} (the paper uses 1.0).")
        kd_weight = hp["kd_weight"]
        if isinstance(kd_weight, bool) or not isinstance(kd_weight, (int, float)) or kd_weight < 0:
            raise HybridCLError(f"method_args.kd_weight must be >= 0 or .inf (teacher term only), got {kd_weight!r}.")
        self.model = HybridCLModel(self.model_config)
        self.teacher = None
        if hp["teacher"] is not None:
            cfg = self.model_config
            self.teacher = load_teacher(
                str(hp["teacher"]), self.num_classes, cfg.num_channels, float(hp["kd_tau"]), cfg.image_mean, cfg.image_std
            )
        elif math.isinf(kd_weight):
            raise HybridCLError("method_args.kd_weight=.inf (teacher only) needs method_args.teacher.")
        self.register_buffer("mix_seed", torch.randint(0, 2**62, ()), persistent=True)
        self.register_buffer("mix_calls", torch.zeros((), dtype=torch.long), persistent=True)

    def optimizer_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The student only: the teacher is frozen and never reaches the optimiser."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("teacher.")]

    def _generator(self) -> torch.Generator:
        """A CPU generator for this call, seeded from (mix_seed, call count, rank); advances the call count."""
        entropy = [int(self.mix_seed.item()), int(self.mix_calls.item()), rank()]
        self.mix_calls += 1
        seed = int(np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        v1, v2 = batch["views"][:2]
        labels = self.labels_of(batch)
        generator = self._generator()
        m1 = mix_batch(v1, labels, self.num_classes, hp["mix"], hp["mix_alpha"], generator)
        m2 = mix_batch(v2, labels, self.num_classes, hp["mix"], hp["mix_alpha"], generator)
        images = torch.cat([m1.images, m2.images], dim=0)
        z1, z2 = self.model(images).projection.chunk(2, dim=0)
        tau, base_tau, kd_weight = hp["tau"], hp["base_tau"], hp["kd_weight"]
        logs: dict[str, float] = {"mix_lambda": 0.5 * (m1.lam + m2.lam)}
        loss = z1.new_zeros(())
        if not math.isinf(kd_weight):
            loss_mix = global_genscl(z1, z2, m1.targets, m2.targets, tau, base_tau)
            loss = loss + loss_mix
            logs["genscl"] = loss_mix.item()
        if self.teacher is not None and kd_weight > 0:
            t1, t2 = self.teacher(images).chunk(2, dim=0)
            loss_kd = global_genscl(z1, z2, t1, t2, tau, base_tau)
            loss = loss + (loss_kd if math.isinf(kd_weight) else kd_weight * loss_kd)
            logs["genscl_kd"] = loss_kd.item()
        return loss, logs

    def export(self) -> HybridCLModel:
        return self.model
