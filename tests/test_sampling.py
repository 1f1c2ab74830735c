"""SGLD / MSGLD and the replay buffer (METHODS.md 8, invariants 5 and 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.sampling import ReplayBuffer, diverged_rows, msgld_noise_std, sgld_sample


class TinyEnergyNet(nn.Module):
    """A small conv net with dropout (so train/eval differ) whose energy is a smooth function of the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.head(self.drop(torch.tanh(self.conv(x))).flatten(1))


def lse_energy(net):
    return lambda x: -torch.logsumexp(net(x), dim=1)


def test_zero_step_zero_noise_returns_input():
    torch.manual_seed(0)
    net = TinyEnergyNet()
    x0 = torch.rand(5, 1, 8, 8) * 2 - 1
    out = sgld_sample(lse_energy(net), x0, steps=4, step_size=0.0, noise_std=0.0, grad_clamp=1.0, model=net)
    assert torch.equal(out, x0)
    assert not out.requires_grad


def test_gradient_clamp_bounds_each_step():
    x0 = torch.zeros(3, 1, 4, 4)
    energy = lambda x: -1000.0 * x.flatten(1).sum(1) + 500.0 * x.flatten(1).pow(2).sum(1)  # grad -1000 at 0
    clamped = sgld_sample(energy, x0, steps=1, step_size=0.5, noise_std=0.0, grad_clamp=0.1)
    torch.testing.assert_close(clamped, torch.full_like(x0, 0.05))  # ascent on -E: +0.5 * 0.1
    free = sgld_sample(energy, x0, steps=1, step_size=0.5, noise_std=0.0)
    torch.testing.assert_close(free, torch.full_like(x0, 500.0))
    several = sgld_sample(energy, x0, steps=7, step_size=0.5, noise_std=0.0, grad_clamp=0.1)
    assert (several - x0).abs().max() <= 7 * 0.5 * 0.1 + 1e-6


def test_pixel_clamp_bounds():
    x0 = torch.rand(4, 1, 4, 4) * 2 - 1
    energy = lambda x: -10.0 * x.flatten(1).sum(1)
    out = sgld_sample(energy, x0, steps=3, step_size=1.0, noise_std=0.5, pixel_clamp=(-1.0, 1.0))
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert (out == 1.0).float().mean() > 0.9  # the drift pushes (almost) everything to the upper bound
    unclamped = sgld_sample(energy, x0, steps=3, step_size=1.0, noise_std=0.5)
    assert unclamped.max() > 1.0


def test_msgld_noise_schedule():
    counts = torch.tensor([0, 1, 2, 3, 4, 50])
    sigma = msgld_noise_std(counts, sigma_min=0.01, sigma_max=0.05, decay_count=3)
    expected = torch.tensor([0.05, 0.05 - 0.04 / 3, 0.05 - 0.08 / 3, 0.01, 0.01, 0.01])
    torch.testing.assert_close(sigma, expected)
    # per-chain noise reaches each chain with its own std (zero drift)
    torch.manual_seed(1)
    x0 = torch.zeros(2, 1, 64, 64)
    out = sgld_sample(lambda x: x.flatten(1).sum(1) * 0.0, x0, steps=1, step_size=0.0, noise_std=torch.tensor([0.05, 0.01]))
    stds = out.flatten(1).std(1)
    assert abs(stds[0].item() - 0.05) < 0.004 and abs(stds[1].item() - 0.01) < 0.001


def test_no_parameter_gradient_created_or_changed():
    torch.manual_seed(0)
    net = TinyEnergyNet()
    preset = torch.full_like(net.head.weight, 3.0)
    net.head.weight.grad = preset.clone()
    x0 = torch.randn(4, 1, 8, 8)
    sgld_sample(lse_energy(net), x0, steps=3, step_size=0.1, noise_std=0.01, grad_clamp=1.0, model=net)
    assert all(p.requires_grad for p in net.parameters())
    assert net.conv.weight.grad is None and net.conv.bias.grad is None and net.head.bias.grad is None
    assert torch.equal(net.head.weight.grad, preset)


