"""JEM's L_px (HDGE + JEM, METHODS.md 2b/2c): the loss against a naive formula, the SGLD helper and the optional
``px_sgld_weight`` term of HDGE."""

from __future__ import annotations

import math

import torch

from hf_hybridcl.losses.jem import finish_jem_step, jem_px_loss, make_jem_buffer, sample_jem_sgld
from hf_hybridcl.methods.hdge import HDGE


def test_jem_px_loss_matches_naive_formula():
    torch.manual_seed(0)
    data, sgld = torch.randn(5, 4), torch.randn(3, 4) * 3
    lse = lambda row: math.log(sum(math.exp(float(v)) for v in row))
    naive = -(sum(lse(r) for r in data) / 5 - sum(lse(r) for r in sgld) / 3)
    assert abs(jem_px_loss(data, sgld).item() - naive) < 1e-5


def test_jem_sampler_raises_log_density_and_restarts_diverged_chains():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    buffer = make_jem_buffer((1, 4, 4), capacity=32)
    assert buffer.reinit_prob == 0.05
    result = sample_jem_sgld(net, buffer, 8, model=net, steps=5, step_size=0.1, noise_std=0.0)
    starts = result.draw.starts[result.rows]
    assert (starts.abs() <= 1).all()  # empty slots start from uniform noise in [-1, 1]
    lse = lambda x: torch.logsumexp(net(x), dim=1)
    assert (lse(result.samples) > lse(starts)).all()  # ascent on LSE_y f(x)[y] = -E(x)
    assert all(p.grad is None for p in net.parameters())
    logits = net(result.samples).detach()
    logits[2] = float("nan")
    assert finish_jem_step(buffer, result, logits, energy_threshold=1e8) == 1
    slots = result.draw.indices
    assert buffer.counters[slots[2]] == 0 and (buffer.counters[slots[[0, 1, 3]]] == 1).all()
    assert torch.equal(buffer.samples[slots[0]], result.samples[0])


def test_hdge_px_sgld_term_optional(tiny_vit_config):
    config = tiny_vit_config
    config.id2label = {i: str(i) for i in range(10)}
    config.num_labels = 10
    batch = {"views": [torch.rand(8, 1, 16, 16) * 2 - 1], "labels": torch.arange(8) % 10, "index": torch.arange(8)}
    plain = HDGE(config, {"queue_size": 8}, num_classes=10)
    assert not hasattr(plain, "px_buffer") and not any("px_buffer" in k for k in plain.state_dict())
    _, logs = plain(batch)
    assert "px" not in logs

    torch.manual_seed(0)
    method = HDGE(config, {"queue_size": 8, "px_sgld_weight": 1.0, "sgld_steps": 2, "sgld_buffer_size": 64}, num_classes=10)
    assert {"px_buffer.samples", "px_buffer.counters"} <= set(method.state_dict())
    loss, logs = method(batch)
    assert "px" in logs and logs["sgld_diverged"] == 0.0 and torch.isfinite(loss)
    expected = logs["ce"] + logs["contrast"] + logs["px"]
    assert abs(loss.item() - expected) < 1e-4
    assert method.px_buffer.num_filled == 8
    loss.backward()
    assert method.model.classifier.weight.grad is not None


def test_hdge_with_jem_term_trains_from_the_cli_and_exports(tmp_path):
    """`hybridcl train --method hdge method_args.px_sgld_weight=1` trains, checkpoints the JEM buffer, exports."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForImageClassification

    from hf_hybridcl.cli import main
    from tests.conftest import tiny_train_overrides

    out = tmp_path / "run"
    args = ["train", "--method", "hdge", "--max-steps", "2", "--output-dir", str(out), *tiny_train_overrides(),
            "method_args.queue_size=64", "method_args.px_sgld_weight=1.0", "method_args.sgld_steps=2",
            "method_args.sgld_buffer_size=64"]
    assert main(args) == 0
    state = load_file(out / "checkpoints" / "checkpoint_2" / "model.safetensors")
    assert any("buffer" in key for key in state), "the JEM replay buffer must be checkpointed with the method"
    assert AutoModel.from_pretrained(out / "model") is not None
    classifier = AutoModelForImageClassification.from_pretrained(out / "model").eval()
    assert classifier(pixel_values=torch.zeros(2, 1, 16, 16)).logits.shape == (2, 10)
