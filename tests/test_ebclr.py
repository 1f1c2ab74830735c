"""EBCLR: loss terms against naive references, BatchNorm refusal, divergence guard, CLI training, export and exact
resume of the replay buffer (METHODS.md 4 and 8.2)."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from tests.conftest import tiny_train_overrides
from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.losses import nt_xent_loss
from hf_hybridcl.losses.ebclr import ebclr_generative_loss
from hf_hybridcl.methods.ebclr import EBCLR
from hf_hybridcl.losses import global_nt_xent


@pytest.mark.parametrize("n,d,tau", [(3, 4, 0.1), (8, 16, 0.5), (5, 2, 1.3)])
def test_sqdist_nt_xent_on_unit_vectors_equals_cosine_at_half_tau(n, d, tau):
    torch.manual_seed(n)
    z1, z2 = F.normalize(torch.randn(n, d), dim=-1), F.normalize(torch.randn(n, d), dim=-1)
    sq = global_nt_xent(z1, z2, tau, similarity="neg_sqdist")
    cos = nt_xent_loss(z1, z2, tau / 2, similarity="cosine")
    torch.testing.assert_close(sq, cos, rtol=1e-5, atol=1e-5)


def naive_generative_term(z1, z2, zs, tau):
    """Loop version of -mean_n log sum_m e^{-|z_n - z'_m|^2/tau} + mean_k log sum_m e^{-|z~_k - z'_m|^2/tau}."""
    def log_q(row, contrast):
        return math.log(sum(math.exp(-float(((row - c) ** 2).sum()) / tau) for c in contrast))

    data = sum(log_q(z1[i], z2) for i in range(len(z1))) / len(z1)
    model = sum(log_q(zs[k], z2) for k in range(len(zs))) / len(zs)
    return -data + model


@pytest.mark.parametrize("n,k,tau", [(4, 4, 0.1), (6, 3, 0.5)])
def test_generative_term_matches_naive_formula_and_stops_gradient(n, k, tau):
    torch.manual_seed(0)
    z1 = F.normalize(torch.randn(n, 5, dtype=torch.float64), dim=-1)
    z2 = F.normalize(torch.randn(n, 5, dtype=torch.float64), dim=-1).requires_grad_(True)
    zs = F.normalize(torch.randn(k, 5, dtype=torch.float64), dim=-1)
    loss = ebclr_generative_loss(z1, z2, zs, tau)
    assert abs(loss.item() - naive_generative_term(z1, z2.detach(), zs, tau)) < 1e-4
    # z' gets gradient from the data term only (the SGLD term uses sg(z'))
    (grad,) = torch.autograd.grad(loss, z2)
    z2b = z2.detach().clone().requires_grad_(True)
    data_only = -torch.logsumexp(-torch.cdist(z1.float(), z2b.float()).pow(2) / tau, dim=1).mean()
    (grad_ref,) = torch.autograd.grad(data_only, z2b)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-3, atol=1e-5)


def test_batchnorm_backbone_refused_unless_allowed():
    from hf_hybridcl import HybridCLConfig

    config = HybridCLConfig(backbone="resnet18", image_size=16, num_channels=1, cifar_stem=True,
                            proj_hidden_dim=16, proj_output_dim=8)
    with pytest.raises(HybridCLError, match="BatchNorm.*allow_batchnorm=true"):
        EBCLR(config, {"buffer_size": 16})
    method = EBCLR(config, {"buffer_size": 16, "allow_batchnorm": True})
    assert method.export() is method.model


def tiny_batch(n=8, seed=0):
    torch.manual_seed(seed)
    return {"views": [torch.rand(n, 1, 16, 16) * 2 - 1 for _ in range(2)], "labels": torch.zeros(n, dtype=torch.long),
            "index": torch.arange(n)}


def test_divergence_guard_restarts_slots_with_non_finite_samples(tiny_vit_config):
    method = EBCLR(tiny_vit_config, {"buffer_size": 8, "reinit_prob": 0.0, "sgld_steps": 2})
    method.buffer.fill(torch.full((8, 1, 16, 16), float("inf")), count=5)  # every chain starts broken
    batch = tiny_batch()
    loss, logs = method(batch)
    assert logs["sgld_diverged"] == 8.0
    assert torch.isfinite(loss)  # broken rows were replaced before the sample pass and left the loss
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)
    # every slot restarted from the proposal (this batch's first views), counter reset to 0
    assert torch.isfinite(method.buffer.samples).all()
    assert (method.buffer.counters == 0).all()
    stored = {tuple(method.buffer.samples[i].flatten().tolist()) for i in range(8)}
    assert stored == {tuple(v.flatten().tolist()) for v in batch["views"][0]}


def test_divergence_guard_restarts_slots_with_exploding_energy(tiny_vit_config):
    method = EBCLR(tiny_vit_config, {"buffer_size": 16, "sgld_steps": 1, "divergence_energy_threshold": 1e-9})
    loss, logs = method(tiny_batch())
    assert logs["sgld_diverged"] == 8.0 and torch.isfinite(loss)
    assert (method.buffer.counters[method.buffer.counters >= 0] == 0).all()
    _, logs = EBCLR(tiny_vit_config, {"buffer_size": 16, "sgld_steps": 1})(tiny_batch())
    assert logs["sgld_diverged"] == 0.0


def run_cli(out_dir, *extra) -> int:
    from hf_hybridcl.cli import main

    args = ["train", "--method", "ebclr", "--output-dir", str(out_dir), *extra, *tiny_train_overrides(16),
            "method_args.sgld_steps=2", "train.save_every=2", "eval.protocols=[knn]"]
    return main(args)


def read_state(checkpoint_dir):
    return load_file(os.path.join(checkpoint_dir, "model.safetensors"))


def test_cli_train_export_grid_and_exact_resume(tmp_path):
    from transformers import AutoModel

    straight = tmp_path / "straight"
    assert run_cli(straight, "--max-steps", "4") == 0
    model = AutoModel.from_pretrained(straight / "model")
    assert type(model).__name__ == "HybridCLModel" and model.config.method == "ebclr"
    grid = straight / "plots" / "ebclr_sgld_samples.png"
    assert grid.exists() and grid.stat().st_size > 100

    resumed = tmp_path / "resumed"
    assert run_cli(resumed, "--max-steps", "2") == 0
    saved = read_state(resumed / "checkpoints" / "checkpoint_2")
    assert (saved["buffer.counters"] >= 0).sum() > 0

    from hf_hybridcl.recipes import resolve_recipe
    from hf_hybridcl.train import Trainer

    overrides = tiny_train_overrides(16) + ["method_args.sgld_steps=2", "train.save_every=2", "eval.protocols=[knn]"]
    recipe = resolve_recipe("ebclr", None, None, {"train.max_steps": 4}, overrides)
    recipe.pop("_recipe_file")
    trainer = Trainer(recipe, str(resumed), resume=True)
    assert trainer.start_step == 2
    assert torch.equal(trainer.method.buffer.samples, saved["buffer.samples"])
    assert torch.equal(trainer.method.buffer.counters, saved["buffer.counters"])
    trainer.fit()

    a = read_state(straight / "checkpoints" / "checkpoint_4")
    b = read_state(resumed / "checkpoints" / "checkpoint_4")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
