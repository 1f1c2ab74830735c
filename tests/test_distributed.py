"""Issue 3: negatives span all processes and two processes train like one process on the global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from tests.conftest import tiny_train_overrides


def _gradient_worker():
    """Runs in each of 2 gloo processes: local NT-Xent over the gathered batch, gradients all-reduced (averaged)."""
    import torch.distributed as dist
    from accelerate import PartialState

    from hf_hybridcl.losses import global_nt_xent

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    rows = slice(rank * 4, (rank + 1) * 4)
    z1 = torch.nn.functional.normalize(layer(x1[rows]), dim=-1)
    z2 = torch.nn.functional.normalize(layer(x2[rows]), dim=-1)
    loss = global_nt_xent(z1, z2, tau=0.3)
    loss.backward()
    for param in layer.parameters():
        dist.all_reduce(param.grad)
        param.grad /= world
    torch.save({n: p.grad for n, p in layer.named_parameters()}, os.environ["HYBRIDCL_TEST_OUT"] + f".{rank}")


def test_two_process_gradient_equals_global_batch(tmp_path):
    from tests.conftest import launch_two_processes

    from hf_hybridcl.losses import nt_xent_loss

    os.environ["HYBRIDCL_TEST_OUT"] = str(tmp_path / "grad")
    launch_two_processes(_gradient_worker)
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    x1, x2 = torch.randn(8, 6), torch.randn(8, 6)
    z1 = torch.nn.functional.normalize(layer(x1), dim=-1)
    z2 = torch.nn.functional.normalize(layer(x2), dim=-1)
    nt_xent_loss(z1, z2, tau=0.3).backward()
    for rank in range(2):
        grads = torch.load(str(tmp_path / "grad") + f".{rank}")
        for name, param in layer.named_parameters():
            assert torch.allclose(grads[name], param.grad, atol=1e-6), (rank, name)


def test_accelerate_launch_two_processes_matches_one(tmp_path):
    """`accelerate launch` with 2 gloo CPU processes trains, and ends where 1 process on the same global batch ends."""
    common = ["--method", "simclr", "--max-steps", "3", *tiny_train_overrides(32), "eval.linear_epochs=1"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_hybridcl.train",
    ]
    two = subprocess.run([*launch, *common, "--output-dir", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "hf_hybridcl.train", *common, "--output-dir", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    import json

    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["model"]["processes"] == 2
    assert (tmp_path / "two" / "checkpoints" / "checkpoint_3" / "random_states_1.pkl").exists()
    a = load_file(tmp_path / "two" / "model" / "model.safetensors")
    b = load_file(tmp_path / "one" / "model" / "model.safetensors")
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key


def test_accelerate_config_templates_parse():
    """Every template in accelerate_configs/ loads through Accelerate's own config parser."""
    import glob

    from accelerate.commands.config.config_args import load_config_from_file

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "accelerate_configs")
    files = sorted(glob.glob(os.path.join(root, "*.yaml")))
    assert {os.path.basename(f) for f in files} >= {
        "single_gpu.yaml", "multi_gpu.yaml", "multi_node.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "cpu_two_processes.yaml"
    }
    for path in files:
        config = load_config_from_file(path)
        assert config.num_processes >= 1, path


def test_robustcl_trains_with_two_processes(tmp_path):
    """robustcl's three passes (PGD on the unwrapped model, discriminator and encoder steps through the DDP wrapper,
    SAM's second pass) run under `accelerate launch` with 2 gloo CPU processes and export a loadable folder."""
    import json

    from transformers import AutoModel

    import hf_hybridcl  # noqa: F401 - registers the model type with the Auto classes

    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "hf_hybridcl.train",
    ]
    args = ["--method", "robustcl", "--max-steps", "2", *tiny_train_overrides(16), "method_args.attack_steps=2",
            "method_args.robust_eval=none", "method_args.disc_hidden=1", "train.log_every=1", "eval.protocols=[knn]",
            "--output-dir", str(tmp_path / "two")]
    run = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["model"]["processes"] == 2
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all("d_loss" in r and "l_ben_perturbed" in r and not r["skipped"] for r in log)
    assert AutoModel.from_pretrained(tmp_path / "two" / "model").config.method == "robustcl"
