"""SupCon and GenSCL across 2 gloo processes: the averaged gradient equals the single-process global-batch gradient."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

N, D_IN, D_OUT, C, TAU, BASE_TAU = 8, 6, 5, 3, 0.2, 0.07


def _data():
    """Global batch: two views' inputs, labels, and (soft) label distributions per view."""
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(N, D_IN, generator=g), torch.randn(N, D_IN, generator=g)
    labels = torch.randint(0, C, (N,), generator=g)
    d1, d2 = F.softmax(torch.randn(N, C, generator=g) * 2, -1), F.softmax(torch.randn(N, C, generator=g) * 2, -1)
    return x1, x2, labels, d1, d2


def _layer() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(D_IN, D_OUT)


def _losses(layer, x1, x2, labels, d1, d2):
    from hf_hybridcl.losses import global_genscl
    from hf_hybridcl.losses import global_supcon

    z1, z2 = F.normalize(layer(x1), dim=-1), F.normalize(layer(x2), dim=-1)
    return {
        "supcon": lambda: global_supcon(z1, z2, labels, TAU, BASE_TAU),
        "genscl": lambda: global_genscl(z1, z2, d1, d2, TAU),
    }


def _worker():
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    x1, x2, labels, d1, d2 = _data()
    rows = slice(rank * N // world, (rank + 1) * N // world)
    out = {}
    for name in ("supcon", "genscl"):
        layer = _layer()
        loss = _losses(layer, x1[rows], x2[rows], labels[rows], d1[rows], d2[rows])[name]()
        loss.backward()
        for param in layer.parameters():  # what the data-parallel wrapper does: average the gradients
            dist.all_reduce(param.grad)
            param.grad /= world
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[name] = {"loss": mean_loss / world, **{n: p.grad for n, p in layer.named_parameters()}}
    torch.save(out, os.environ["HYBRIDCL_TEST_OUT"] + f".{rank}")


def test_two_process_supcon_and_genscl_gradients_equal_global_batch(tmp_path):
    from tests.conftest import launch_two_processes

    from hf_hybridcl.losses import genscl_loss, supcon_loss

    os.environ["HYBRIDCL_TEST_OUT"] = str(tmp_path / "grad")
    launch_two_processes(_worker)
    x1, x2, labels, d1, d2 = _data()
    for name in ("supcon", "genscl"):
        layer = _layer()
        z = F.normalize(layer(torch.cat([x1, x2])), dim=-1)
        if name == "supcon":  # single process, full batch, the shared loss over [v1; v2]
            loss = supcon_loss(z, labels.repeat(2), TAU, BASE_TAU)
        else:
            loss = genscl_loss(z, torch.cat([d1, d2]), TAU)
        loss.backward()
        assert layer.weight.grad.abs().sum() > 0
        for rank in range(2):
            got = torch.load(str(tmp_path / "grad") + f".{rank}")[name]
            assert torch.allclose(got["loss"], loss.detach(), atol=1e-6), (name, rank)
            for pname, param in layer.named_parameters():
                assert torch.allclose(got[pname], param.grad, atol=1e-5), (name, rank, pname)


def test_single_process_global_loss_is_the_plain_loss():
    """Without a process group the gather is the identity and the two-slice form equals the full-batch loss."""
    x1, x2, labels, d1, d2 = _data()
    layer = _layer()
    losses = _losses(layer, x1, x2, labels, d1, d2)
    from hf_hybridcl.losses import genscl_loss, supcon_loss

    z = F.normalize(layer(torch.cat([x1, x2])), dim=-1)
    assert torch.allclose(losses["supcon"](), supcon_loss(z, labels.repeat(2), TAU, BASE_TAU), atol=1e-6)
    assert torch.allclose(losses["genscl"](), genscl_loss(z, torch.cat([d1, d2]), TAU), atol=1e-6)
