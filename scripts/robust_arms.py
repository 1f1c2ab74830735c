"""Train SimCLR, adversarial-only CL and the full robust CL method at equal budget on the embedded digits, then
evaluate each exported encoder with the robust protocol (SLF, optionally ALF; clean, PGD-20 L-inf, L2-PGD accuracy).

    python scripts/robust_arms.py --out /tmp/robust_arms --epochs 10 --batch-size 128 --probes slf,alf

Each arm is one ``hybridcl train`` run with the same model, data, optimiser, batch size and epochs; only the
method (and its method_args) differ. Writes ``<out>/results.json`` and ``<out>/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ARMS: dict[str, tuple[str, list[str]]] = {  # name -> (method, its overrides)
    "simclr": ("simclr", []),
    "adv_only": ("robustcl", ["method_args.benign_weight=0", "method_args.disc_weight=0"]),
    "full": ("robustcl", []),
}
TABLE_KEYS = ("clean", "pgd20_linf", "pgd20_l2", "autoattack")


def run_arm(name: str, args, common: tuple[list[str], list[str]]) -> dict:
    from hf_hybridcl.cli import main as cli_main
    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate.robust import robust_evaluation
    from hf_hybridcl.modeling_hybridcl import HybridCLModel

    out = os.path.join(args.out, name)
    model_dir = os.path.join(out, "model")
    start = time.perf_counter()
    if not os.path.isdir(model_dir):
        extra = []
        method, arm_overrides = ARMS[name]
        if method == "robustcl":  # the training attack; evaluation runs below, once, with the same settings
            extra = ["method_args.robust_eval=none", f"method_args.attack_steps={args.attack_steps}",
                     f"method_args.attack_step={args.attack_step / 255}"]
        flags, positional = common
        command = ["train", "--method", method, "--output-dir", out, *flags, *positional, *arm_overrides, *extra]
        print("hybridcl", " ".join(command), flush=True)
        if cli_main(command) != 0:
            raise SystemExit(f"arm {name} failed")
    train_seconds = time.perf_counter() - start
    model = HybridCLModel.from_pretrained(model_dir)
    settings = {"probes": args.probes.split(","), "alf_epochs": args.alf_epochs, "autoattack_max_images": args.autoattack_max}
    start = time.perf_counter()
    results = robust_evaluation(model, load_image_splits("digits"), settings, "cpu")
    return {"train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start, "protocols": results}


def markdown(all_results: dict, probes: list[str]) -> str:
    lines = []
    for probe in probes:
        lines += [f"### {probe.upper()}", "", "| arm | " + " | ".join(TABLE_KEYS) + " |", "|---" * (len(TABLE_KEYS) + 1) + "|"]
        for arm, res in all_results.items():
            cells = []
            for key in TABLE_KEYS:
                entry = res["protocols"].get(f"{probe}_{key}", {})
                value = entry.get("value")
                cells.append(f"{100 * value:.1f}" if isinstance(value, float) else "skipped")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/robust_arms")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--probes", default="slf", help="slf and/or alf, comma-separated")
    parser.add_argument("--attack-steps", type=int, default=7, help="training PGD steps (robustcl arms)")
    parser.add_argument("--attack-step", type=float, default=2.0, help="training PGD step size in 1/255 units")
    parser.add_argument("--alf-epochs", type=int, default=3)
    parser.add_argument("--autoattack-max", type=int, default=100, help="test images for AutoAttack (if installed)")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides for every arm")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    common = (["--epochs", str(args.epochs), "--batch-size", str(args.batch_size)],
              [f"train.seed={args.seed}", "train.log_with=none", "eval.random_init_baseline=false", *args.overrides])
    all_results = {}
    for name in args.arms.split(","):
        all_results[name] = run_arm(name, args, common)
        print(name, {k: v.get("value") for k, v in all_results[name]["protocols"].items()}, flush=True)
    import torch

    document = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "common_flags": common[0],
        "common_overrides": common[1],
        "arms": ARMS,
        "results": all_results,
    }
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(document, handle, indent=2)
    table = markdown(all_results, args.probes.split(","))
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
