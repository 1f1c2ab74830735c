"""Robust contrastive learning with a benign (A)SAM term and a global-divergence discriminator.

Tran et al., "Robust Contrastive Learning With Theory Guarantee" (arXiv:2311.09671; v2 "Generalization Bounds for
Robust Contrastive Learning: From Theory to Practice"), METHODS.md section 6. Views: ``p`` strong SimCLR view,
``q`` weak view (pad-crop + flip), ``q^adv`` = instance-wise PGD of ``q``. Losses (6b):

    L_ben = L_NCE(p, q)                L_adv = L_NCE(p, q^adv)
    L_D   = ½ [BCE(D(z(q)), 1) + BCE(D(z(q^adv)), 0)]
    encoder: min  w_b · L_ben + L_adv − w_d · L_D       discriminator: min L_D (detached projections)

One optimisation step is the "3-step" algorithm of 6c (:meth:`RobustCL.optimization_step`):

1. attack (model and D in eval mode): PGD-L∞ on ``q`` maximising ``L_NCE(p, q^adv) − w_d·BCE(D(z(q^adv)), 0)``;
2. discriminator update (model in eval mode, own SGD optimiser, lr following the main schedule's factor);
3. encoder update (train mode): gradient of ``L_adv − w_d·L_D`` at ``w`` is stored; ``w_b·L_ben`` is minimised
   with (A)SAM (first step to ``w + e``, second pass with BatchNorm statistics frozen), then the stored gradient
   is added before the base optimiser's step.

Arms: ``benign_weight: 0`` is adversarial CL only (RoCL-style "rocl_new" loss); ``sam: none`` optimises the benign
term without SAM; ``disc_weight: 0`` drops the discriminator. Inputs arrive in [0, 1] pixels
(``normalize_views = False``) and are normalised inside with the config's mean/std, so attacks use pixel ε.

Normalisation layers: CNN backbones get dual BatchNorm (clean branch for ``p, q``, adversarial branch for
``q^adv``); the exported model keeps one branch (``export_bn_branch``, default ``adversarial`` as in the paper's
robust probe). ViT backbones use LayerNorm, which is per-sample and keeps no running statistics, so clean and
adversarial inputs share all parameters and nothing needs to be split.

Data parallelism: every forward pass whose backward produces parameter gradients goes through ``ctx.wrapped``
(one forward per backward, so DDP reduces each gradient). The attack only needs input gradients
(``torch.autograd.grad``) and runs on the unwrapped model, so DDP's reducer never sees it.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from ..errors import HybridCLError
from ..modeling_hybridcl import HybridCLModel
from ..robust.attacks import Normalize, contrastive_attack, eval_mode
from ..robust.discriminator import ProjectionDiscriminator, divergence_loss
from ..robust.dual_bn import BRANCHES, bn_branch, branch_norms, convert_to_dual_bn, convert_to_plain_bn, dual_bn_layers
from ..robust.sam import SAM, frozen_bn_stats, store_gradients
from .base import Batch, HybridMethod, StepContext, TrainContext
from ..losses import global_nt_xent

SAM_MODES = ("asam", "sam", "none")
ROBUST_EVAL_MODES = ("none", "slf", "slf+alf")


class _BranchProjector(torch.nn.Module):
    """[0, 1] pixels -> unit projections through one BatchNorm branch (the model callable the attack sees)."""

    def __init__(self, model: HybridCLModel, normalize: Normalize, branch: str):
        super().__init__()
        self.model, self.normalize, self.branch = model, normalize, branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with bn_branch(self.model, self.branch):
            return self.model(self.normalize(x)).projection


class RobustCL(HybridMethod):
    name = "robustcl"
    description = "Adversarial CL + benign NT-Xent under (A)SAM + a benign/adversarial projection discriminator."
    paper = "Tran et al. 2023, Robust Contrastive Learning With Theory Guarantee, arXiv:2311.09671"
    view_kind = "strong_weak"
    normalize_views = False
    find_unused_parameters = True  # the discriminator pass uses no encoder weights; the benign pass no D weights
    default_hparams = {
        "tau": 0.5,
        "benign_weight": 2.0,
        "sam": "asam",
        "sam_rho": 1.0,
        "disc_weight": 0.1,
        "disc_hidden": 0,
        "disc_lr": 0.2,
        "disc_in_attack": True,
        "attack_eps": 8 / 255,
        "attack_step": 2 / 255,
        "attack_steps": 7,
        "dual_bn": "auto",
        "export_bn_branch": "adversarial",
        "robust_eval": "slf",
    }
    disc_momentum = 0.9
    disc_weight_decay = 1e-4

    # ------------------------------------------------------------------------------------------------ build
    def build(self) -> None:
        hp = self.hparams
        self._validate(hp)
        if self.model_config.proj_num_layers < 1:
            raise HybridCLError("robustcl contrasts projections and needs a projection head; set model.proj_num_layers >= 1.")
        self.model = HybridCLModel(self.model_config)
        self.normalize = Normalize(self.model_config.image_mean, self.model_config.image_std)
        self.num_dual_bn = convert_to_dual_bn(self.model.backbone) if hp["dual_bn"] in ("auto", True) else 0
        if hp["disc_weight"] > 0:
            self.discriminator = ProjectionDiscriminator(self.model_config.proj_output_dim, hp["disc_hidden"])
            self.disc_optimizer = torch.optim.SGD(
                self.discriminator.parameters(), lr=hp["disc_lr"], momentum=self.disc_momentum,
                weight_decay=self.disc_weight_decay,
            )
        else:
            self.discriminator = None
            self.disc_optimizer = None

    @staticmethod
    def _validate(hp: dict[str, Any]) -> None:
        if hp["sam"] not in SAM_MODES:
            raise HybridCLError(f"method_args.sam must be one of {SAM_MODES}, got {hp['sam']!r}.")
        for key in ("benign_weight", "disc_weight", "sam_rho", "disc_lr", "attack_eps", "attack_step"):
            if float(hp[key]) < 0:
                raise HybridCLError(f"method_args.{key} must be >= 0, got {hp[key]}.")
        if hp["tau"] <= 0:
            raise HybridCLError(f"method_args.tau must be positive, got {hp['tau']}.")
        if int(hp["attack_steps"]) < 1:
            raise HybridCLError(f"method_args.attack_steps must be >= 1 (7 in the paper), got {hp['attack_steps']}.")
        if hp["disc_hidden"] not in (0, 1):
            raise HybridCLError(f"method_args.disc_hidden must be 0 (linear D, the paper's) or 1, got {hp['disc_hidden']}.")
        if hp["dual_bn"] not in ("auto", True, False):
            raise HybridCLError(f"method_args.dual_bn must be auto, true or false, got {hp['dual_bn']!r}.")
        if hp["export_bn_branch"] not in BRANCHES:
            raise HybridCLError(f"method_args.export_bn_branch must be one of {BRANCHES}, got {hp['export_bn_branch']!r}.")
        if hp["robust_eval"] not in ROBUST_EVAL_MODES:
            raise HybridCLError(f"method_args.robust_eval must be one of {ROBUST_EVAL_MODES}, got {hp['robust_eval']!r}.")

    def on_train_start(self, ctx: TrainContext) -> None:
        if getattr(ctx.accelerator, "mixed_precision", "no") == "fp16":
            raise HybridCLError(
                "robustcl runs its own discriminator optimiser and SAM passes without a loss scaler; use "
                "train.mixed_precision=no or bf16."
            )

    def optimizer_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The encoder and head only: the discriminator has its own optimiser."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and not n.startswith("discriminator.")]

    def checkpoint_objects(self) -> list[Any]:
        return [self.disc_optimizer] if self.disc_optimizer is not None else []

    # ---------------------------------------------------------------------------------------------- pieces
    def project(self, x: torch.Tensor, branch: str = "clean") -> torch.Tensor:
        """Unit projections of [0, 1] pixel images through one BatchNorm branch."""
        with bn_branch(self.model, branch):
            return self.model(self.normalize(x)).projection

    def generate_adversarial(self, batch: Batch) -> torch.Tensor:
        """Step 1: PGD on the weak view against the strong view's projection (model and D in eval mode)."""
        hp = self.hparams
        p, q = batch["views"][:2]
        with eval_mode(self.model), torch.no_grad():
            z_p = self.project(p, "clean")
        use_d = self.discriminator is not None and hp["disc_in_attack"]
        return contrastive_attack(
            _BranchProjector(self.model, self.normalize, "adversarial"), q, z_p,
            eps=hp["attack_eps"], step_size=hp["attack_step"], steps=int(hp["attack_steps"]), tau=hp["tau"],
            discriminator=self.discriminator if use_d else None, disc_weight=hp["disc_weight"] if use_d else 0.0,
        )

    def _discriminator_loss(self, q: torch.Tensor, adv: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Step 2 objective: L_D on detached projections, encoder in eval mode (BN statistics unchanged)."""
        with eval_mode(self.model), torch.no_grad():
            z_q, z_adv = self.project(q, "clean"), self.project(adv, "adversarial")
        loss = divergence_loss(self.discriminator, z_q, z_adv)
        with torch.no_grad():
            real, fake = self.discriminator(z_q), self.discriminator(z_adv)
            acc = 0.5 * ((real > 0).float().mean() + (fake < 0).float().mean())
        return loss, {"d_loss": loss.item(), "d_accuracy": acc.item()}

    def _encoder_loss(self, p, q, adv, benign: bool, adversarial: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """``w_b·L_ben`` and/or ``L_adv − w_d·L_D`` from one forward (clean branch for p, q; adversarial for adv)."""
        hp = self.hparams
        use_d = adversarial and self.discriminator is not None
        clean_in = [p] + ([q] if benign or use_d else [])
        z_clean = self.project(torch.cat(clean_in, dim=0), "clean")
        z_p = z_clean[: p.shape[0]]
        z_q = z_clean[p.shape[0]:] if len(clean_in) > 1 else None
        total = z_p.new_zeros(())
        logs: dict[str, float] = {}
        if benign:
            l_ben = global_nt_xent(z_p, z_q, hp["tau"])
            total = total + hp["benign_weight"] * l_ben
            logs["l_ben"] = l_ben.item()
        if adversarial:
            z_adv = self.project(adv, "adversarial")
            l_adv = global_nt_xent(z_p, z_adv, hp["tau"])
            total = total + l_adv
            logs["l_adv"] = l_adv.item()
            if use_d:
                l_div = divergence_loss(self.discriminator, z_q, z_adv)
                total = total - hp["disc_weight"] * l_div
                logs["l_div"] = l_div.item()
        return total, logs

    def training_step(self, batch: Batch, phase: str = "full", adv: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """One objective of the 3-step algorithm, selected by ``phase``:

        ``discriminator`` (L_D, detached features), ``adversarial`` (L_adv − w_d·L_D), ``benign`` (w_b·L_ben) or
        ``full`` (w_b·L_ben + L_adv − w_d·L_D). Without ``adv`` the adversarial view is generated here."""
        p, q = batch["views"][:2]
        if phase == "benign":
            return self._encoder_loss(p, q, None, benign=True, adversarial=False)
        if adv is None:
            adv = self.generate_adversarial(batch)
        if phase == "discriminator":
            if self.discriminator is None:
                raise HybridCLError("phase 'discriminator' needs method_args.disc_weight > 0.")
            return self._discriminator_loss(q, adv)
        if phase == "adversarial":
            return self._encoder_loss(p, q, adv, benign=False, adversarial=True)
        if phase == "full":
            return self._encoder_loss(p, q, adv, benign=self.hparams["benign_weight"] > 0, adversarial=True)
        raise HybridCLError(f"unknown robustcl phase {phase!r}; use full, adversarial, benign or discriminator.")

    # ---------------------------------------------------------------------------------------- the 3 steps
    def optimization_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        hp, acc = self.hparams, ctx.accelerator
        logs: dict[str, float] = {}
        adv = self.generate_adversarial(batch)  # 1. attack (unwrapped: input gradients only)
        if self.discriminator is not None:  # 2. discriminator step
            logs["disc_lr"] = self._sync_disc_lr(ctx)
            self.disc_optimizer.zero_grad(set_to_none=True)  # drops D grads left by the encoder's − w_d·L_D
            d_loss, d_logs = ctx.wrapped(batch, phase="discriminator", adv=adv)
            logs.update(d_logs)
            if _all_finite(acc, d_loss):
                acc.backward(d_loss)
                self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)
        use_sam = hp["sam"] != "none" and hp["benign_weight"] > 0
        if use_sam:
            return self._sam_encoder_step(batch, adv, ctx, logs)
        loss, enc_logs = ctx.wrapped(batch, phase="full", adv=adv)  # 3. encoder step, one pass
        logs.update(enc_logs)
        logs["loss"] = float(loss.item())
        if _all_finite(acc, loss):
            acc.backward(loss)
            self._clip(ctx)
            ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        return logs

    def _sam_encoder_step(self, batch: Batch, adv: torch.Tensor, ctx: StepContext, logs: dict[str, float]) -> dict[str, float]:
        """3a-3c of METHODS.md 6c: store ∇(L_adv − w_d L_D) at w, (A)SAM on w_b·L_ben, add, step."""
        acc, hp = ctx.accelerator, self.hparams
        sam = SAM(ctx.optimizer, rho=hp["sam_rho"], adaptive=hp["sam"] == "asam")
        params = [p for _, p in self.optimizer_parameters()]
        # Every wrapped forward is followed by its own backward before the next forward: DDP's reducer pairs them.
        # a. the adversarial objective; clean running statistics are updated once, by the benign pass b
        with frozen_bn_stats(*branch_norms(self.model, "clean")):
            other, a_logs = ctx.wrapped(batch, phase="adversarial", adv=adv)
        logs.update(a_logs)
        if not _all_finite(acc, other):
            logs["loss"] = float("nan")
            ctx.optimizer.zero_grad(set_to_none=True)
            return logs
        acc.backward(other)
        stored = store_gradients(params)
        ctx.optimizer.zero_grad(set_to_none=True)
        # b. the benign objective at w (the weights have not moved yet), then move to w + e
        benign, b_logs = ctx.wrapped(batch, phase="benign")
        logs.update(b_logs)
        logs["loss"] = float(other.item() + benign.item())
        if not _all_finite(acc, benign):
            ctx.optimizer.zero_grad(set_to_none=True)
            return logs
        acc.backward(benign)
        sam.first_step(zero_grad=True)
        # c. the benign objective at w + e with BatchNorm statistics frozen; restore w, add the stored gradient
        with frozen_bn_stats(self.model):
            perturbed, _ = ctx.wrapped(batch, phase="benign")
        logs["l_ben_perturbed"] = float(perturbed.item()) / max(hp["benign_weight"], 1e-12)
        if _all_finite(acc, perturbed):
            acc.backward(perturbed)
            sam.restore()
            sam.add_gradients(stored)
            self._clip(ctx)
            ctx.optimizer.step()
        else:
            sam.restore()
            logs["loss"] = float("nan")
        ctx.optimizer.zero_grad(set_to_none=True)
        return logs

    def _sync_disc_lr(self, ctx: StepContext) -> float:
        """D's lr = disc_lr × the main schedule's current factor (warm-up + cosine, each with its own base lr)."""
        group = ctx.optimizer.param_groups[0]
        factor = group["lr"] / group["initial_lr"] if group.get("initial_lr") else 1.0
        lr = self.hparams["disc_lr"] * factor
        for g in self.disc_optimizer.param_groups:
            g["lr"] = lr
        return float(lr)

    def _clip(self, ctx: StepContext) -> None:
        if ctx.max_grad_norm:
            ctx.accelerator.clip_grad_norm_([p for _, p in self.optimizer_parameters()], float(ctx.max_grad_norm))

    # ------------------------------------------------------------------------------------------- export
    def export(self) -> HybridCLModel:
        """The encoder; with dual BatchNorm, a copy whose BN layers hold the ``export_bn_branch`` branch."""
        if not dual_bn_layers(self.model):
            return self.model
        plain = copy.deepcopy(self.model)
        convert_to_plain_bn(plain, self.hparams["export_bn_branch"])
        return plain

    def export_note(self) -> str:
        """What the exported weights are (for the model card / run directory)."""
        if self.num_dual_bn:
            branch = self.hparams["export_bn_branch"]
            why = (
                "the paper's robust linear probe (SLF/ALF and PGD-20) uses the adversarial branch"
                if branch == "adversarial" else "the clean branch gives the best clean accuracy"
            )
            return (
                f"Trained with dual BatchNorm ({self.num_dual_bn} layers, clean and adversarial branches). The exported "
                f"model holds the **{branch}** branch as plain BatchNorm2d ({why}); retrain or set "
                f"method_args.export_bn_branch={'clean' if branch == 'adversarial' else 'adversarial'} for the other."
            )
        return (
            "No dual BatchNorm: the backbone has no BatchNorm2d (e.g. a ViT, whose LayerNorm is per-sample and keeps "
            "no running statistics), so clean and adversarial inputs share every parameter."
        )

    def write_artifacts(self, run_dir: str) -> list[str]:
        path = os.path.join(run_dir, "robustcl_export.md")
        with open(path, "w") as handle:
            handle.write("# robustcl export\n\n" + self.export_note() + "\n")
        return [path]

    def extra_metrics(self, splits: Any, device: torch.device) -> dict[str, dict]:
        """Clean and robust accuracy of the exported encoder (SLF, optionally ALF) when ``robust_eval`` asks."""
        mode = self.hparams["robust_eval"]
        if mode == "none" or not splits.train.has_labels or not splits.test.has_labels:
            return {}
        from ..evaluate.robust import robust_evaluation

        probes = ["slf", "alf"] if mode == "slf+alf" else ["slf"]
        return robust_evaluation(self.export(), splits, {"probes": probes}, device)


def _all_finite(accelerator: Any, *losses: torch.Tensor) -> bool:
    """True on every process only if every loss is finite on every process."""
    ok = all(bool(torch.isfinite(loss.detach()).all()) for loss in losses)
    flag = torch.tensor([1.0 if ok else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)
