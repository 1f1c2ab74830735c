"""Small-scale reproduction of each paper's central *relative* claim, written to ``benchmarks/REPRODUCTION.md``.

Every claim compares arms trained at equal budget (same data, backbone, batch unless the claim is about the batch,
epochs and optimiser) with ``hybridcl train`` (in-process ``hf_hybridcl.cli.main``) on the embedded digits and the
small ViT of the ``*-digits.yaml`` recipes, for several seeds (``train.seed=S``, which also draws the train/test
split), then evaluates them with the library's evaluation functions:

- ``hdge``   HDGE vs cross-entropy: accuracy, ECE (20 bins), NLL, OOD AUROC (max-softmax and log-sum-exp scores)
             on the shifted digits of ``hf_hybridcl.evaluate.ood`` (noise, inverted, mirrored, interpolated) and on
             real photo patches (``sample_patches``).
- ``gcrl``   generative only vs contrastive only vs hybrid (``scripts/gcrl_arms.py``'s arms): linear probe,
             linear-probe accuracy under corruptions (``gcrl_arms.corruption_probe``), test bits/dim.
- ``ebclr``  EBCLR (batch 128 and 16) vs SimCLR and MoCo v2 (batch 256, their recipes): linear probe after a few
             epochs.
- ``genscl`` GenSCL + Mixup/CutMix, + KD (teacher = the CE run of the same seed, trained in this script),
             + both, vs SupCon vs CE: linear probe.
- ``robust`` Robust CL arms (adversarial only, + benign SAM, + discriminator, full): clean and PGD-20 accuracy of
             an SLF linear head (``hf_hybridcl.evaluate.robust.robust_evaluation``).

Verdicts (``scripts/_common.py``): for "A beats B", per-seed differences d = A - B: reproduced if mean(d) > 2 std(d)
and mean(d) > 0, not reproduced if significantly the other way, otherwise inconclusive (one seed: inconclusive).
For "A is about as good as B": reproduced if |mean(d)| + 2 std(d) <= margin.

    python scripts/reproduce.py --seeds 3                    # digits, every claim (about 10-15 min per seed, 2 idle cores)
    python scripts/reproduce.py --quick --only hdge          # smoke run: 1 seed, 2 steps per arm
    python scripts/reproduce.py --full --dry-run             # the papers' CIFAR-10 settings for a GPU user: print commands
    python scripts/reproduce.py --full --only ebclr          # run them (needs CIFAR-10 from the Hugging Face hub)

Run folders go to ``--output-dir`` (default ``/tmp/hybridcl_reproduce``), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
if SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, SCRIPTS_DIR)

from _common import (  # noqa: E402
    equivalence_verdict,
    fmt_mean_std,
    machine_info,
    machine_markdown,
    mean_std,
    paired_verdict,
)

DEFAULT_OUTPUT_DIR = "/tmp/hybridcl_reproduce"
DEFAULT_REPORT = os.path.join(REPO_DIR, "benchmarks", "REPRODUCTION.md")
CLAIM_ORDER = ("hdge", "gcrl", "ebclr", "genscl", "robust")


# ------------------------------------------------------------------------------------------------ the arms
@dataclass
class Arm:
    """One training run of a claim. ``recipe`` is the digits/CIFAR recipe file *name stem* of the method."""

    name: str
    method: str
    overrides: list[str] = field(default_factory=list)
    batch_size: int | None = None  # None: the recipe's
    teacher_arm: str | None = None  # KD teacher = the model folder of this arm (same seed)
    cifar_recipe: str | None = None  # --full: recipe file; None = "<method>-cifar10.yaml"
    cifar_budget_from: str | None = None  # --full: copy model/views/optim/train of this recipe (equal budget)
    cifar_overrides: list[str] = field(default_factory=list)


@dataclass
class Claim:
    """A paper's relative claim: arms, default digits epochs, what the paper says and how it is judged."""

    key: str
    paper: str
    statement: str
    arms: list[Arm]
    epochs: int  # digits budget per arm (equal for all arms)
    cifar_epochs: int | None = None  # --full: None = each recipe's own epochs


ROBUST_EVAL_OFF = "method_args.robust_eval=none"  # evaluated once by this script, with the same settings per arm