def test_parameters_frozen_while_sampling_and_flags_restored():
    """The forward passes of SGLD record no weight gradients; every parameter's own flag comes back, also on error."""
    from hf_hybridcl.input_gradients import frozen_parameters

    net = TinyEnergyNet()
    net.conv.bias.requires_grad_(False)  # a mixed state must come back exactly
    seen: list[bool] = []

    def energy(x):
        seen.append(any(p.requires_grad for p in net.parameters()))
        return -torch.logsumexp(net(x), dim=1)

    x0 = torch.randn(2, 1, 8, 8)
    out = sgld_sample(energy, x0, steps=2, step_size=0.1, noise_std=0.0, model=net)
    assert seen == [False, False] and not torch.equal(out, x0)  # the input still got its gradient
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]
    with pytest.raises(RuntimeError, match="boom"), frozen_parameters(net, None, net.head):
        raise RuntimeError("boom")
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]


def test_model_mode_switched_and_restored():
    net = TinyEnergyNet()
    net.train()
    net.drop.eval()  # a mixed state must come back exactly
    x0 = torch.randn(2, 1, 8, 8)
    sgld_sample(lse_energy(net), x0, steps=2, step_size=0.1, noise_std=0.0, model=net, mode="eval")
    assert net.seen_training == [False, False]
    assert net.training and not net.drop.training and net.conv.training
    net.seen_training.clear()
    net.eval()
    sgld_sample(lse_energy(net), x0, steps=1, step_size=0.1, noise_std=0.0, model=net, mode="train")
    assert net.seen_training == [True] and not net.training and not net.drop.training


def test_bad_energy_shape_is_a_clear_error():
    with pytest.raises(HybridCLError, match="one energy per sample"):
        sgld_sample(lambda x: x.sum(), torch.zeros(3, 2), steps=1, step_size=0.1, noise_std=0.0)


def test_diverged_rows():
    energy = torch.tensor([1.0, float("nan"), 5e5, -2.0, 0.5])
    samples = torch.zeros(5, 3)
    samples[4, 1] = float("inf")
    assert diverged_rows(energy, samples, threshold=1e4).tolist() == [False, True, True, False, True]


# ------------------------------------------------------------------------------------------------ replay buffer
def filled_buffer(capacity=64, reinit_prob=0.25, dtype="fp32", seed=0) -> ReplayBuffer:
    torch.manual_seed(seed)
    buf = ReplayBuffer(capacity, (1, 4, 4), storage_dtype=dtype, reinit_prob=reinit_prob, initial_count=5)
    for _ in range(3):
        draw = buf.draw(16, proposal=torch.rand(16, 1, 4, 4) * 2 - 1)
        buf.write(draw, draw.starts + 0.01 * torch.randn_like(draw.starts))
    return buf


def test_empty_slots_fill_from_proposal_with_initial_count():
    torch.manual_seed(0)
    buf = ReplayBuffer(8, (1, 2, 2), reinit_prob=0.0, initial_count=5)
    proposal = torch.randn(8, 1, 2, 2)
    draw = buf.draw(8, proposal=proposal)
    assert draw.filled.all() and not draw.reinit.any()
    torch.testing.assert_close(draw.starts, proposal)
    assert draw.counts.tolist() == [5] * 8
    buf.write(draw, draw.starts)
    assert buf.counters.tolist() == [6] * 8 and buf.num_filled == 8


def test_reinit_fraction_matches_rho_and_counters():
    torch.manual_seed(0)
    capacity, n, rho = 10000, 5000, 0.3
    buf = ReplayBuffer(capacity, (1, 2, 2), reinit_prob=rho, initial_count=5, reinit_count=0)
    buf.fill(torch.rand(capacity, 1, 2, 2) * 2 - 1)
    proposal = torch.full((n, 1, 2, 2), 7.0)
    draw = buf.draw(n, proposal=proposal)
    assert draw.indices.unique().numel() == n  # distinct slots: write-back is unambiguous
    frac = draw.reinit.float().mean().item()
    assert abs(frac - rho) < 4.5 * math.sqrt(rho * (1 - rho) / n)
    assert (draw.starts[draw.reinit] == 7.0).all() and (draw.starts[~draw.reinit] != 7.0).all()
    assert (draw.counts[draw.reinit] == 0).all() and (draw.counts[~draw.reinit] == 5).all()
    buf.write(draw, draw.starts)
    assert (buf.counters[draw.indices[draw.reinit]] == 1).all()
    assert (buf.counters[draw.indices[~draw.reinit]] == 6).all()


