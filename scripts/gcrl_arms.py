"""GCRL's three arms at equal budget on the embedded digits, plus linear-probe accuracy under corruptions.

Arms (METHODS.md 3j): generative only (``method_args.lambda_con=0``), contrastive only
(``method_args.use_decoder=false``), hybrid (recipe defaults). Each arm trains with ``hybridcl train --method gcrl``
(recipe ``gcrl-digits.yaml`` plus the same overrides for every arm); linear probe, kNN and test bits/dim come from
the run's ``metrics.json``. Robustness: a linear probe (hf_hybridcl.evaluate.linear_probe) is trained on the frozen
encoder's features of the *clean* training split and tested on the test split corrupted in [0, 1] pixel space with
``hf_hybridcl.evaluate.corruptions``: Gaussian noise sigma 0.1 and 0.2, Gaussian blur sigma 1.0 px, contrast x0.5.

    python scripts/gcrl_arms.py --out /tmp/gcrl_arms [--max-steps N] [--batch-size B] [--seed S] [key=value ...]

Existing finished runs in ``--out`` are reused (their metrics.json is read), so the script can be re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ARMS = {
    "generative_only": ["method_args.lambda_con=0"],
    "contrastive_only": ["method_args.use_decoder=false"],
    "hybrid": [],
}
# (name, corruption function in hf_hybridcl.evaluate.corruptions, parameter)
CORRUPTIONS = [
    ("gaussian_noise_0.1", "gaussian_noise", 0.1),
    ("gaussian_noise_0.2", "gaussian_noise", 0.2),
    ("gaussian_blur_1.0", "gaussian_blur", 1.0),
    ("contrast_0.5", "contrast", 0.5),
]


def train_arm(out_dir: str, arm: str, args, extra: list[str]) -> float:
    from hf_hybridcl.cli import main

    run_dir = os.path.join(out_dir, arm)
    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        return float("nan")
    argv = ["train", "--method", "gcrl", "--output-dir", run_dir]
    if args.max_steps:
        argv += ["--max-steps", str(args.max_steps)]
    if args.batch_size:
        argv += ["--batch-size", str(args.batch_size)]
    # options first: argparse cannot interleave them with the positional key=value overrides
    argv += ["train.log_with=none", f"train.seed={args.seed}", *ARMS[arm], *extra]
    start = time.perf_counter()
    code = main(argv)
    if code:
        raise SystemExit(f"arm {arm} failed with exit code {code}")
    return time.perf_counter() - start


def corruption_probe(run_dir: str, seed: int, linear_epochs: int) -> dict[str, float]:
    from hf_hybridcl import HybridCLModel
    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate import extract_features, linear_probe, pixel_tensor, processor_for
    from hf_hybridcl.evaluate import corruptions

    model = HybridCLModel.from_pretrained(os.path.join(run_dir, "model")).eval()
    splits = load_image_splits("digits", seed=seed)  # the split the trainer used (train.seed)
    processor = processor_for(model)
    mean, std = model.config.image_mean, model.config.image_std
    train_pixels, test_pixels = pixel_tensor(splits.train, processor), pixel_tensor(splits.test, processor)
    train_x = extract_features(model, train_pixels)
    train_y, test_y = np.asarray(splits.train.labels), np.asarray(splits.test.labels)
    results = {}
    test_sets = [("clean", test_pixels)]
    unit = corruptions.to_unit(test_pixels, mean, std)
    for name, fn, param in CORRUPTIONS:
        corrupted = getattr(corruptions, fn)(unit, param, seed=seed)
        test_sets.append((name, corruptions.from_unit(corrupted, mean, std)))
    for name, pixels in test_sets:
        # the probe is retrained from the same clean features and seed for each test set: the same probe each time
        probe = linear_probe(train_x, train_y, extract_features(model, pixels), test_y, epochs=linear_epochs, seed=seed)
        results[name] = probe["value"]
    results["mean_corrupted"] = float(np.mean([results[n] for n, _, _ in CORRUPTIONS]))
    return results


def markdown(rows: dict[str, dict]) -> str:
    names = ["clean"] + [n for n, _, _ in CORRUPTIONS] + ["mean_corrupted"]
    lines = [
        "| arm | linear probe | kNN | test bits/dim | likelihood | train s |",
        "|---|---|---|---|---|---|",
    ]
    for arm, row in rows.items():
        bpd = f"{row['bits_per_dim']:.4f}" if row["bits_per_dim"] is not None else "n/a"
        lines.append(
            f"| {arm} | {row['linear_probe']:.4f} | {row['knn']:.4f} | {bpd} | {row['likelihood']} | {row['train_seconds']} |"
        )
    lines += ["", "| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for arm, row in rows.items():
        lines.append(f"| {arm} | " + " | ".join(f"{row['corruptions'][n]:.4f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/gcrl_arms", help="parent folder of the three run directories")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per arm (default: the recipe's epochs)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--linear-epochs", type=int, default=100, help="epochs of the corruption probes")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides applied to every arm")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rows = {}
    for arm in args.arms.split(","):
        seconds = train_arm(args.out, arm, args, args.overrides)
        run_dir = os.path.join(args.out, arm)
        with open(os.path.join(run_dir, "metrics.json")) as handle:
            protocols = json.load(handle)["protocols"]
        bpd = protocols.get("bits_per_dim")
        rows[arm] = {
            "linear_probe": protocols["linear_probe"]["value"],
            "knn": protocols["knn"]["value"],
            "bits_per_dim": bpd["value"] if bpd else None,
            "likelihood": "conditional" if bpd and bpd["settings"]["gen_mask_ratio"] < 1 else ("unconditional" if bpd else "-"),
            "train_seconds": "reused" if seconds != seconds else f"{seconds:.0f}",
            "corruptions": corruption_probe(run_dir, args.seed, args.linear_epochs),
        }
        print(json.dumps({arm: rows[arm]}), flush=True)
    table = markdown(rows)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"argv": sys.argv, "rows": rows}, handle, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