CLAIMS: dict[str, Claim] = {
    "hdge": Claim(
        "hdge", "Liu & Abbeel 2020 (HDGE), METHODS.md 2g",
        "HDGE is more accurate than cross-entropy at equal budget, better calibrated, and its log-sum-exp (log p(x)) "
        "score separates in- from out-of-distribution data far better (Table 1, 2; CIFAR-10 WRN-28-10: 96.7 vs 95.8 "
        "accuracy, log p(x) AUROC .96 vs .46 on SVHN).",
        [Arm("ce", "ce", cifar_budget_from="hdge-cifar10.yaml"), Arm("hdge", "hdge")],
        epochs=30,
    ),
    "gcrl": Claim(
        "gcrl", "Kim, Kim & Lee 2021 (GCRL), METHODS.md 3a/3j (our variant: the paper's code is unavailable)",
        "The hybrid generative-contrastive model linear-probes better than generative-only pre-training, is more "
        "robust to corruptions than contrastive-only pre-training, and keeps the generative model's likelihood.",
        [Arm("generative_only", "gcrl", ["method_args.lambda_con=0"]),
         Arm("contrastive_only", "gcrl", ["method_args.use_decoder=false"]),
         Arm("hybrid", "gcrl")],
        epochs=10,
    ),
    "ebclr": Claim(
        "ebclr", "Kim & Ye 2022 (EBCLR), METHODS.md 4g",
        "After few epochs EBCLR's linear probe is far above SimCLR's and MoCo v2's (Fig. 1, CIFAR-10 ResNet-18 at 10 "
        "epochs: ~66 vs ~50 / ~48), and batch 16 is as good as batch 128 (30 vs 254 negatives).",
        [Arm("ebclr_b128", "ebclr", batch_size=128, cifar_overrides=[]),
         Arm("ebclr_b16", "ebclr", ["optim.lr=0.0005"], batch_size=16, cifar_overrides=["optim.lr=0.0001"]),
         Arm("simclr", "simclr", cifar_budget_from="ebclr-cifar10.yaml",
             cifar_overrides=["method_args.tau=0.1", "optim.name=adam", "optim.lr=0.0002", "train.batch_size=256"]),
         Arm("moco", "moco", cifar_budget_from="ebclr-cifar10.yaml",
             cifar_overrides=["optim.name=sgd", "optim.lr=0.03", "train.batch_size=256"])],
        epochs=10, cifar_epochs=10,
    ),
    "genscl": Claim(
        "genscl", "Kim, Chang & Park 2022 (GenSCL), METHODS.md 5g",
        "GenSCL with Mixup-CutMix and/or KD from a CE teacher linear-probes above SupCon, which is above CE (Table 1, "
        "CIFAR-10 ResNet-50: 97.6 (M-C + KD), 97.3 (M-C), 97.1 (KD), 96.0 (SupCon), 94.9 (CE)).",
        [Arm("ce", "ce"),
         Arm("supcon", "supcon"),
         Arm("genscl_mc", "genscl"),
         Arm("genscl_kd", "genscl", ["method_args.mix=none"], teacher_arm="ce"),
         Arm("genscl_mc_kd", "genscl", [], teacher_arm="ce")],
        epochs=30,
    ),
    "robust": Claim(
        "robust", "Tran et al. 2023 (Robust CL with theory guarantee), METHODS.md 6a/6h",
        "On top of adversarial contrastive learning, the benign loss under (A)SAM and the benign/adversarial "
        "discriminator each raise robust (PGD) accuracy of the linear probe, and the full method is best in robust "
        "and clean accuracy.",
        [Arm("adv_only", "robustcl", ["method_args.benign_weight=0", "method_args.disc_weight=0", ROBUST_EVAL_OFF]),
         Arm("adv_benign_sam", "robustcl", ["method_args.disc_weight=0", ROBUST_EVAL_OFF]),
         Arm("adv_disc", "robustcl", ["method_args.benign_weight=0", ROBUST_EVAL_OFF]),
         Arm("full", "robustcl", [ROBUST_EVAL_OFF])],
        epochs=10,
    ),
}

# (claim, metric, arm A, arm B, kind, higher_is_better, margin): "A beats B" (kind "better") or "A ~ B" ("equal")
VERDICTS: list[tuple[str, str, str, str, str, bool, float | None]] = [
    ("hdge", "accuracy", "hdge", "ce", "better", True, None),
    ("hdge", "ece20", "hdge", "ce", "better", False, None),
    ("hdge", "ood_energy_auroc", "hdge", "ce", "better", True, None),
    ("hdge", "ood_msp_auroc", "hdge", "ce", "better", True, None),
    ("gcrl", "linear_probe", "hybrid", "generative_only", "better", True, None),
    ("gcrl", "mean_corrupted", "hybrid", "contrastive_only", "better", True, None),
    ("gcrl", "bits_per_dim", "hybrid", "generative_only", "equal", False, 0.05),
    ("ebclr", "linear_probe", "ebclr_b128", "simclr", "better", True, None),
    ("ebclr", "linear_probe", "ebclr_b128", "moco", "better", True, None),
    ("ebclr", "linear_probe", "ebclr_b16", "ebclr_b128", "equal", True, 0.02),
    ("genscl", "linear_probe", "genscl_mc", "supcon", "better", True, None),
    ("genscl", "linear_probe", "genscl_kd", "supcon", "better", True, None),
    ("genscl", "linear_probe", "genscl_mc_kd", "supcon", "better", True, None),
    ("genscl", "linear_probe", "supcon", "ce", "better", True, None),
    ("robust", "pgd20_linf", "adv_benign_sam", "adv_only", "better", True, None),
    ("robust", "pgd20_linf", "adv_disc", "adv_only", "better", True, None),
    ("robust", "pgd20_linf", "full", "adv_only", "better", True, None),
    ("robust", "clean", "full", "adv_only", "better", True, None),
]