def test_state_dict_round_trip_is_exact():
    buf = filled_buffer(dtype="fp32")
    other = ReplayBuffer(64, (1, 4, 4), reinit_prob=0.25, initial_count=5)
    other.load_state_dict(buf.state_dict())
    assert torch.equal(other.samples, buf.samples) and torch.equal(other.counters, buf.counters)
    # same RNG state -> the same draws afterwards
    torch.manual_seed(3)
    a = buf.draw(16, torch.zeros(16, 1, 4, 4))
    torch.manual_seed(3)
    b = other.draw(16, torch.zeros(16, 1, 4, 4))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.starts, b.starts) and torch.equal(a.counts, b.counts)


def test_buffer_survives_an_accelerate_checkpoint_of_the_method(tmp_path, tiny_vit_config):
    from accelerate import Accelerator

    from hf_hybridcl.methods.ebclr import EBCLR

    torch.manual_seed(0)
    method = EBCLR(tiny_vit_config, {"buffer_size": 40, "buffer_dtype": "fp16", "sgld_steps": 1})
    acc = Accelerator(cpu=True)
    method = acc.prepare(method)
    views = [torch.rand(8, 1, 16, 16) * 2 - 1 for _ in range(2)]
    for _ in range(2):
        method({"views": views, "labels": torch.zeros(8, dtype=torch.long), "index": torch.arange(8)})
    acc.save_state(str(tmp_path / "ckpt"))
    acc2 = Accelerator(cpu=True)
    fresh = acc2.prepare(EBCLR(tiny_vit_config, {"buffer_size": 40, "buffer_dtype": "fp16", "sgld_steps": 1}))
    assert not torch.equal(fresh.buffer.counters, method.buffer.counters)
    acc2.load_state(str(tmp_path / "ckpt"))
    assert torch.equal(fresh.buffer.samples, method.buffer.samples)
    assert fresh.buffer.samples.dtype == torch.float16
    assert torch.equal(fresh.buffer.counters, method.buffer.counters)


@pytest.mark.parametrize("dtype,bound", [("fp32", 0.0), ("fp16", 2.0**-12), ("uint8", 1.0 / 255)])
def test_storage_round_trip_precision(dtype, bound):
    torch.manual_seed(0)
    buf = ReplayBuffer(1000, (1, 8, 8), storage_dtype=dtype)
    x = torch.rand(1000, 1, 8, 8) * 2 - 1
    x[0, 0, 0, :2] = torch.tensor([-1.0, 1.0])
    back = buf.decode(buf.encode(x))
    err = (back - x).abs().max().item()
    assert err <= bound + 1e-7
    if dtype == "uint8":
        assert err > 0.5 / 255  # really quantised to 256 levels
        assert back.unique().numel() <= 256
        clipped = buf.decode(buf.encode(torch.tensor([[-3.0, 2.5]])))
        assert clipped.tolist() == [[-1.0, 1.0]]


def test_bad_buffer_settings_are_clear_errors():
    with pytest.raises(HybridCLError, match="storage dtype"):
        ReplayBuffer(4, (1, 2, 2), storage_dtype="bf8")
    with pytest.raises(HybridCLError, match="reinit_prob"):
        ReplayBuffer(4, (1, 2, 2), reinit_prob=1.5)
    buf = ReplayBuffer(4, (1, 2, 2))
    with pytest.raises(HybridCLError, match="cannot draw 5 chains"):
        buf.draw(5)
    with pytest.raises(HybridCLError, match="proposal must have shape"):
        buf.draw(2, proposal=torch.zeros(2, 3, 2, 2))
