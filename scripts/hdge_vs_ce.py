"""HDGE vs cross-entropy on the embedded digits at equal budget, plus MoCo v2's linear probe.

For every seed this trains ``ce`` (recipe ce-digits.yaml), ``hdge`` (hdge-digits.yaml) and ``moco``
(moco-digits.yaml) with the ``hybridcl`` command, then measures each exported classifier on the digits test split
of its own run (the split depends on ``train.seed``): top-1 accuracy, ECE with 15 and 20 equal-width bins
(HDGE/JEM use 20) and NLL, from the softmax of the logits of clean test images prepared by the model's own image
processor. ``--test-noise-std 0.03`` adds the paper's test-time Gaussian noise (in normalised input space) instead.
The linear-probe accuracy of every run comes from its ``metrics.json``.

    python scripts/hdge_vs_ce.py --output-dir /tmp/hdge_vs_ce --seeds 0 1 2

Writes ``<output-dir>/results.json`` and ``<output-dir>/results.md`` (a markdown table with mean ± std).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import yaml

CLASSIFIER_METHODS = ("ce", "hdge")
METHODS = ("ce", "hdge", "moco")


def train_command(method: str, run_dir: str, seed: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "hf_hybridcl", "train", "--method", method, "--output-dir", run_dir,
            f"train.seed={seed}", "train.log_with=none", "train.save_every=50", *extra]


def train(method: str, run_dir: str, seed: int, extra: list[str]) -> float:
    """Train one run (skipped if its model folder exists); returns the wall-clock seconds."""
    if os.path.exists(os.path.join(run_dir, "model", "config.json")):
        return float("nan")
    cmd = train_command(method, run_dir, seed, extra)
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        cmd.append("--resume")  # an interrupted run: continue (or only export) from its last checkpoint
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


@torch.no_grad()
def classifier_metrics(model_dir: str, recipe: dict, test_noise_std: float) -> dict[str, float]:
    """Accuracy, ECE (15 and 20 bins) and NLL of an exported classifier on the run's test split."""
    from transformers import AutoModelForImageClassification

    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate.calibration import expected_calibration_error
    from hf_hybridcl.evaluate.features import pixel_tensor, processor_for

    data = recipe["data"]
    splits = load_image_splits(data["dataset"], data["image_column"], data["label_column"], data["test_fraction"], recipe["train"]["seed"])
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    pixels = pixel_tensor(splits.test, processor_for(model))
    if test_noise_std > 0:
        pixels = pixels + test_noise_std * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0))
    logits = torch.cat([model(pixel_values=pixels[i : i + 256]).logits.float() for i in range(0, len(pixels), 256)])
    labels = np.asarray(splits.test.labels)
    probs = torch.softmax(logits, dim=-1).numpy()
    return {
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "ece15": expected_calibration_error(probs, labels, n_bins=15),
        "ece20": expected_calibration_error(probs, labels, n_bins=20),
        "nll": float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels)).item()),
    }


def run_metrics(run_dir: str, method: str, test_noise_std: float) -> dict[str, float]:
    with open(os.path.join(run_dir, "recipe.yaml")) as handle:
        recipe = yaml.safe_load(handle)
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        protocols = json.load(handle)["protocols"]
    out = {"linear_probe": protocols["linear_probe"]["value"], "knn": protocols["knn"]["value"]}
    if method in CLASSIFIER_METHODS:
        out.update(classifier_metrics(os.path.join(run_dir, "model"), recipe, test_noise_std))
    return out


def summarize(results: dict[str, dict[int, dict]]) -> list[str]:
    keys = ["accuracy", "ece15", "ece20", "nll", "linear_probe", "knn"]
    lines = ["| method | seeds | test accuracy | ECE (15 bins) | ECE (20 bins) | NLL | linear probe | kNN |",
             "|---|---|---|---|---|---|---|---|"]
    for method, per_seed in results.items():
        cells = []
        for key in keys:
            values = [m[key] for m in per_seed.values() if key in m]
            cells.append(f"{np.mean(values):.4f} ± {np.std(values):.4f}" if values else "n/a")
        lines.append(f"| {method} | {len(per_seed)} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", required=True, help="where the runs and results go (use /tmp, not the repo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--test-noise-std", type=float, default=0.0, help="paper protocol: 0.03; default clean inputs")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every training run")
    args = parser.parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    results: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    seconds: dict[str, list[float]] = {m: [] for m in args.methods}
    for method in args.methods:  # method-major: the cheap classifiers of every seed first
        for seed in args.seeds:
            run_dir = os.path.join(args.output_dir, f"{method}-seed{seed}")
            seconds[method].append(train(method, run_dir, seed, args.overrides))
            results[method][seed] = run_metrics(run_dir, method, args.test_noise_std)
            print(method, seed, json.dumps(results[method][seed]), flush=True)
    from hf_hybridcl.evaluate.run import machine_description

    document = {"results": results, "train_seconds": seconds, "machine": machine_description(),
                "test_noise_std": args.test_noise_std, "overrides": args.overrides}
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(document, handle, indent=2)
    table = "\n".join(summarize(results))
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