METRIC_LABELS = {
    "accuracy": "test accuracy", "ece20": "ECE (20 bins)", "nll": "NLL", "ood_energy_auroc": "OOD AUROC, log-sum-exp",
    "ood_msp_auroc": "OOD AUROC, max-softmax", "linear_probe": "linear probe", "knn": "kNN",
    "mean_corrupted": "probe acc. under corruptions (mean)", "bits_per_dim": "test bits/dim",
    "clean": "SLF clean acc.", "pgd20_linf": "SLF PGD-20 Linf acc.", "pgd20_l2": "SLF PGD-20 L2 acc.",
}
CLAIM_METRICS = {
    "hdge": ["accuracy", "ece20", "nll", "ood_energy_auroc", "ood_msp_auroc", "linear_probe"],
    "gcrl": ["linear_probe", "knn", "mean_corrupted", "bits_per_dim"],
    "ebclr": ["linear_probe", "knn"],
    "genscl": ["linear_probe", "knn"],
    "robust": ["clean", "pgd20_linf", "pgd20_l2"],
}


# ------------------------------------------------------------------------------------------------ training
def train_argv(claim: Claim, arm: Arm, seed: int, run_dir: str, budget: dict[str, Any], teacher_dir: str | None) -> list[str]:
    """The ``hybridcl train`` arguments of one digits arm (options first, then key=value overrides)."""
    argv = ["train", "--method", arm.method, "--output-dir", run_dir]
    if budget.get("max_steps"):
        argv += ["--max-steps", str(budget["max_steps"])]
    else:
        argv += ["--epochs", str(budget["epochs"])]
    if arm.batch_size:
        argv += ["--batch-size", str(arm.batch_size)]
    argv += [f"train.seed={seed}", "train.log_with=none", "train.save_every=100000", "eval.random_init_baseline=false",
             f"eval.linear_epochs={budget['linear_epochs']}"]
    if budget.get("num_workers"):  # augmentations in a worker process overlap with the step (same views either way)
        argv.append(f"data.num_workers={budget['num_workers']}")
    argv += list(arm.overrides)
    if teacher_dir:
        argv.append(f"method_args.teacher={teacher_dir}")
    return argv


def train_arm(argv: list[str], run_dir: str) -> float:
    """Train one arm in-process (skipped if the run already finished); returns the seconds it took (NaN if reused)."""
    from hf_hybridcl.cli import main as cli_main

    if os.path.exists(os.path.join(run_dir, "metrics.json")):
        return float("nan")
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        argv = argv + ["--resume"]
    print("$ hybridcl " + " ".join(shlex.quote(a) for a in argv), flush=True)
    start = time.perf_counter()
    code = cli_main(argv)
    if code:
        raise RuntimeError(f"training failed (exit {code}): hybridcl {' '.join(argv)}")
    return time.perf_counter() - start


# -------------------------------------------------------------------------------------------------- metrics
def _protocols(run_dir: str) -> dict:
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        return json.load(handle)["protocols"]


def probe_metrics(run_dir: str) -> dict[str, float]:
    protocols = _protocols(run_dir)
    return {"linear_probe": protocols["linear_probe"]["value"], "knn": protocols["knn"]["value"]}


