"""Method comparison on the embedded digits at equal budget: linear probe, kNN and, for classifiers, calibration.

For every arm (a named set of recipe overrides, e.g. a learning rate), method and seed this trains
``hybridcl train --method METHOD`` with the method's digits recipe (``<method>-digits.yaml``: same ViT, batch,
epochs and optimiser for every method) plus the arm's overrides, then reads the run's ``metrics.json`` (linear
probe and kNN on frozen features, and the same probes on a random-init twin). For the classifiers (``ce``, ``hdge``)
it also loads the exported folder with ``AutoModelForImageClassification`` and measures top-1 accuracy, ECE with 15
and 20 equal-width bins (HDGE/JEM use 20) and NLL from the softmax of the logits on the run's test split (the split
depends on ``train.seed``). ``--test-noise-std 0.03`` adds the HDGE paper's test-time Gaussian noise (in normalised
input space) instead of clean inputs.

    python scripts/compare_digits.py --output-dir /tmp/compare_digits --seeds 0 1 2 --jobs 2 \\
        --arm "lr1e-3:" --arm "lr3e-3:optim.lr=3e-3 optim.warmup_steps=10"

``genscl_kd`` is GenSCL with one-hot labels plus distillation from the CE run of the same arm and seed (the GenSCL
paper's "GenSCL + KD"); asking for it also trains ``ce``. Finished runs are reused (an interrupted run resumes from its last checkpoint). ``--jobs N`` trains N runs at once,
each with ``cpu_count // N`` threads. Writes ``<output-dir>/results.json`` and ``<output-dir>/results.md``: one
table per arm (mean ± sample std over seeds) and, per arm, the paired per-seed verdict of "METHOD beats SimCLR on
the linear probe" with the rule of ``scripts/reproduce.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import fmt_mean_std, machine_info, machine_markdown, paired_verdict  # noqa: E402

from hf_hybridcl.io_utils import atomic_write_json, atomic_write_text  # noqa: E402

CLASSIFIER_METHODS = ("ce", "hdge")
# A variant is a method with extra overrides; ``teacher`` names the run (same arm and seed) whose exported classifier
# becomes ``method_args.teacher``. genscl_kd is the GenSCL paper's "GenSCL + KD" row: one-hot labels (no mixing) plus
# the distillation term from a teacher, here the CE run of the same seed (its training is not part of the budget).
VARIANTS = {"genscl_kd": {"method": "genscl", "overrides": ["method_args.mix=none"], "teacher": "ce"}}
METHODS = ("simclr", "supcon", "genscl", "hdge", "ce", "moco", "genscl_kd")
REFERENCE = "simclr"


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``"NAME:key=value key=value"`` -> ``(NAME, [overrides])``; ``"NAME:"`` is the unchanged recipe."""
    name, sep, overrides = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--arm {text!r} must look like NAME:key=value ... (e.g. 'lr3e-3:optim.lr=3e-3')")
    return name.strip(), overrides.split()


def train_command(method: str, run_dir: str, seed: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "hf_hybridcl", "train", "--method", method, "--output-dir", run_dir,
            f"train.seed={seed}", "train.log_with=none", "train.save_every=50", *extra]


def train(method: str, run_dir: str, seed: int, extra: list[str], threads: int,
          teacher: concurrent.futures.Future | None = None, teacher_dir: str | None = None) -> float:
    """Train one run (skipped if its metrics exist); returns the wall-clock seconds (NaN when skipped).

    ``method`` may be a variant (:data:`VARIANTS`); its teacher run (``teacher_dir``, trained by the ``teacher``
    future) must finish first."""
    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        return float("nan")
    variant = VARIANTS.get(method)
    if variant is not None:
        extra = [*variant["overrides"], *extra]
        if variant.get("teacher"):
            if teacher is not None:
                teacher.result()
            extra.append(f"method_args.teacher={os.path.join(teacher_dir, 'model')}")
        method = variant["method"]
    cmd = train_command(method, run_dir, seed, extra)
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        cmd.append("--resume")  # an interrupted run: continue (or only export) from its last checkpoint
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    log_path = run_dir + ".log"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"training {method} (seed {seed}) failed with exit code {code}; its output is in {log_path}")
    return time.perf_counter() - start


@torch.no_grad()
def classifier_metrics(model_dir: str, recipe: dict, test_noise_std: float) -> dict[str, float]:
    """Accuracy, ECE (15 and 20 bins) and NLL of an exported classifier on the run's test split."""
    from transformers import AutoModelForImageClassification

    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate.calibration import classification_metrics
    from hf_hybridcl.evaluate.features import pixel_tensor, processor_for

    data = recipe["data"]
    splits = load_image_splits(data["dataset"], data["image_column"], data["label_column"], data["test_fraction"], recipe["train"]["seed"])
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    pixels = pixel_tensor(splits.test, processor_for(model))
    if test_noise_std > 0:
        pixels = pixels + test_noise_std * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    logits = torch.cat([model(pixel_values=pixels[i : i + 256]).logits.float() for i in range(0, len(pixels), 256)])
    metrics = classification_metrics(logits, splits.test.labels, (15, 20))
    return {"accuracy": metrics["accuracy"], "ece15": metrics["ece_15"], "ece20": metrics["ece_20"], "nll": metrics["nll"]}


