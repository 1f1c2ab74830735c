"""Issue 3: the training loop end to end: CLI run, exact resume after SIGKILL, bad input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel

from hf_hybridcl.cli import main as cli_main
from hf_hybridcl.train import FAULT_ENV
from tests.conftest import tiny_train_overrides


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "hf_hybridcl", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )


def test_four_steps_write_a_loadable_run(tmp_path):
    out = tmp_path / "run"
    assert cli_main(["train", "--method", "simclr", "--max-steps", "4", "--output-dir", str(out), *tiny_train_overrides()]) == 0
    for name in ("model/config.json", "model/model.safetensors", "model/preprocessor_config.json", "model/README.md",
                 "metrics.json", "recipe.yaml", "train_log.jsonl", "checkpoints/checkpoint_4"):
        assert (out / name).exists(), name
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]
    model = AutoModel.from_pretrained(out / "model")
    assert model.config.method == "simclr"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocols"]["linear_probe"]["settings"]["epochs"] == 5
    assert 0.0 <= metrics["protocols"]["knn"]["value"] <= 1.0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1]["loss"])


def test_resume_after_sigkill_matches_straight_run(tmp_path):
    """HDGE draws input noise from the global RNG and keeps a logit queue: both must come back exactly."""
    common = ["train", "--method", "hdge", "--max-steps", "8", *tiny_train_overrides(), "train.save_every=4",
              "method_args.queue_size=128"]
    straight = run_cli([*common, "--output-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run_cli([*common, "--output-dir", str(tmp_path / "resumed")], env={FAULT_ENV: "4"})
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL after step 4's checkpoint
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint_4").is_dir()
    assert not (tmp_path / "resumed" / "model").exists()  # nothing half-written
    resumed = run_cli([*common, "--output-dir", str(tmp_path / "resumed"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    state_a = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint_8" / "model.safetensors")
    state_b = load_file(tmp_path / "resumed" / "checkpoints" / "checkpoint_8" / "model.safetensors")
    assert any("queue" in k for k in state_a)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_existing_run_without_resume_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--max-steps", "2", "--output-dir", str(out), *tiny_train_overrides()]
    assert cli_main(args) == 0
    assert cli_main(args) == 2
    assert "--resume" in capsys.readouterr().err


def _one_line_error(capsys, args: list[str], *needles: str) -> None:
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_unknown_method(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--method", "nope", "--output-dir", str(tmp_path)], "unknown method", "simclr")


def test_unknown_dataset_offline(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--dataset", "someone/not-cached-dataset", "--output-dir", str(tmp_path / "r")],
                    "offline", "--dataset digits")


def test_unknown_override_key(capsys, tmp_path):
    _one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "r"), "optim.learning_rate=0.1"],
                    "optim.learning_rate", "lr")
    _one_line_error(capsys, ["train", "--output-dir", str(tmp_path / "r"), "method_args.temperature=0.1"],
                    "temperature", "tau")


def test_supervised_method_on_unlabelled_folder(capsys, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    _one_line_error(capsys, ["train", "--method", "supcon", "--dataset", str(folder), "--output-dir", str(tmp_path / "r"),
                             *tiny_train_overrides(16)], "label")


def test_unreadable_image_file(capsys, tmp_path):
    folder = tmp_path / "images"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8), mode="L").save(folder / label / f"{i}.png")
    (folder / "a" / "broken.png").write_bytes(b"this is not a png")
    _one_line_error(capsys, ["train", "--dataset", str(folder), "--output-dir", str(tmp_path / "r")], "broken.png", "unreadable")


def test_image_folder_with_mixed_modes_and_sizes_trains(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (folder / label).mkdir(parents=True)
        for i in range(20):
            size = int(rng.integers(6, 40))
            if i % 2:
                image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), mode="RGB")
            else:
                image = Image.fromarray(rng.integers(0, 255, (size, size + 3), dtype=np.uint8), mode="L")
            image.save(folder / label / f"{i}.png")
    out = tmp_path / "run"
    args = ["train", "--dataset", str(folder), "--max-steps", "2", "--output-dir", str(out), *tiny_train_overrides(16)]
    assert cli_main(args) == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "cats", "1": "dogs"}


def test_overrides_may_come_before_flags():
    from hf_hybridcl.cli import _build_parsers

    _, commands = _build_parsers()
    args = commands["train"].parse_intermixed_args(["train.batch_size=8", "--max-steps", "3", "optim.lr=0.1", "--method", "moco"])
    assert (args.max_steps, args.method, args.overrides) == (3, "moco", ["train.batch_size=8", "optim.lr=0.1"])


def test_scientific_notation_is_a_number_in_overrides_and_recipes(tmp_path):
    from hf_hybridcl.recipes import resolve_recipe

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text("method: simclr\noptim:\n  lr: 3e-4\n")
    recipe = resolve_recipe(None, str(recipe_file), None, {}, ["optim.weight_decay=1e-4"])
    assert recipe["optim"]["lr"] == 3e-4 and recipe["optim"]["weight_decay"] == 1e-4


def test_switching_backbone_drops_the_previous_backbone_kwargs():
    from hf_hybridcl.recipes import resolve_recipe

    recipe = resolve_recipe("simclr", None, None, {"model.backbone": "resnet18"}, ["model.cifar_stem=true"])
    assert recipe["model"]["backbone_kwargs"] == {}
    recipe = resolve_recipe("simclr", None, None, {}, ["model.backbone_kwargs.depth=3"])
    assert recipe["model"]["backbone_kwargs"]["depth"] == 3 and recipe["model"]["backbone_kwargs"]["patch_size"] == 4


def test_no_arguments_is_the_main_job():
    from hf_hybridcl.recipes import MAIN_JOB_RECIPE, resolve_recipe

    recipe = resolve_recipe(None, None, None, {}, [])
    assert (recipe["method"], recipe["_recipe_file"], recipe["data"]["dataset"]) == ("hdge", MAIN_JOB_RECIPE, "digits")
    assert resolve_recipe("hdge", None, None, {}, [])["_recipe_file"] == "hdge-digits.yaml"


def test_a_method_missing_part_of_the_contract_cannot_be_constructed(tiny_vit_config):
    from hf_hybridcl.methods.base import HybridMethod

    class Incomplete(HybridMethod):
        name = "incomplete"

        def build(self) -> None:
            pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(tiny_vit_config, {}, 0)


def test_persistent_workers_see_the_same_views_as_the_main_process(tmp_path):
    """7 steps over two epochs (5 batches of 256 per epoch): 2 persistent loader workers and no workers end with
    bit-identical weights, so the epoch reaches the workers through the sampler's keys."""
    from hf_hybridcl.data import EpochShuffleSampler

    sampler = EpochShuffleSampler(10, seed=3)
    sampler.set_epoch(2)
    assert sorted(sampler) == list(range(20, 30))  # keys carry the epoch: epoch * n + index
    weights = {}
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        args = ["train", "--method", "simclr", "--max-steps", "7", "--output-dir", str(out),
                *tiny_train_overrides(256), f"data.num_workers={workers}", "eval.protocols=[knn]"]
        assert cli_main(args) == 0
        weights[workers] = load_file(out / "model" / "model.safetensors")
    for key, value in weights[0].items():
        assert torch.equal(value, weights[2][key]), key