def hdge_metrics(run_dir: str, seed: int) -> dict[str, float]:
    """Accuracy / ECE / NLL (``scripts/compare_digits.py``) and OOD AUROC of the exported classifier on its test split."""
    import numpy as np
    import torch
    import yaml
    from transformers import AutoModelForImageClassification

    import compare_digits
    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate import ood
    from hf_hybridcl.evaluate.features import extract_features, pixel_tensor, processor_for

    with open(os.path.join(run_dir, "recipe.yaml")) as handle:
        recipe = yaml.safe_load(handle)
    out = probe_metrics(run_dir)
    out.update(compare_digits.classifier_metrics(os.path.join(run_dir, "model"), recipe, 0.0))
    model = AutoModelForImageClassification.from_pretrained(os.path.join(run_dir, "model")).eval()
    processor = processor_for(model)
    splits = load_image_splits("digits", seed=seed)
    test = pixel_tensor(splits.test, processor)
    mean, std = model.config.image_mean, model.config.image_std

    def scores(pixels: torch.Tensor) -> dict[str, np.ndarray]:
        return ood.logit_scores(extract_features(model, pixels, kind="logits"))

    id_scores = scores(test)
    ood_scores = {name: scores(ood.shifted_pixels(test, name, mean, std, seed=seed)) for name in ood.SHIFTS}
    patches = ood.sample_patch_images(len(splits.test), model.config.num_channels, seed=seed)
    ood_scores["sample_patches"] = scores(processor(patches, return_tensors="pt")["pixel_values"])
    result = ood.ood_detection(id_scores, ood_scores, primary="energy")["values"]
    out["ood_energy_auroc"] = result["mean.energy.auroc"]
    out["ood_msp_auroc"] = result["mean.msp.auroc"]
    for name in ood_scores:
        out[f"ood.{name}.energy"] = result[f"{name}.energy.auroc"]
        out[f"ood.{name}.msp"] = result[f"{name}.msp.auroc"]
    return out


def gcrl_metrics(run_dir: str, seed: int, linear_epochs: int) -> dict[str, float]:
    """Probe, kNN, bits/dim (metrics.json) and probe accuracy under corruptions (``scripts/gcrl_arms.py``)."""
    import gcrl_arms

    protocols = _protocols(run_dir)
    out = probe_metrics(run_dir)
    bpd = protocols.get("bits_per_dim")
    out["bits_per_dim"] = bpd["value"] if bpd else float("nan")
    corr = gcrl_arms.corruption_probe(run_dir, seed, linear_epochs)
    out["mean_corrupted"] = corr["mean_corrupted"]
    out.update({f"corruption.{k}": v for k, v in corr.items()})
    return out


def robust_metrics(run_dir: str, seed: int, quick: bool) -> dict[str, float]:
    """SLF clean, PGD-20 L-inf and L2 accuracy (``hf_hybridcl.evaluate.robust.robust_evaluation``), no AutoAttack."""
    from hf_hybridcl import HybridCLModel
    from hf_hybridcl.data import load_image_splits
    from hf_hybridcl.evaluate.robust import robust_evaluation

    model = HybridCLModel.from_pretrained(os.path.join(run_dir, "model"))
    settings = {"probes": ["slf"], "autoattack": False, "seed": seed}
    if quick:
        settings.update({"slf_epochs": 5, "linf_steps": 2, "l2_steps": 2, "max_test_images": 64})
    results = robust_evaluation(model, load_image_splits("digits", seed=seed), settings, "cpu")
    out = {}
    for key, entry in results.items():
        if key.startswith("slf_") and isinstance(entry.get("value"), float):
            name = key[len("slf_"):]
            out["pgd20_linf" if name.endswith("_linf") else "pgd20_l2" if name.endswith("_l2") else name] = entry["value"]
    return out


def arm_metrics(claim: str, run_dir: str, seed: int, budget: dict[str, Any]) -> dict[str, float]:
    if claim == "hdge":
        return hdge_metrics(run_dir, seed)
    if claim == "gcrl":
        return gcrl_metrics(run_dir, seed, budget["linear_epochs"])
    if claim == "robust":
        return robust_metrics(run_dir, seed, budget.get("quick", False))
    if claim == "genscl":
        # CE is a classifier: its probe is on the same frozen encoder features as the contrastive arms
        return probe_metrics(run_dir)
    return probe_metrics(run_dir)


# -------------------------------------------------------------------------------------------------- verdicts
def claim_verdicts(claim: str, results: dict[str, dict[int, dict]]) -> list[dict]:
    """Apply every VERDICTS rule of ``claim`` to per-arm, per-seed metrics (seeds present in both arms)."""
    out = []
    for key, metric, arm_a, arm_b, kind, higher, margin in VERDICTS:
        if key != claim or arm_a not in results or arm_b not in results:
            continue
        seeds = sorted(set(results[arm_a]) & set(results[arm_b]))
        a = [results[arm_a][s].get(metric, float("nan")) for s in seeds]
        b = [results[arm_b][s].get(metric, float("nan")) for s in seeds]
        if any(isinstance(v, float) and math.isnan(v) for v in a + b) or not seeds:
            verdict = {"verdict": "inconclusive", "mean_diff": float("nan"), "std_diff": float("nan"), "n": len(seeds),
                       "note": "metric missing"}
        elif kind == "better":
            verdict = paired_verdict(a, b, higher_is_better=higher)
        else:
            verdict = equivalence_verdict(a, b, margin)
        if kind == "better":
            relation = f"{arm_a} {'>' if higher else '<'} {arm_b}"
        else:
            relation = f"{arm_a} ≈ {arm_b} (|diff| ≤ {margin})"
        out.append({"claim": claim, "metric": metric, "relation": relation, "kind": kind, **verdict})
    return out