def run_metrics(run_dir: str, method: str, test_noise_std: float) -> dict[str, float]:
    with open(os.path.join(run_dir, "recipe.yaml")) as handle:
        recipe = yaml.safe_load(handle)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        protocols = json.load(handle)["protocols"]
    out = {key: protocols[key]["value"] for key in ("linear_probe", "knn", "linear_probe_random_init") if key in protocols}
    if method in CLASSIFIER_METHODS:
        out.update(classifier_metrics(os.path.join(run_dir, "model"), recipe, test_noise_std))
    return out


COLUMNS = (("linear_probe", "linear probe"), ("knn", "kNN"), ("linear_probe_random_init", "linear probe, random-init twin"),
           ("accuracy", "classifier accuracy"), ("ece15", "ECE (15 bins)"), ("ece20", "ECE (20 bins)"), ("nll", "NLL"))


def summarize(results: dict[str, dict[str, dict[int, dict]]], seconds: dict[str, dict[str, list[float]]]) -> list[str]:
    """One markdown table per arm plus the paired verdicts against SimCLR's linear probe."""
    lines: list[str] = []
    for arm, per_method in results.items():
        lines += [f"### Arm `{arm}`", "",
                  "| method | seeds | " + " | ".join(title for _, title in COLUMNS) + " | train s / run |",
                  "|---|---|" + "---|" * len(COLUMNS) + "---|"]
        for method, per_seed in per_method.items():
            cells = [fmt_mean_std([m[key] for m in per_seed.values() if key in m], digits=3) for key, _ in COLUMNS]
            timed = [s for s in seconds[arm][method] if s == s]  # NaN = a reused run
            time_cell = f"{np.mean(timed):.0f}" if timed else "(reused)"
            lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(cells) + f" | {time_cell} |")
        if REFERENCE in per_method:
            lines += ["", f"Paired per-seed linear-probe difference against {REFERENCE} (same seeds, same splits):", ""]
            reference = per_method[REFERENCE]
            for method, per_seed in per_method.items():
                seeds = sorted(set(per_seed) & set(reference))
                if method == REFERENCE or not seeds:
                    continue
                verdict = paired_verdict([per_seed[s]["linear_probe"] for s in seeds], [reference[s]["linear_probe"] for s in seeds])
                lines.append(f"- {method} - {REFERENCE}: {verdict['mean_diff']:+.3f} ± {verdict['std_diff']:.3f} "
                             f"over {verdict['n']} seeds -> **{verdict['verdict']}** that {method} beats {REFERENCE}")
        lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the runs and results go (use /tmp, not the repo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--arm", dest="arms", type=parse_arm, action="append",
                        help="NAME:overrides, repeatable (default: one arm 'recipe' with the unchanged recipes)")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at once (each gets cpu_count // jobs threads)")
    parser.add_argument("--test-noise-std", type=float, default=0.0, help="HDGE paper protocol: 0.03; default clean inputs")
    args = parser.parse_args(argv)
    wanted = set(args.methods) | {VARIANTS[m]["teacher"] for m in args.methods if VARIANTS.get(m, {}).get("teacher")}
    args.methods = [m for m in METHODS if m in wanted]  # canonical order: teachers before their students
    arms = dict(args.arms or [("recipe", [])])
    if len(arms) != len(args.arms or [None]):
        parser.error("--arm names must be unique")
    os.makedirs(args.output_dir, exist_ok=True)
    machine = machine_info()
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    jobs = [(arm, method, seed) for arm in arms for method in args.methods for seed in args.seeds]
    run_dir = {job: os.path.join(args.output_dir, job[0], f"{job[1]}-seed{job[2]}") for job in jobs}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures: dict[tuple, concurrent.futures.Future] = {}
        for job in jobs:  # teachers come before their students in METHODS order, so no worker waits on a queued job
            arm, method, seed = job
            teacher_name = VARIANTS.get(method, {}).get("teacher")
            teacher_dir = os.path.join(args.output_dir, arm, f"{teacher_name}-seed{seed}") if teacher_name else None
            futures[job] = pool.submit(train, method, run_dir[job], seed, arms[arm], threads,
                                       futures.get((arm, teacher_name, seed)), teacher_dir)
        elapsed = {job: future.result() for job, future in futures.items()}
    results: dict[str, dict[str, dict[int, dict]]] = {arm: {m: {} for m in args.methods} for arm in arms}
    seconds: dict[str, dict[str, list[float]]] = {arm: {m: [] for m in args.methods} for arm in arms}
    for arm, method, seed in jobs:
        results[arm][method][seed] = run_metrics(run_dir[(arm, method, seed)], method, args.test_noise_std)
        seconds[arm][method].append(elapsed[(arm, method, seed)])
        print(arm, method, seed, json.dumps(results[arm][method][seed]), flush=True)
    document = {"results": results, "train_seconds": seconds, "machine": machine, "arms": arms,
                "test_noise_std": args.test_noise_std, "threads_per_run": threads, "jobs": args.jobs}
    atomic_write_json(os.path.join(args.output_dir, "results.json"), document)
    arm_lines = [f"- `{arm}`: " + (" ".join(f"`{o}`" for o in overrides) or "the unchanged digits recipes")
                 for arm, overrides in arms.items()]
    report = "\n".join(["## Machine", "", machine_markdown(machine), f"- {args.jobs} run(s) at once, {threads} thread(s) each",
                        "", "## Arms", "", *arm_lines, "", *summarize(results, seconds)])
    atomic_write_text(os.path.join(args.output_dir, "results.md"), report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
