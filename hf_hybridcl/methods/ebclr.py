"""EBCLR (Kim & Ye 2022): energy-based contrastive learning, METHODS.md section 4.

The joint density of positive pairs is an EBM with energy ``||z - z'||^2 / tau`` on unit projections. Its
log-likelihood splits into a discriminative term (an NT-Xent loss whose similarity is the negative squared
distance) and a generative term for the marginal ``q(v)``, trained by contrastive divergence with SGLD samples from
a persistent replay buffer (eq. 4b, code ``libs/ebclr.py`` of the official repository). The loss minimised is

    L = NTXent_sqdist(z, z')
        + lambda * [ -mean_n log sum_m exp(-||z_n - z'_m||^2 / tau)
                     + mean_k log sum_m exp(-||z~_k - sg(z'_m)||^2 / tau)
                     + lambda_1 * (sum_n ||Z_n||^2 + sum_k ||Z~_k||^2) ]

with ``z = Z / ||Z||`` the unit projections of view 1, ``z'`` of view 2, ``z~`` of the SGLD samples and ``Z`` the
raw (un-normalised) projections (``lambda = gen_weight``, ``lambda_1 = proj_l2_weight``, as in the official code).
Samples come from multi-stage SGLD (sec. 4.2): 10 steps, step 0.05, gradient clamp 1.0, per-chain noise 0.05 -> 0.01
over the first 3 runs of a buffer slot, no pixel clipping, chains restarted with probability ``rho`` from augmented
data. With several processes the negatives, the marginal-energy sums and the buffer are global (same loss and
gradient as one process with the global batch; the SGLD noise differs).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError
from ..losses import gather_with_grad, global_nt_xent, rank_offset, world_size
from ..losses.ebclr import ebclr_generative_loss, ebclr_marginal_log_density
from ..modeling_hybridcl import HybridCLModel
from ..sampling import ReplayBuffer, diverged_rows, msgld_noise_std, sgld_sample
from .base import Batch, HybridMethod, TrainContext


class EBCLR(HybridMethod):
    name = "ebclr"
    description = "Energy-based contrastive learning: squared-distance NT-Xent + SGLD-trained marginal EBM."
    paper = "Kim & Ye 2022, Energy-Based Contrastive Learning of Visual Representations, NeurIPS 2022, arXiv:2202.04933"
    view_kind = "two_strong"
    default_hparams: dict[str, Any] = {
        "tau": 0.1,  # on the squared distance of unit vectors (= cosine temperature 0.05)
        "gen_weight": 0.1,  # lambda
        "proj_l2_weight": 0.001,  # lambda_1, on the summed squared raw projection norms
        "sgld_steps": 10,
        "sgld_step_size": 0.05,
        "sgld_grad_clamp": 1.0,
        "sgld_noise_min": 0.01,
        "sgld_noise_max": 0.05,
        "sgld_noise_decay_count": 3,  # K_th
        "sgld_pixel_clamp": False,  # True clamps samples to [-1, 1] after every step (the paper does not)
        "sgld_model_mode": "eval",  # eval | train | keep (no difference without dropout / drop-path)
        "buffer_size": 50000,  # capped at the training-set size
        "buffer_dtype": "fp32",  # fp32 | fp16 | uint8 (see sampling.replay for precision and memory)
        "buffer_initial_count": 5,
        "reinit_prob": 0.2,  # rho: 0.2 CIFAR, 0.4 MNIST-like, 0.6 Fashion-MNIST
        "proposal": "data",  # data (this batch's first views, augmented) | uniform (noise in [-1, 1])
        "divergence_energy_threshold": 1e4,  # |E| above this (or non-finite) restarts the chain's slot
        "allow_batchnorm": False,
        "sample_grid_size": 64,
    }

    # -- construction ----------------------------------------------------------------------------------------
    def build(self) -> None:
        hp = self.hparams
        self._check_hparams()
        self.model = HybridCLModel(self.model_config)
        if self.model.projection is None:
            raise HybridCLError("ebclr needs a projection head: set model.proj_num_layers >= 1.")
        batchnorms = [n for n, m in self.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batchnorms and not hp["allow_batchnorm"]:
            raise HybridCLError(
                f"ebclr: backbone {self.model_config.backbone!r} contains BatchNorm ({batchnorms[0]!r} and "
                f"{len(batchnorms) - 1} more). With BatchNorm the energy of an SGLD sample depends on the rest of its "
                f"batch, so SGLD and the marginal EBM are wrong. Use a ViT (LayerNorm is per-sample), a BatchNorm-free "
                f"CNN (e.g. model.backbone_kwargs.norm_layer=groupnorm1 for timm ResNets), or set "
                f"method_args.allow_batchnorm=true to train anyway."
            )
        self.buffer = self._make_buffer(int(hp["buffer_size"]))
        # the step's randomness (slots, re-inits, SGLD noise) comes from a generator seeded by (seed, step, rank):
        # both are checkpointed, so a resumed run samples exactly like a straight one
        self.register_buffer("rng_seed", torch.randint(0, 2**31 - 1, (), dtype=torch.long))
        self.register_buffer("rng_step", torch.zeros((), dtype=torch.long))

    def step_generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator for this step, seeded from the checkpointed seed, the step counter and the rank."""
        world = world_size()
        rank = rank_offset(1)
        seed = (int(self.rng_seed) * 1_000_003 + int(self.rng_step) * world + rank) % (2**63 - 1)
        self.rng_step += 1
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        return generator

    def _check_hparams(self) -> None:
        hp = self.hparams
        positive = ("tau", "sgld_step_size", "sgld_grad_clamp", "buffer_size")
        for key in positive:
            if not hp[key] > 0:
                raise HybridCLError(f"method_args.{key} must be > 0, got {hp[key]!r}.")
        for key in ("gen_weight", "proj_l2_weight", "sgld_noise_min", "sgld_noise_max", "sgld_steps"):
            if hp[key] < 0:
                raise HybridCLError(f"method_args.{key} must be >= 0, got {hp[key]!r}.")
        if hp["sgld_noise_min"] > hp["sgld_noise_max"]:
            raise HybridCLError("method_args.sgld_noise_min must not exceed sgld_noise_max.")
        if hp["proposal"] not in ("data", "uniform"):
            raise HybridCLError(f"method_args.proposal must be 'data' or 'uniform', got {hp['proposal']!r}.")
        if hp["sgld_model_mode"] not in ("eval", "train", "keep"):
            raise HybridCLError(f"method_args.sgld_model_mode must be eval, train or keep, got {hp['sgld_model_mode']!r}.")

    def _make_buffer(self, capacity: int) -> ReplayBuffer:
        hp, cfg = self.hparams, self.model_config
        return ReplayBuffer(
            capacity,
            (cfg.num_channels, cfg.image_size, cfg.image_size),
            storage_dtype=hp["buffer_dtype"],
            reinit_prob=float(hp["reinit_prob"]),
            initial_count=int(hp["buffer_initial_count"]),
            reinit_count=0,
        )

    def on_train_start(self, ctx: TrainContext) -> None:
        """Cap the buffer at the training-set size (runs before a checkpoint is loaded, so shapes match)."""
        capacity = min(int(self.hparams["buffer_size"]), len(ctx.train_dataset))
        batch = int(ctx.recipe["train"]["batch_size"])
        if capacity < batch:
            raise HybridCLError(
                f"ebclr: the replay buffer ({capacity} slots) is smaller than the batch ({batch}); raise "
                f"method_args.buffer_size or lower train.batch_size."
            )
        if capacity != self.buffer.capacity:
            self.buffer = self._make_buffer(capacity).to(self.buffer.samples.device)

    # -- training --------------------------------------------------------------------------------------------
    def project(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) projections ``Z = g(f(x))``: the L2 penalty needs them before normalisation."""
        _, pooled = self.model.encode(pixel_values)
        return self.model.projection(pooled)

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        hp = self.hparams
        tau = float(hp["tau"])
        v1, v2 = batch["views"][:2]
        n = v1.shape[0]
        raw = self.project(torch.cat([v1, v2], dim=0))
        raw1 = raw[:n]
        z1, z2 = F.normalize(raw.float(), dim=-1).chunk(2, dim=0)
        nt_xent = global_nt_xent(z1, z2, tau, similarity="neg_sqdist")
        z2_all = gather_with_grad(z2)  # the marginal energy sums over the global batch of second views
        log_q_data = ebclr_marginal_log_density(z1, z2_all, tau)

        generator = self.step_generator(v1.device)
        samples, draw, rows, proposal = self._sample(v1, z2_all.detach(), generator)
        bad_pixels = ~torch.isfinite(samples.flatten(1)).all(dim=1)
        fed = torch.where(bad_pixels.view(-1, 1, 1, 1), proposal, samples) if bad_pixels.any() else samples
        raw_s = self.project(fed)
        z_s = F.normalize(raw_s.float(), dim=-1)
        log_q_sgld = ebclr_marginal_log_density(z_s, z2_all.detach(), tau)

        # divergence guard: restart the slots of chains whose samples or energies blew up
        energy_s = -log_q_sgld.detach()
        diverged = diverged_rows(energy_s, samples, float(hp["divergence_energy_threshold"]))
        restarted = self.buffer.write_shared(draw, samples, diverged, proposal, generator)
        # rows with a finite but exploding energy leave the loss; a non-finite one makes the loss non-finite and the
        # loop skips the step (masking it would still put NaN into the parameter gradients)
        keep = ~(torch.isfinite(energy_s) & diverged)
        model_term = log_q_sgld[keep].mean() if keep.any() else log_q_sgld.sum() * 0.0
        gen = -log_q_data.mean() + model_term
        proj_l2 = (raw1.float().pow(2).sum() + raw_s.float().pow(2).sum()) * world_size()  # global sum under DDP
        loss = nt_xent + hp["gen_weight"] * (gen + hp["proj_l2_weight"] * proj_l2)
        logs = {
            "nt_xent": nt_xent.item(),
            "gen": gen.item(),
            "energy_data": -log_q_data.mean().item(),
            "energy_sgld": energy_s.mean().item(),
            "proj_l2": proj_l2.item() / max(1, world_size()),
            "sgld_diverged": float(restarted),
            "buffer_reinit": float(draw.reinit.sum().item()),
            "buffer_filled": self.buffer.num_filled / self.buffer.capacity,
        }
        return loss, logs

    def _sample(self, v1: torch.Tensor, contrast: torch.Tensor, generator: torch.Generator):
        """MSGLD from the replay buffer (sec. 4.2): draw starts, run the chains, return samples and bookkeeping."""
        hp = self.hparams
        n = v1.shape[0]
        proposal = v1.detach().float() if hp["proposal"] == "data" else self.buffer.uniform_proposal(n, generator)
        draw, rows = self.buffer.draw_shared(n, proposal, generator)
        sigma = msgld_noise_std(
            draw.counts[rows], float(hp["sgld_noise_min"]), float(hp["sgld_noise_max"]), float(hp["sgld_noise_decay_count"])
        )
        tau = float(hp["tau"])

        def energy(x: torch.Tensor) -> torch.Tensor:
            z = F.normalize(self.project(x).float(), dim=-1)
            return -ebclr_marginal_log_density(z, contrast, tau)

        samples = sgld_sample(
            energy,
            draw.starts[rows].to(v1.dtype),
            steps=int(hp["sgld_steps"]),
            step_size=float(hp["sgld_step_size"]),
            noise_std=sigma,
            grad_clamp=float(hp["sgld_grad_clamp"]),
            pixel_clamp=(-1.0, 1.0) if hp["sgld_pixel_clamp"] else None,
            model=self.model,
            mode=hp["sgld_model_mode"],
            generator=generator,
        )
        return samples, draw, rows, proposal

    def export(self) -> HybridCLModel:
        return self.model

    # -- artifacts -------------------------------------------------------------------------------------------
    def write_artifacts(self, run_dir: str) -> list[str]:
        """A PNG grid of the replay buffer's most-evolved chains (highest run counters), un-normalised to [0, 1]."""
        filled = torch.nonzero(self.buffer.counters >= 0).flatten()
        if filled.numel() == 0:
            return []
        order = torch.argsort(self.buffer.counters[filled], descending=True, stable=True)
        picked = filled[order[: int(self.hparams["sample_grid_size"])]]
        images = self.buffer.decode(self.buffer.samples[picked]).cpu()
        path = os.path.join(run_dir, "plots", "ebclr_sgld_samples.png")
        save_image_grid(images, self.model_config.image_mean, self.model_config.image_std, path)
        return [path]


def save_image_grid(images: torch.Tensor, mean: list[float], std: list[float], path: str, min_side: int = 32) -> None:
    """Un-normalise ``(B, C, H, W)`` images with the model's mean/std, clip to [0, 1] and save a square PNG grid
    (small images are enlarged with nearest-neighbour so each tile is at least ``min_side`` pixels)."""
    from PIL import Image
    from torchvision.utils import make_grid

    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = (torch.nan_to_num(images.float()) * std_t + mean_t).clamp(0.0, 1.0)
    scale = max(1, math.ceil(min_side / pixels.shape[-1]))
    if scale > 1:
        pixels = F.interpolate(pixels, scale_factor=scale, mode="nearest")
    grid = make_grid(pixels, nrow=max(1, math.ceil(math.sqrt(pixels.shape[0]))), padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype("uint8")
    if pixels.shape[1] == 1:  # make_grid repeats a single channel three times
        array = array[:, :, 0]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


__all__ = ["EBCLR", "HybridCLModel", "ebclr_generative_loss", "ebclr_marginal_log_density", "save_image_grid"]