# ---------------------------------------------------------------------------------------------- digits runs
SHARED_RUNS: dict[str, str] = {}  # identical training runs across claims -> their run folder


def budget_for(claim: Claim, args) -> dict[str, Any]:
    if args.quick:
        return {"max_steps": args.quick_steps, "epochs": None, "linear_epochs": 10, "quick": True}
    epochs = max(1, int(round(claim.epochs * args.epochs_scale)))
    return {"max_steps": None, "epochs": epochs, "linear_epochs": args.linear_epochs, "quick": False,
            "num_workers": args.num_workers}


def run_claim(claim: Claim, seeds: list[int], out_dir: str, args, log: Callable[[str], None]) -> dict:
    budget = budget_for(claim, args)
    results: dict[str, dict[int, dict]] = {arm.name: {} for arm in claim.arms}
    seconds: dict[str, list[float]] = {arm.name: [] for arm in claim.arms}
    commands: list[str] = []
    for seed in seeds:
        run_dirs: dict[str, str] = {}
        for arm in claim.arms:
            teacher = os.path.join(run_dirs[arm.teacher_arm], "model") if arm.teacher_arm else None
            # an identical run of another claim (e.g. the CE arm of hdge and genscl) is trained once and shared
            key = json.dumps([arm.method, arm.overrides, arm.batch_size, budget, seed, teacher])
            run_dir = SHARED_RUNS.get(key) or os.path.join(out_dir, claim.key, f"{arm.name}-seed{seed}")
            SHARED_RUNS[key] = run_dirs[arm.name] = run_dir
            argv = train_argv(claim, arm, seed, run_dir, budget, teacher)
            commands.append("hybridcl " + " ".join(shlex.quote(a) for a in argv))
            seconds[arm.name].append(train_arm(argv, run_dir))
            start = time.perf_counter()
            results[arm.name][seed] = arm_metrics(claim.key, run_dir, seed, budget)
            results[arm.name][seed]["eval_seconds"] = time.perf_counter() - start
            log(f"{claim.key}/{arm.name} seed {seed}: " + json.dumps(
                {k: round(v, 4) for k, v in results[arm.name][seed].items() if isinstance(v, float) and "." not in k}))
    return {"budget": budget, "results": results, "train_seconds": seconds, "verdicts": claim_verdicts(claim.key, results),
            "commands": commands}


# ----------------------------------------------------------------------------------------------- --full (CIFAR)
def _flatten(section: str, value: Any, prefix: str = "") -> list[str]:
    """``{"model": {"image_size": 32}}`` -> ``["model.image_size=32"]`` (dicts/lists as YAML flow)."""
    import yaml

    key = f"{prefix}{section}"
    if isinstance(value, dict) and key != "model.backbone_kwargs" and value:
        out = []
        for k, v in value.items():
            out += _flatten(k, v, f"{key}.")
        return out
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    text = text.removesuffix("...").strip()
    return [f"{key}={text}"]


def equal_budget_overrides(recipe_name: str) -> list[str]:
    """Overrides copying the model, views, optim, data and train sections of a packaged recipe (for a baseline arm
    that must run at the same budget as the claim's main method)."""
    from hf_hybridcl.recipes import load_yaml

    recipe = load_yaml(recipe_name)
    out: list[str] = []
    for section in ("data", "model", "views", "optim", "train"):
        if section in recipe:
            out += _flatten(section, recipe[section])
    return out


