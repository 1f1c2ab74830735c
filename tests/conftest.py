"""Shared test settings: offline hub, an isolated HF_HOME, few threads, small fixtures.

Import helpers from test modules with `from tests.conftest import TINY_VIT, tiny_train_overrides`.
"""

from __future__ import annotations

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="hybridcl_test_hf_home_")
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": _HF_HOME,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_VIT = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0}


@pytest.fixture(scope="session")
def digits():
    """The embedded digits split (1437 train / 360 test, 10 classes)."""
    from hf_hybridcl.data import load_image_splits

    return load_image_splits("digits")


@pytest.fixture
def tiny_vit_config():
    """A tiny grayscale ViT config for fast tests (16x16 input, 16 tokens)."""
    from hf_hybridcl import HybridCLConfig

    return HybridCLConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY_VIT), image_size=16, num_channels=1,
        proj_hidden_dim=32, proj_output_dim=16,
    )


def tiny_train_overrides(batch_size: int = 32) -> list[str]:
    """CLI overrides that make a digits run take seconds."""
    return [
        f"train.batch_size={batch_size}",
        "model.backbone_kwargs.embed_dim=32",
        "model.backbone_kwargs.depth=1",
        "model.backbone_kwargs.num_heads=2",
        "model.proj_hidden_dim=32",
        "model.proj_output_dim=16",
        "train.log_with=none",
        "eval.linear_epochs=5",
        "eval.random_init_baseline=false",
    ]


@pytest.fixture(scope="session")
def simclr_run_template(tmp_path_factory):
    """One tiny trained SimCLR run (20 steps on the digits), trained once per session. Copy it before mutating."""
    from hf_hybridcl.cli import main

    out = str(tmp_path_factory.mktemp("simclr_run_template") / "run")
    assert main(["train", "--method", "simclr", "--max-steps", "20", "--output-dir", out, *tiny_train_overrides()]) == 0
    return out


def copy_run(template: str, tmp_path_factory, name: str) -> str:
    """A private copy of a trained run directory (evaluation and push write into it)."""
    import shutil

    out = str(tmp_path_factory.mktemp(name) / "run")
    shutil.copytree(template, out)
    return out


def launch_two_processes(fn, timeout: float = 300.0) -> None:
    """Run ``fn()`` in 2 forked gloo CPU processes on a free port (``accelerate.debug_launcher`` always binds
    port 29500, so two launches in one session can collide). ``fn`` builds ``PartialState(cpu=True)`` itself."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("fork")
    processes = []
    for rank in range(2):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "1"}
        process = ctx.Process(target=_two_process_child, args=(fn, env))
        process.start()
        processes.append(process)
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
    assert [p.exitcode for p in processes] == [0, 0], f"worker exit codes {[p.exitcode for p in processes]}"


def _two_process_child(fn, env: dict) -> None:
    os.environ.update(env)
    from accelerate.state import PartialState

    PartialState._reset_state()  # forked from a process whose in-process runs may have left a 1-process state
    fn()
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
