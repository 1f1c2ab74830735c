"""Tests of scripts/benchmark.py and scripts/reproduce.py (plumbing on tiny settings, verdict rules, commands)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import _common  # noqa: E402


def _load(name: str):
    """A script of scripts/ as a module (the folder is on sys.path above)."""
    return importlib.import_module(name)


def test_quick_benchmark_writes_table(tmp_path):
    """A tiny quick benchmark in a fresh process (it forks for memory): table, columns, finite ratios, targets."""
    out, raw = tmp_path / "RESULTS.md", tmp_path / "results.json"
    cmd = [sys.executable, os.path.join(SCRIPTS, "benchmark.py"), "--quick", "--methods", "simclr,ce", "--batch", "8",
           "--repeats", "2", "--warmup", "1", "--loss-batches", "16,32", "--loss-repeats", "1", "--sgld-batches", "8",
           "--sgld-steps", "2", "--ebclr-batch", "8", "--references", "pytorch-metric-learning", "--memory-steps", "1", "--output", str(out), "--json", str(raw)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for needed in ("## Machine", "load average", "## Targets", "| method | images/step | step ms | bare ms | ratio (wall) |",
                   "| loss | batch N | implementation | value |", "ms per SGLD step", "EBCLR step"):
        assert needed in text, needed
    doc = json.loads(raw.read_text())
    rows = {r["method"]: r for r in doc["methods"]}
    assert set(rows) == {"simclr", "ce"}
    assert rows["simclr"]["images"] == 16 and rows["ce"]["images"] == 8  # two views vs one view of batch 8
    for row in rows.values():
        for clock in ("wall", "cpu"):
            assert math.isfinite(row[clock]["ratio"]) and row[clock]["ratio"] > 0
        assert math.isfinite(doc["memory"]["methods"][row["method"]]["delta_mb"])
    # every implementation computes the same NT-Xent / SupCon value
    ours = {(r["loss"], r["batch"]): r["value"] for r in doc["losses"] if r["impl"] == "ours"}
    for r in doc["losses"]:
        assert abs(r["value"] - ours[(r["loss"], r["batch"])]) <= 1e-5
    if importlib.util.find_spec("pytorch_metric_learning") is None:
        assert "`pytorch_metric_learning` **not installed**" in text
    else:  # the reference was compared at every batch
        assert {r["batch"] for r in doc["losses"] if r["impl"] == "pytorch-metric-learning"} == {16, 32}
    assert doc["sgld"][0]["param_grads_after_sgld"] == 0
    verdicts = [t["met"] for t in doc["targets"]]
    assert any(v is not None for v in verdicts)
    assert "simclr step <= 1.10x" in text and ("**met**" in text or "**not met**" in text)


def test_paired_verdict_rules():
    strong = _common.paired_verdict([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert strong["verdict"] == "reproduced" and strong["mean_diff"] > 0
    assert _common.paired_verdict([0.7, 0.71], [0.8, 0.8])["verdict"] == "not reproduced"
    assert _common.paired_verdict([0.8, 0.9], [0.85, 0.84])["verdict"] == "inconclusive"  # noisy
    assert _common.paired_verdict([0.99], [0.1])["verdict"] == "inconclusive"  # one seed: no std
    # lower is better (ECE): A lower than B in every seed
    assert _common.paired_verdict([0.01, 0.02], [0.10, 0.11], higher_is_better=False)["verdict"] == "reproduced"
    assert _common.equivalence_verdict([0.80, 0.81], [0.801, 0.808], margin=0.02)["verdict"] == "reproduced"
    assert _common.equivalence_verdict([0.60, 0.61], [0.80, 0.80], margin=0.02)["verdict"] == "not reproduced"
    with pytest.raises(ValueError):
        _common.paired_verdict([1.0], [1.0, 2.0])


def test_reproduce_quick_hdge_plumbing(tmp_path):
    """--quick --only hdge on 1 step per arm: both arms train, are evaluated, and the report has the verdicts."""
    reproduce = _load("reproduce")
    report = tmp_path / "REPRODUCTION.md"
    code = reproduce.main(["--quick", "--quick-steps", "1", "--only", "hdge", "--output-dir", str(tmp_path / "runs"),
                           "--report", str(report)])
    assert code == 0
    text = report.read_text()
    assert "## Verdicts" in text and "| hdge | test accuracy | hdge > ce |" in text
    assert "**inconclusive**" in text  # one seed can never decide
    doc = json.loads((tmp_path / "runs" / "reproduce.json").read_text())
    for arm in ("ce", "hdge"):
        metrics = doc["claims"]["hdge"]["results"][arm]["0"]
        for key in ("accuracy", "ece20", "ood_energy_auroc", "ood_msp_auroc", "linear_probe"):
            assert 0.0 <= metrics[key] <= 1.0 or key == "ece20" and metrics[key] >= 0.0
    assert "hybridcl train --method hdge" in text and "train.seed=0" in text
    # the report can be re-rendered from the JSON of a run (e.g. one stopped before its last claim)
    again = tmp_path / "again.md"
    assert reproduce.main(["--from-json", str(tmp_path / "runs" / "reproduce.json"), "--report", str(again)]) == 0
    assert "| hdge | test accuracy | hdge > ce |" in again.read_text()


def test_compare_digits_trains_measures_and_reports(tmp_path):
    """Tiny runs in one arm, 2 at once: SimCLR, the CE classifier and GenSCL + KD with that CE run as its teacher;
    probes, calibration, table, JSON."""
    from tests.conftest import tiny_train_overrides

    compare = _load("compare_digits")
    tiny = " ".join([*tiny_train_overrides(), "train.max_steps=2"])
    out = tmp_path / "cmp"
    assert compare.main(["--output-dir", str(out), "--methods", "simclr", "genscl_kd", "--jobs", "2", "--arm", f"tiny:{tiny}"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert list(doc["results"]["tiny"]) == ["simclr", "ce", "genscl_kd"]  # the teacher was added and trained first
    student = (out / "tiny" / "genscl_kd-seed0" / "recipe.yaml").read_text()
    assert "mix: none" in student and str(out / "tiny" / "ce-seed0" / "model") in student
    ce = doc["results"]["tiny"]["ce"]["0"]
    assert 0.0 <= ce["accuracy"] <= 1.0 and 0.0 <= ce["ece15"] <= 1.0 and ce["nll"] > 0.0
    assert "accuracy" not in doc["results"]["tiny"]["simclr"]["0"] and 0.0 <= doc["results"]["tiny"]["simclr"]["0"]["knn"] <= 1.0
    assert doc["threads_per_run"] == max(1, (os.cpu_count() or 1) // 2)
    text = (out / "results.md").read_text()
    assert "### Arm `tiny`" in text and "| ce | 1 |" in text and "**inconclusive** that ce beats simclr" in text
    # a second call reuses the finished runs instead of training again
    assert compare.main(["--output-dir", str(out), "--methods", "ce", "--arm", f"tiny:{tiny}"]) == 0
    assert "(reused)" in (out / "results.md").read_text()


def test_compare_digits_arms_and_verdicts():
    compare = _load("compare_digits")
    assert compare.parse_arm("lr3e-3:optim.lr=3e-3 optim.warmup_steps=10") == ("lr3e-3", ["optim.lr=3e-3", "optim.warmup_steps=10"])
    assert compare.parse_arm("recipe:") == ("recipe", [])
    with pytest.raises(Exception, match="NAME:key=value"):
        compare.parse_arm("optim.lr=3e-3")
    results = {"a": {"simclr": {0: {"linear_probe": 0.70}, 1: {"linear_probe": 0.71}, 2: {"linear_probe": 0.72}},
                     "supcon": {0: {"linear_probe": 0.80}, 1: {"linear_probe": 0.82}, 2: {"linear_probe": 0.81}},
                     "genscl": {0: {"linear_probe": 0.60}, 1: {"linear_probe": 0.61}, 2: {"linear_probe": 0.60}}}}
    seconds = {"a": {m: [1.0, 1.0, 1.0] for m in results["a"]}}
    text = "\n".join(compare.summarize(results, seconds))
    assert "**reproduced** that supcon beats simclr" in text
    assert "**not reproduced** that genscl beats simclr" in text
    assert "| supcon | 3 | 0.810 ± 0.010 |" in text


def test_full_commands_and_offline_message(capsys, monkeypatch):
    reproduce = _load("reproduce")
    commands = reproduce.full_commands(["ebclr", "genscl"], [0, 1], "/tmp/x")
    by = {(c["claim"], c["arm"], c["seed"]): c["argv"] for c in commands}
    ebclr = by[("ebclr", "ebclr_b128", 0)]
    assert "--recipe" in ebclr and ebclr[ebclr.index("--recipe") + 1] == "ebclr-cifar10.yaml"
    b16 = by[("ebclr", "ebclr_b16", 1)]
    assert b16[-1] == "train.batch_size=16" and "optim.lr=0.0001" in b16 and "train.seed=1" in b16
    simclr = by[("ebclr", "simclr", 0)]  # no simclr-cifar10 recipe: the EBCLR recipe's model and budget
    assert "--dataset" in simclr and "model.backbone=vit_tiny_patch16_224" in simclr and "train.epochs=200" in simclr
    assert [a for a in simclr if a.startswith("train.epochs=")][-1] == "train.epochs=10"  # the last one wins
    kd = by[("genscl", "genscl_kd", 0)]
    assert "method_args.teacher=/tmp/x/cifar10/genscl/ce-seed0/model" in kd and "method_args.mix=none" in kd
    assert [c["arm"] for c in commands if c["claim"] == "genscl" and c["seed"] == 0][0] == "ce"  # teacher first
    # the overrides parse as a recipe
    from hf_hybridcl.recipes import resolve_recipe

    overrides = [a for a in simclr if "=" in a]
    recipe = resolve_recipe("simclr", None, "cifar10", None, overrides)
    assert recipe["model"]["image_size"] == 32 and recipe["model"]["backbone_kwargs"]["embed_dim"] == 192
    assert recipe["train"]["epochs"] == 10 and recipe["train"]["batch_size"] == 256
    assert reproduce.main(["--full", "--dry-run", "--only", "robust", "--seeds", "1"]) == 0
    assert "robustcl-cifar10.yaml" in capsys.readouterr().out
    monkeypatch.setattr(reproduce, "check_cifar_available", lambda: "CIFAR-10 could not be loaded (offline)")
    assert reproduce.main(["--full", "--only", "hdge", "--seeds", "1"]) == 2
    assert "could not be loaded" in capsys.readouterr().err