def full_commands(claims: list[str], seeds: list[int], out_dir: str) -> list[dict]:
    """The ``hybridcl train`` commands of the papers' CIFAR-10 settings (the ``*-cifar10.yaml`` recipes)."""
    from hf_hybridcl.recipes import find_recipe

    commands = []
    for key in claims:
        claim = CLAIMS[key]
        for seed in seeds:
            for arm in claim.arms:
                run_dir = os.path.join(out_dir, "cifar10", key, f"{arm.name}-seed{seed}")
                recipe = arm.cifar_recipe or f"{arm.method}-cifar10.yaml"
                argv = ["hybridcl", "train", "--method", arm.method]
                overrides: list[str] = []
                if arm.cifar_budget_from or not find_recipe(arm.method, "cifar10"):
                    source = arm.cifar_budget_from or "ebclr-cifar10.yaml"
                    argv += ["--dataset", "cifar10"]
                    method_recipe = find_recipe(arm.method, "cifar10")
                    if method_recipe:
                        argv += ["--recipe", os.path.basename(method_recipe)]
                    overrides += equal_budget_overrides(source)
                else:
                    argv += ["--recipe", recipe]
                argv += ["--output-dir", run_dir]
                overrides += [f"train.seed={seed}", *[o for o in arm.overrides if o != ROBUST_EVAL_OFF], *arm.cifar_overrides]
                # last, so they win over the copied sections (overrides apply in order, after the flags)
                if claim.cifar_epochs:
                    overrides.append(f"train.epochs={claim.cifar_epochs}")
                if arm.batch_size and key == "ebclr":
                    overrides.append(f"train.batch_size={arm.batch_size}")
                if arm.teacher_arm:
                    overrides.append(f"method_args.teacher={os.path.join(out_dir, 'cifar10', key, f'{arm.teacher_arm}-seed{seed}', 'model')}")
                commands.append({"claim": key, "arm": arm.name, "seed": seed, "argv": argv + overrides})
    return commands


def check_cifar_available() -> str | None:
    """None if CIFAR-10 loads through ``datasets``; otherwise a clear message of what to do."""
    try:
        from hf_hybridcl.data import load_image_splits

        load_image_splits("cifar10")
    except Exception as err:  # noqa: BLE001 - any failure means the full runs cannot start
        return (
            "--full trains on CIFAR-10 from the Hugging Face hub (datasets.load_dataset('cifar10')), which could not be "
            f"loaded here: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}\n"
            "Run --full on a machine with internet access (and a GPU: the recipes are the papers' 200-500 epoch "
            "settings), or cache the data set first: python -c \"import datasets; datasets.load_dataset('cifar10')\".\n"
            "Use --full --dry-run to print the commands, or run without --full for the digits reproduction."
        )
    return None


def run_full(args, claims: list[str], seeds: list[int]) -> int:
    commands = full_commands(claims, seeds, args.output_dir)
    if args.dry_run:
        for c in commands:
            print(" ".join(shlex.quote(a) for a in c["argv"]))
        return 0
    problem = check_cifar_available()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    import subprocess

    for c in commands:  # in order: a KD teacher (ce) is trained before the GenSCL arms that use it
        print("$ " + " ".join(shlex.quote(a) for a in c["argv"]), flush=True)
        if not os.path.exists(os.path.join(c["argv"][c["argv"].index("--output-dir") + 1], "metrics.json")):
            subprocess.run([sys.executable, "-m", "hf_hybridcl", *c["argv"][1:]], check=True)
    print(f"runs are in {args.output_dir}/cifar10; evaluate them with `hybridcl evaluate RUN_DIR`.")
    return 0


# ------------------------------------------------------------------------------------------------ the report
def render_report(doc: dict) -> str:
    minutes = doc.get("seconds", float("nan")) / 60
    took = f"in {minutes:.1f} min" if not math.isnan(minutes) else (
        "(report rendered with `--from-json` from the runs' reproduce.json; a run stopped before writing its own "
        "report has no total time)")
    lines = [
        "# Small-scale reproduction of the papers' relative claims",
        "",
        f"Written by `{doc['command']}` {took}. Every number is measured by that run "
        "(seeds " + ", ".join(map(str, doc["seeds"])) + "). These are *relative* checks at digits scale, not the papers' "
        "absolute numbers: a claim reproduced here is a sanity check of the direction, and one not reproduced "
        "at this scale says nothing about CIFAR-10 at the papers' budgets.",
        "",
        "## Protocol",
        "",
        "- Data: scikit-learn's handwritten digits (1,797 real 8x8 grayscale images, 10 classes) resized to 16x16; "
        "stratified 80/20 train/test split drawn by `train.seed` (so every seed has its own split; all arms of a seed "
        "share it).",
        "- Backbone: the digits recipes' ViT (`vit_tiny_patch16_224` with patch 4, embed 64, depth 2, 4 heads, MLP "
        "ratio 2), projection head 256 -> 64; each method's `hf_hybridcl/recipes/<method>-digits.yaml` for its "
        "settings (optimiser AdamW/Adam lr 1e-3, 20 warm-up steps, batch 256 unless stated).",
        "- Equal budget inside a claim: same epochs (below), same data and model; only the method (and the claim's "
        "variable, e.g. EBCLR's batch) differ.",
        f"- Linear probe: frozen encoder, pooled features standardised, Adam lr 1e-2, {doc['linear_epochs']} epochs, "
        "batch 256, cosine (`hf_hybridcl.evaluate.linear_probe`); kNN k=20. Robust claim: SLF head (SGD, 100 epochs on "
        "cached features) then PGD-20 L-inf eps 8/255 step 0.8/255 and L2-PGD eps 0.5 (`robust_evaluation`, no "
        "AutoAttack). HDGE claim: classifier outputs on clean test images; ECE with 20 bins; OOD = the test split "
        "transformed (Gaussian noise sigma 0.5, inverted, mirrored, pairwise interpolated; `hf_hybridcl.evaluate.ood`) and "
        "real photo patches (scikit-learn's sample images), AUROC averaged over the 5 sets.",
        "- Verdict rules: \"A beats B\": per-seed d = A - B (sign flipped where lower is better); **reproduced** if "
        "mean(d) > 0 and mean(d) > 2 std(d) (sample std over seeds), **not reproduced** if mean(d) < 0 and |mean(d)| "
        "> 2 std(d), else **inconclusive** (always with one seed). \"A ≈ B within m\": reproduced if |mean(d)| + 2 "
        "std(d) <= m, not reproduced if |mean(d)| > m and > 2 std(d), else inconclusive. With 2 or 3 seeds std(d) is "
        "a crude estimate: read a verdict together with the per-arm table.",
        "- Equal epochs means unequal optimiser steps where the batch differs: EBCLR at batch 16 takes 8x the steps of "
        "batch 128 (and SimCLR/MoCo at batch 256 half); at a few epochs this favours the smaller batch.",
        "",
        "## Machine",
        "",
        machine_markdown(doc["machine"]),
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in doc['load_end'])}",
        "",
        "## Verdicts",
        "",
        "Claims not run: " + (", ".join(f"`{c}`" for c in doc.get("requested", CLAIM_ORDER) if c not in doc["claims"]) or "none") + ".",
        "",
        "| claim | metric | relation tested | d: mean ± std (seeds; positive = the claimed direction) | verdict |",
        "|---|---|---|---|---|",
    ]
    for key in doc["claims"]:
        for v in doc["claims"][key]["verdicts"]:
            lines.append(
                f"| {key} | {METRIC_LABELS.get(v['metric'], v['metric'])} | {v['relation']} | "
                f"{v['mean_diff']:+.4f} ± {v['std_diff']:.4f} ({v['n']}) | **{v['verdict']}** |"
            )
    for key, data in doc["claims"].items():
        claim = CLAIMS[key]
        b = data["budget"]
        budget = f"{b['max_steps']} steps per arm (quick)" if b.get("max_steps") else f"{b['epochs']} epochs per arm"
        lines += ["", f"## {key}: {claim.paper}", "", f"Claim: {claim.statement}", "", f"Budget: {budget}; arms: "
                  + "; ".join(f"`{a.name}` = {a.method}"
                              + (f" batch {a.batch_size}" if a.batch_size else "")
                              + (f" {' '.join(o for o in a.overrides if o != ROBUST_EVAL_OFF)}" if [o for o in a.overrides if o != ROBUST_EVAL_OFF] else "")
                              + (f" + KD teacher = `{a.teacher_arm}` run of the same seed" if a.teacher_arm else "")
                              for a in claim.arms) + ".", ""]
        metrics = CLAIM_METRICS[key]
        lines += ["| arm | " + " | ".join(METRIC_LABELS[m] for m in metrics) + " | train s / seed |",
                  "|---" * (len(metrics) + 2) + "|"]
        for arm, per_seed in data["results"].items():
            cells = [fmt_mean_std([per_seed[s].get(m, float("nan")) for s in per_seed], 1.0, 4) for m in metrics]
            secs = [t for t in data["train_seconds"][arm] if not math.isnan(t)]
            lines.append(f"| {arm} | " + " | ".join(cells) + f" | {mean_std(secs)[0]:.0f} |" if secs else
                         f"| {arm} | " + " | ".join(cells) + " | reused |")
        extra = sorted({k for per_seed in data["results"].values() for m in per_seed.values() for k in m if "." in k})
        if extra:
            lines += ["", "Details (mean ± std over seeds):", "", "| arm | " + " | ".join(extra) + " |",
                      "|---" * (len(extra) + 1) + "|"]
            for arm, per_seed in data["results"].items():
                lines.append(f"| {arm} | " + " | ".join(fmt_mean_std([per_seed[s].get(k, float('nan')) for s in per_seed], 1.0, 3) for k in extra) + " |")
        lines += ["", "<details><summary>training commands</summary>", "", "```"] + data["commands"] + ["```", "", "</details>"]
    lines += ["", "## Paper-scale runs (GPU)", "",
              "`python scripts/reproduce.py --full --dry-run` prints the CIFAR-10 commands built from the "
              "`*-cifar10.yaml` recipes (baselines without their own CIFAR-10 recipe copy the model, views, optimiser and "
              "training sections of the claim's main recipe, so the arms stay at equal budget); without `--dry-run` "
              "it runs them and stops with a clear message when CIFAR-10 cannot be downloaded.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CLAIM_ORDER), help="comma-separated claims: " + ",".join(CLAIM_ORDER))
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--seed-list", default=None, help="explicit comma-separated seeds (overrides --seeds)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, --quick-steps steps per arm, short probes")
    parser.add_argument("--quick-steps", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the papers' CIFAR-10 settings (GPU, internet)")
    parser.add_argument("--dry-run", action="store_true", help="with --full: print the commands only")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every claim's digits epochs")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--num-workers", type=int, default=0, help="data.num_workers of every digits run (0: in-process)")
    parser.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help="run folders (keep them out of the repository)")
    parser.add_argument("--report", default=DEFAULT_REPORT, help="markdown report to write (atomically)")
    parser.add_argument("--from-json", default=None,
                        help="only render the report from reproduce.json file(s) of earlier (possibly stopped or partial "
                             "--only) runs, comma-separated; their claims are merged")
    args = parser.parse_args(argv)
    if args.dry_run and not args.full:
        parser.error("--dry-run only applies to --full")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    claims = [c for c in args.only.split(",") if c]
    unknown = sorted(set(claims) - set(CLAIMS))
    if unknown:
        print(f"error: unknown claims {unknown}; choose from {','.join(CLAIM_ORDER)}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(1 if args.quick else args.seeds))
    if args.full:
        return run_full(args, claims, seeds)
    if args.from_json:
        from hf_hybridcl.io_utils import atomic_write_text

        doc = None
        for path in args.from_json.split(","):  # parts of one reproduction run as separate processes (--only)
            with open(path) as handle:
                part = json.load(handle)
            for per_claim in part["claims"].values():  # JSON keys are strings: seeds back to int
                per_claim["results"] = {arm: {int(k): v for k, v in seeds_.items()} for arm, seeds_ in per_claim["results"].items()}
            if doc is None:
                doc = part
                continue
            doc["command"] += f" + {part['command']}"
            doc["claims"].update(part["claims"])
            doc["requested"] = sorted(set(doc.get("requested", [])) | set(part.get("requested", [])), key=CLAIM_ORDER.index)
            doc["seconds"] = max(doc.get("seconds", float("nan")), part.get("seconds", float("nan")))
            doc["load_end"] = part.get("load_end", doc.get("load_end"))
        doc["claims"] = {k: doc["claims"][k] for k in CLAIM_ORDER if k in doc["claims"]}
        doc.setdefault("seconds", float("nan"))
        doc.setdefault("load_end", [round(x, 2) for x in os.getloadavg()])
        atomic_write_text(args.report, render_report(doc))
        print(f"wrote {args.report} from {args.from_json}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from hf_hybridcl.io_utils import atomic_write_json, atomic_write_text

    start = time.perf_counter()
    info = machine_info()
    os.makedirs(args.output_dir, exist_ok=True)
    log_path = os.path.join(args.output_dir, "reproduce.log")

    def log(text: str) -> None:
        print(text, flush=True)
        with open(log_path, "a") as handle:
            handle.write(text + "\n")

    shown = " ".join(argv if argv is not None else sys.argv[1:])
    doc: dict[str, Any] = {"command": f"python scripts/reproduce.py {shown}".strip(), "machine": info, "seeds": seeds,
                           "linear_epochs": 10 if args.quick else args.linear_epochs, "claims": {},
                           "requested": [c for c in CLAIM_ORDER if c in claims]}
    for key in [c for c in CLAIM_ORDER if c in claims]:
        doc["claims"][key] = run_claim(CLAIMS[key], seeds, args.output_dir, args, log)
        atomic_write_json(os.path.join(args.output_dir, "reproduce.json"), doc)
    doc["seconds"] = time.perf_counter() - start
    doc["load_end"] = [round(x, 2) for x in os.getloadavg()]
    atomic_write_json(os.path.join(args.output_dir, "reproduce.json"), doc)
    atomic_write_text(args.report, render_report(doc))
    for key, data in doc["claims"].items():
        for v in data["verdicts"]:
            log(f"{key}: {v['metric']} {v['relation']}: {v['verdict']} (d = {v['mean_diff']:+.4f} ± {v['std_diff']:.4f})")
    log(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
