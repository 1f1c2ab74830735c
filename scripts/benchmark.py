"""Benchmarks of hf_hybridcl on this machine, written to ``benchmarks/RESULTS.md``.

1. Training-step cost of every method on the digits recipes' small ViT (16x16 grayscale, 4x4 patches, embed 64,
   depth 2) at a fixed batch, as a ratio to the *bare backbone step* on the same number of images: backbone
   forward (pooled features), a trivial loss (mean of squared features), backward and an AdamW step. Two-view
   methods are compared with a bare step on 2B images, one-view methods (ce, hdge) with one on B images. The bare
   step and the method step are timed alternately (pairs, repeats interleaved across methods) and the ratio is
   median(method) / median(bare) after warm-up, on the wall clock and on process CPU time.
2. Peak memory of a step: ``ru_maxrss`` growth of a forked child that builds the method and the batch, then runs
   a few steps (the child's ``maxrss`` starts at its size at the fork, so the growth is the step's peak extra
   resident memory: activations, gradients, optimiser state, samplers). The children fork from one fresh worker
   process that has run no parallel torch operation (a forked OpenMP pool hangs).
3. Our contrastive losses (``nt_xent_loss``, ``supcon_loss``) against ``pytorch_metric_learning.losses``
   (``NTXentLoss``, ``SupConLoss``) and ``lightly.loss.NTXentLoss``: value agreement and forward+backward time over
   batch sizes, plus peak memory per batch size (forked child, as in 2).
4. SGLD cost per step (``hf_hybridcl.sampling.sgld_sample`` on EBCLR's marginal energy) against one training pass,
   and the EBCLR step against its (2 + SGLD steps + 1)-pass floor (``scripts/bench_ebclr.py``).

    python scripts/benchmark.py            # full settings, several minutes
    python scripts/benchmark.py --quick    # under 2 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(SCRIPTS_DIR)
if SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, SCRIPTS_DIR)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import machine_info, machine_markdown, maxrss_mb, median, run_forked, time_call  # noqa: E402

ALL_METHODS = ("simclr", "supcon", "genscl", "moco", "hdge", "ce", "ebclr", "gcrl", "robustcl")
STEP_TARGET_METHODS = {"simclr": 1.10, "supcon": 1.10, "genscl": 1.10}
EBCLR_FLOOR_TARGET = 1.15
LOSS_TARGET_MIN_BATCH = 512
AGREEMENT_TOL = 1e-5
NTXENT_TAU, SUPCON_TAU, EMBED_DIM, NUM_CLASSES = 0.5, 0.1, 128, 10
DEFAULT_OUTPUT = os.path.join(REPO_DIR, "benchmarks", "RESULTS.md")


# ------------------------------------------------------------------------------------------- method steps
@dataclass
class StepBench:
    """One method's training step on a fixed batch, ready to call repeatedly."""

    name: str
    step: Callable[[], None]
    images: int  # images the step consumes from the batch (views x batch)
    config: Any


def _digits_context():
    """Digits splits and a single-process CPU accelerator (shared by every method of one process)."""
    from accelerate import Accelerator

    from hf_hybridcl.data import load_image_splits

    return load_image_splits("digits"), Accelerator(cpu=True)


class _SizedDataset:
    """Stands in for the training ViewDataset in ``on_train_start`` (only ``len`` is used)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def build_method_step(name: str, batch_size: int, splits, accelerator, seed: int = 0) -> StepBench:
    """The method of ``<name>-digits.yaml`` with its optimiser, and a closure running one full training step
    (forward, backward, optimiser step, scheduler and after-step hooks) on a fixed random batch."""
    from hf_hybridcl.methods import StepContext, TrainContext, get_method_class
    from hf_hybridcl.methods.base import HybridMethod
    from hf_hybridcl.recipes import resolve_recipe
    from hf_hybridcl.train import build_model_config, build_optimizer, build_scheduler

    torch.manual_seed(seed)
    recipe = resolve_recipe(name, None, "digits", {"train.batch_size": batch_size})
    cls = get_method_class(name)
    config = build_model_config(recipe, splits.num_classes, splits.class_names)
    method = cls(config, recipe["method_args"], splits.num_classes)
    method.on_train_start(TrainContext(accelerator, splits, _SizedDataset(len(splits.train)), recipe, None, 10_000))
    method.train()
    optimizer = build_optimizer(method, recipe["optim"])
    scheduler = build_scheduler(optimizer, recipe["optim"], 10_000)
    shape = (batch_size, config.num_channels, config.image_size, config.image_size)
    make = torch.randn if cls.normalize_views else torch.rand  # [0, 1] pixels for attack methods
    views = [make(shape), make(shape)]
    batch = {"views": views, "labels": torch.randint(0, splits.num_classes, (batch_size,)), "index": torch.arange(batch_size)}
    custom = type(method).optimization_step is not HybridMethod.optimization_step
    counter = {"step": 0}

    def step() -> None:
        if custom:
            method.optimization_step(batch, StepContext(accelerator, optimizer, scheduler, method, counter["step"], None))
        else:
            optimizer.zero_grad(set_to_none=True)
            loss, _ = method(batch)
            loss.backward()
            optimizer.step()
        scheduler.step()
        method.after_optimizer_step(counter["step"])
        counter["step"] += 1

    images = batch_size * (1 if cls.view_kind in ("one_standard", "one_strong", "plain") else 2)
    return StepBench(name, step, images, config)


def build_bare_step(config, images: int, seed: int = 0) -> Callable[[], None]:
    """Bare backbone step on ``images`` images: forward to the pooled features, mean of squares, backward, AdamW."""
    from hf_hybridcl import HybridCLModel

    torch.manual_seed(seed)
    backbone = HybridCLModel(config).backbone.train()
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(images, config.num_channels, config.image_size, config.image_size)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        pooled = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        pooled.float().pow(2).mean().backward()
        optimizer.step()

    return step


def bench_methods(methods: list[str], batch_size: int, repeats: int, warmup: int) -> list[dict]:
    """Interleaved timing of every method's step and its bare-backbone step (same images per step)."""
    splits, accelerator = _digits_context()
    benches = [build_method_step(m, batch_size, splits, accelerator) for m in methods]
    bare_steps: dict[int, Callable[[], None]] = {}
    for b in benches:
        if b.images not in bare_steps:
            bare_steps[b.images] = build_bare_step(b.config, b.images)
    times: dict[str, dict[str, list]] = {b.name: {"method": [], "bare": []} for b in benches}
    for r in range(warmup + repeats):
        for b in benches:  # pairs: bare then method, so both see the same machine load
            t_bare = time_call(bare_steps[b.images])
            t_method = time_call(b.step)
            if r >= warmup:
                times[b.name]["bare"].append(t_bare)
                times[b.name]["method"].append(t_method)
    rows = []
    for b in benches:
        row: dict[str, Any] = {"method": b.name, "images": b.images, "batch": batch_size}
        for i, clock in enumerate(("wall", "cpu")):
            t_m = median([t[i] for t in times[b.name]["method"]])
            t_b = median([t[i] for t in times[b.name]["bare"]])
            row[clock] = {"method_ms": 1e3 * t_m, "bare_ms": 1e3 * t_b, "ratio": t_m / t_b}
        row["images_per_s"] = b.images / row["wall"]["method_ms"] * 1e3
        row["bare_images_per_s"] = b.images / row["wall"]["bare_ms"] * 1e3
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------- losses
def available_references() -> dict[str, bool]:
    return {
        "pytorch_metric_learning": importlib.util.find_spec("pytorch_metric_learning") is not None,
        "lightly": importlib.util.find_spec("lightly") is not None,
    }


def loss_impls(references: tuple[str, ...] = ("pytorch-metric-learning", "lightly")) -> dict[str, dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]]:
    """``{loss: {implementation: fn(raw_embeddings (2N, D), labels (2N,), n) -> scalar}}``.

    Every implementation gets the same raw (un-normalised) embeddings: view 1 of all N images, then view 2.
    Ours normalises with ``F.normalize`` inside the timed call (the references normalise internally).
    Conventions matched so the same quantity is compared:
    - NT-Xent: temperature 0.5 on the cosine for all; pytorch-metric-learning gets label = image index (the two
      views of an image are its only positive pair; every other embedding is a negative; mean over the 2N
      positive pairs = mean over the 2N anchors); lightly gets (view 1, view 2) and averages over 2N anchors.
    - SupCon (L_out): temperature 0.1, base temperature = temperature (ours ``base_tau=None``; pytorch-metric-
      learning's SupConLoss has no base temperature), all 2N views are anchors, denominator over every other
      view, mean over anchors.
    """
    from hf_hybridcl.losses.contrastive import nt_xent_loss, supcon_loss

    def ours_ntxent(raw, labels, n):
        z = F.normalize(raw, dim=1)
        return nt_xent_loss(z[:n], z[n:], tau=NTXENT_TAU)

    def ours_supcon(raw, labels, n):
        return supcon_loss(F.normalize(raw, dim=1), labels, tau=SUPCON_TAU)

    impls: dict[str, dict[str, Callable]] = {"NT-Xent": {"ours": ours_ntxent}, "SupCon": {"ours": ours_supcon}}
    refs = available_references()
    if refs["pytorch_metric_learning"] and "pytorch-metric-learning" in references:
        from pytorch_metric_learning import losses as pml

        pml_nt, pml_sc = pml.NTXentLoss(temperature=NTXENT_TAU), pml.SupConLoss(temperature=SUPCON_TAU)
        impls["NT-Xent"]["pytorch-metric-learning"] = lambda raw, labels, n: pml_nt(raw, torch.arange(n).repeat(2))
        impls["SupCon"]["pytorch-metric-learning"] = lambda raw, labels, n: pml_sc(raw, labels)
    if refs["lightly"] and "lightly" in references:
        from lightly.loss import NTXentLoss as LightlyNTXent

        lightly_nt = LightlyNTXent(temperature=NTXENT_TAU)
        impls["NT-Xent"]["lightly"] = lambda raw, labels, n: lightly_nt(raw[:n], raw[n:])
    return impls


# pytorch-metric-learning's NTXentLoss materialises (positive pairs) x (negative pairs) for the 2N x (2N - 2)
# negatives of every anchor: memory and time grow as N^3 (measured here: batch 512 = 1,024 embeddings took ~17 GB
# and minutes). It is not run above this batch so the benchmark cannot exhaust a shared machine's memory.
REFERENCE_MAX_BATCH = {("NT-Xent", "pytorch-metric-learning"): 256}
REFERENCE_NAMES = {"NT-Xent": ("pytorch-metric-learning", "lightly"), "SupCon": ("pytorch-metric-learning",)}
REFERENCE_PACKAGE = {"pytorch-metric-learning": "pytorch_metric_learning", "lightly": "lightly"}


def loss_inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randn(2 * n, EMBED_DIM, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).repeat(2)
    return raw, labels


def bench_losses(batches: list[int], repeats: int, warmup: int, cap_s: float, references: tuple[str, ...]) -> list[dict]:
    """Values, gradient agreement and interleaved forward+backward times of every implementation per batch.

    An implementation whose single call exceeded ``cap_s`` seconds is not run at larger batches."""
    impls = loss_impls(references)
    slow: set[tuple[str, str]] = set()
    rows = []
    for n in batches:
        raw, labels = loss_inputs(n)
        for loss_name, per_impl in impls.items():
            active = {k: fn for k, fn in per_impl.items()
                      if (loss_name, k) not in slow and n <= REFERENCE_MAX_BATCH.get((loss_name, k), n)}
            values, grads, times = {}, {}, {k: [] for k in active}
            leaf = {k: raw.clone().requires_grad_(True) for k in active}

            def run(k: str) -> None:
                loss = active[k](leaf[k], labels, n)
                loss.backward()
                values[k] = float(loss.detach())
                grads[k] = leaf[k].grad
                leaf[k].grad = None

            for r in range(warmup + repeats):
                for k in active:
                    if (loss_name, k) in slow:
                        continue
                    t = time_call(lambda: run(k))
                    if r >= warmup or t[0] > cap_s:
                        times[k].append(t)
                    if t[0] > cap_s:
                        slow.add((loss_name, k))
            ours_value, ours_grad = values.get("ours"), grads.get("ours")
            for k in active:
                wall = median([t[0] for t in times[k]])
                cpu = median([t[1] for t in times[k]])
                rows.append({
                    "loss": loss_name, "batch": n, "embeddings": 2 * n, "impl": k, "value": values.get(k),
                    "abs_diff": abs(values[k] - ours_value) if ours_value is not None and k in values else None,
                    "grad_max_abs_diff": float((grads[k] - ours_grad).abs().max()) if k in grads and ours_grad is not None else None,
                    "wall_ms": 1e3 * wall, "cpu_ms": 1e3 * cpu, "samples": len(times[k]),
                    "capped": (loss_name, k) in slow,
                })
    return rows


def loss_time_ratios(rows: list[dict]) -> list[dict]:
    """Per (loss, batch): ours / fastest reference (wall and CPU), and the value check."""
    out = []
    keys = sorted({(r["loss"], r["batch"]) for r in rows}, key=lambda x: (x[0], x[1]))
    for loss_name, n in keys:
        group = {r["impl"]: r for r in rows if r["loss"] == loss_name and r["batch"] == n}
        refs = {k: r for k, r in group.items() if k != "ours"}
        if "ours" not in group or not refs:
            continue
        fastest = min(refs, key=lambda k: refs[k]["wall_ms"])
        fastest_cpu = min(refs, key=lambda k: refs[k]["cpu_ms"])
        max_diff = max(r["abs_diff"] for r in refs.values())
        out.append({
            "loss": loss_name, "batch": n, "fastest_ref": fastest, "ratio_wall": group["ours"]["wall_ms"] / refs[fastest]["wall_ms"],
            "ratio_cpu": group["ours"]["cpu_ms"] / refs[fastest_cpu]["cpu_ms"], "max_abs_diff": max_diff,
            "refs_measured": sorted(refs),
        })
    return out


# ---------------------------------------------------------------------------------------------------- SGLD
def bench_sgld(batches: list[int], steps: int, repeats: int, warmup: int) -> list[dict]:
    """``sgld_sample`` on EBCLR's marginal energy (digits ViT): cost per SGLD step vs one training pass
    (forward + backward to the parameters) on the same images; checks that SGLD leaves parameter grads alone."""
    from hf_hybridcl import HybridCLConfig
    from hf_hybridcl.losses.ebclr import ebclr_marginal_log_density
    from hf_hybridcl.methods.ebclr import EBCLR
    from hf_hybridcl.recipes import DEFAULT_RECIPE
    from hf_hybridcl.sampling import sgld_sample

    rows = []
    for n in batches:
        torch.manual_seed(0)
        config = HybridCLConfig(**{k: v for k, v in DEFAULT_RECIPE["model"].items() if v is not None})
        method = EBCLR(config, {"sgld_steps": steps, "buffer_size": max(1024, 4 * n)})
        method.train()
        x0 = torch.randn(n, config.num_channels, config.image_size, config.image_size)
        contrast = F.normalize(torch.randn(n, config.proj_output_dim), dim=1)

        def energy(x: torch.Tensor) -> torch.Tensor:
            return -ebclr_marginal_log_density(F.normalize(method.project(x).float(), dim=-1), contrast, 0.1)

        def sample() -> None:
            sgld_sample(energy, x0, steps=steps, step_size=0.05, noise_std=0.01, grad_clamp=1.0, model=method.model)

        def train_pass() -> None:
            method.zero_grad(set_to_none=True)
            method.project(x0).float().pow(2).sum().backward()

        sgld_t, pass_t = [], []
        for r in range(warmup + repeats):
            a, b = time_call(train_pass), time_call(sample)
            if r >= warmup:
                pass_t.append(a)
                sgld_t.append(b)
        method.zero_grad(set_to_none=True)
        sample()
        touched = [name for name, p in method.named_parameters() if p.grad is not None]
        row: dict[str, Any] = {"batch": n, "sgld_steps": steps, "param_grads_after_sgld": len(touched)}
        for i, clock in enumerate(("wall", "cpu")):
            per_step = median([t[i] for t in sgld_t]) / steps
            one_pass = median([t[i] for t in pass_t])
            row[clock] = {"sgld_step_ms": 1e3 * per_step, "pass_ms": 1e3 * one_pass, "ratio": per_step / one_pass}
        rows.append(row)
    return rows


def bench_ebclr_floor(batch: int, repeats: int, warmup: int, sgld_steps: int = 10) -> dict:
    """The EBCLR step vs its (2 + sgld_steps + 1)-pass floor, by ``scripts/bench_ebclr.py``'s own function."""
    import bench_ebclr

    return bench_ebclr.bench("digits-vit", batch, sgld_steps, repeats, warmup)


# -------------------------------------------------------------------------------------------------- memory
def _memory_method(name: str, batch_size: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    splits, accelerator = _digits_context()
    bench = build_method_step(name, batch_size, splits, accelerator)
    before = maxrss_mb()
    for _ in range(steps):
        bench.step()
    return {"delta_mb": maxrss_mb() - before, "images": bench.images}


def _memory_bare(images: int, steps: int, threads: int) -> dict:
    from hf_hybridcl import HybridCLConfig
    from hf_hybridcl.recipes import DEFAULT_RECIPE

    torch.set_num_threads(threads)
    config = HybridCLConfig(**{k: v for k, v in DEFAULT_RECIPE["model"].items() if v is not None})
    step = build_bare_step(config, images)
    before = maxrss_mb()
    for _ in range(steps):
        step()
    return {"delta_mb": maxrss_mb() - before, "images": images}


def _memory_loss(fn: Callable, n: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    raw, labels = loss_inputs(n)
    raw.requires_grad_(True)
    before = maxrss_mb()
    fn(raw, labels, n).backward()
    return {"delta_mb": maxrss_mb() - before}


def memory_worker(spec: dict) -> dict:
    """Run in a fresh process: fork one child per measurement (see the module docstring)."""
    out: dict[str, Any] = {"methods": {}, "bare": {}, "losses": []}
    timeout = float(spec.get("timeout", 300))
    threads = int(spec["threads"])
    for name in spec.get("methods", []):
        out["methods"][name] = run_forked(lambda: _memory_method(name, spec["batch"], spec["steps"], threads), timeout)
    for images in spec.get("bare", []):
        out["bare"][str(images)] = run_forked(lambda: _memory_bare(images, spec["steps"], threads), timeout)
    impls = loss_impls(tuple(spec.get("references", ()))) if spec.get("losses") else {}  # imported once, before forking
    for loss_name, impl, n in spec.get("losses", []):
        res = run_forked(lambda: _memory_loss(impls[loss_name][impl], n, threads), timeout)
        out["losses"].append({"loss": loss_name, "impl": impl, "batch": n, **res})
    return out


def measure_memory(spec: dict) -> dict:
    """Launch :func:`memory_worker` in a fresh interpreter (nothing parallel has run in it before the forks)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-worker", json.dumps(spec)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_DIR)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"memory worker failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ markdown
def _fmt(value: Any, spec: str = ".2f", missing: str = "n/a") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def evaluate_targets(result: dict) -> list[dict]:
    """The three targets of the brief, each with its measured number and met / not met."""
    targets = []
    by_method = {r["method"]: r for r in result["methods"]}
    for name, limit in STEP_TARGET_METHODS.items():
        row = by_method.get(name)
        ratio = row["wall"]["ratio"] if row else None
        targets.append({
            "target": f"{name} step <= {limit:.2f}x bare backbone step (wall, batch {result['settings']['batch']})",
            "measured": f"{ratio:.3f}x (CPU clock {row['cpu']['ratio']:.3f}x)" if row else "not measured",
            "met": (ratio <= limit) if row else None,
        })
    ratios = result.get("loss_ratios", [])
    for loss_name in ("NT-Xent", "SupCon"):
        big = [r for r in ratios if r["loss"] == loss_name and r["batch"] >= LOSS_TARGET_MIN_BATCH]
        if not big:
            refs = [p for p in REFERENCE_NAMES[loss_name] if not available_references()[REFERENCE_PACKAGE[p]]]
            reason = f"references not installed ({', '.join(refs)})" if refs else f"no batch >= {LOSS_TARGET_MIN_BATCH} measured"
            targets.append({"target": f"ours {loss_name} <= 1.0x fastest reference at batch >= {LOSS_TARGET_MIN_BATCH}, "
                                      f"values equal to {AGREEMENT_TOL:g}", "measured": reason, "met": None})
            continue
        worst = max(big, key=lambda r: r["ratio_wall"])
        agree = all(r["max_abs_diff"] <= AGREEMENT_TOL for r in big)
        ratio_list = ", ".join(f"{r['batch']}: {r['ratio_wall']:.2f}x" for r in big)
        targets.append({
            "target": f"ours {loss_name} <= 1.0x fastest reference at batch >= {LOSS_TARGET_MIN_BATCH}, values equal to {AGREEMENT_TOL:g}",
            "measured": f"worst {worst['ratio_wall']:.2f}x at batch {worst['batch']} (vs {worst['fastest_ref']}); "
                        f"ratios {ratio_list}; max |value diff| "
                        f"{max(r['max_abs_diff'] for r in big):.1e}",
            "met": all(r["ratio_wall"] <= 1.0 for r in big) and agree,
        })
    floor = result.get("ebclr_floor")
    if floor:
        targets.append({
            "target": f"EBCLR step <= {EBCLR_FLOOR_TARGET:.2f}x its floor ({2 + floor['sgld_steps'] + 1} passes, wall, batch {floor['batch']})",
            "measured": f"{floor['wall']['ratio']:.3f}x (CPU clock {floor['cpu']['ratio']:.3f}x)",
            "met": floor["wall"]["ratio"] <= EBCLR_FLOOR_TARGET,
        })
    return targets


def render_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# hf_hybridcl benchmarks",
        "",
        f"Written by `{result['command']}` ({result['seconds']:.0f} s). Every number below is measured by that run; "
        "re-run it to refresh. CPU timings are noisy when other processes share the machine: the load average is "
        "stated, ratios are medians of interleaved repeats, and the CPU-clock column (process CPU time, summed over "
        "threads) is given next to the wall clock.",
        "",
        "## Machine",
        "",
        machine_markdown(result["machine"]),
        f"- load average at the end: {', '.join(f'{x:.2f}' for x in result['load_end'])}",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {_met(t['met'])} |")
    lines += [
        "",
        "## 1. Training step per method vs the bare backbone step",
        "",
        f"Backbone: the digits recipes' ViT (`vit_tiny_patch16_224` with patch 4, embed 64, depth 2, heads 4, 16x16x1 "
        f"inputs), each method's `<method>-digits.yaml` settings, batch {s['batch']} images, random inputs (and labels). "
        f"Method step = everything the training loop does per step (forward, loss, backward, optimiser step, "
        f"scheduler, after-step hooks; robustcl and its attack/discriminator/SAM passes through its own "
        f"`optimization_step`). Bare step = backbone forward to pooled features + mean of squares + backward + AdamW "
        f"on the same number of images (2B for two-view methods, B for ce/hdge). Median of {s['repeats']} interleaved "
        f"repeats after {s['warmup']} warm-up.",
        "",
        f"Memory: growth of `ru_maxrss` (peak resident set) over {s['memory_steps']} steps in a forked child that "
        "already holds the model and the batch (so it counts activations, gradients, optimiser state, queues/buffers "
        "written during the step, sampler chains); `tracemalloc` does not see torch's allocations.",
        "",
        "| method | images/step | step ms | bare ms | ratio (wall) | ratio (CPU) | images/s | bare images/s | "
        "peak mem MB | bare peak mem MB | mem ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    memory = result.get("memory", {})
    for r in result["methods"]:
        mem = memory.get("methods", {}).get(r["method"], {})
        bare_mem = memory.get("bare", {}).get(str(r["images"]), {})
        m, b = mem.get("delta_mb"), bare_mem.get("delta_mb")
        ratio = m / b if m is not None and b else None
        lines.append(
            f"| {r['method']} | {r['images']} | {r['wall']['method_ms']:.1f} | {r['wall']['bare_ms']:.1f} | "
            f"{r['wall']['ratio']:.2f} | {r['cpu']['ratio']:.2f} | {r['images_per_s']:.0f} | {r['bare_images_per_s']:.0f} | "
            f"{_fmt(m, '.1f', mem.get('error', 'n/a'))} | {_fmt(b, '.1f', bare_mem.get('error', 'n/a'))} | {_fmt(ratio)} |"
        )
    if "error" in memory:
        lines += ["", f"Memory measurement failed: {memory['error']}"]
    refs = available_references()
    lines += [
        "",
        "## 2. Contrastive losses vs reference implementations",
        "",
        "References: " + ", ".join(f"`{p}` {'installed' if ok else '**not installed**'}" for p, ok in refs.items())
        + f" (`pip install -e '.[bench]'`); compared in this run: {s['references'] or 'none'}. Inputs: 2N raw embeddings of dimension "
        f"{EMBED_DIM} (view 1 of N images, then view 2), N = batch; SupCon labels from {NUM_CLASSES} classes. Conventions "
        f"matched so the same quantity is compared: NT-Xent tau {NTXENT_TAU} on the cosine, every view an anchor, its "
        "other view the only positive, all other 2N-2 views negatives, mean over the 2N anchors (pytorch-metric-learning "
        "gets label = image index, lightly gets the two views); SupCon L_out with tau "
        f"{SUPCON_TAU} and base temperature = tau (ours `base_tau=None`), denominator over all other views, mean over "
        "anchors. Embeddings are normalised inside every timed call (ours with `F.normalize`, the references "
        f"internally). Time = forward + backward, median of {s['loss_repeats']} interleaved repeats after "
        f"{s['loss_warmup']} warm-up; an implementation slower than {s['loss_cap_s']:.0f} s per call is not run at larger "
        "batches (marked capped), and pytorch-metric-learning's NTXentLoss is not run above batch "
        f"{REFERENCE_MAX_BATCH[('NT-Xent', 'pytorch-metric-learning')]} (its memory grows as N^3). Peak memory: `ru_maxrss` growth of one forward+backward in a forked child.",
        "",
        "| loss | batch N | implementation | value | abs diff vs ours | max abs grad diff | fwd+bwd ms (wall) | CPU ms | peak mem MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    loss_mem = {(m["loss"], m["impl"], m["batch"]): m for m in memory.get("losses", [])}
    for r in result["losses"]:
        mem = loss_mem.get((r["loss"], r["impl"], r["batch"]), {})
        lines.append(
            f"| {r['loss']} | {r['batch']} | {r['impl']} | {_fmt(r['value'], '.6f')} | {_fmt(r['abs_diff'], '.1e')} | "
            f"{_fmt(r['grad_max_abs_diff'], '.1e')} | {r['wall_ms']:.1f}{' (capped)' if r['capped'] else ''} | {r['cpu_ms']:.1f} | "
            f"{_fmt(mem.get('delta_mb'), '.1f', mem.get('error', 'n/a'))} |"
        )
    for loss_name, names in REFERENCE_NAMES.items():
        for name in names:
            if not refs[REFERENCE_PACKAGE[name]]:
                lines.append(f"| {loss_name} | all | {name} | not installed | | | | | |")
    lines += ["", "Ours / fastest reference (forward + backward):", "",
              "| loss | batch N | fastest reference | ratio (wall) | ratio (CPU) | max abs value diff |", "|---|---|---|---|---|---|"]
    for r in result.get("loss_ratios", []):
        lines.append(f"| {r['loss']} | {r['batch']} | {r['fastest_ref']} | {r['ratio_wall']:.2f} | {r['ratio_cpu']:.2f} | {r['max_abs_diff']:.1e} |")
    lines += [
        "",
        "## 3. SGLD and EBCLR",
        "",
        "SGLD: `hf_hybridcl.sampling.sgld_sample` on EBCLR's marginal energy (digits ViT + projection head, contrast "
        "set of N random unit vectors, clamp 1.0, step 0.05), time per SGLD step vs one training pass (forward + "
        "backward to the parameters) of the same N images; the last column counts parameters holding a `.grad` "
        "after sampling (should be 0: SGLD differentiates w.r.t. the input only).",
        "",
        "| batch N | SGLD steps | ms per SGLD step (wall) | training pass ms | ratio (wall) | ratio (CPU) | params with grad after SGLD |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.get("sgld", []):
        lines.append(f"| {r['batch']} | {r['sgld_steps']} | {r['wall']['sgld_step_ms']:.1f} | {r['wall']['pass_ms']:.1f} | "
                     f"{r['wall']['ratio']:.2f} | {r['cpu']['ratio']:.2f} | {r['param_grads_after_sgld']} |")
    floor = result.get("ebclr_floor")
    if floor:
        lines += [
            "",
            f"EBCLR step (`training_step` + backward, no optimiser step) vs its floor = (2 + {floor['sgld_steps']} + 1) x one "
            f"single-view forward + backward pass, by `scripts/bench_ebclr.py` (`bench`), digits ViT, batch {floor['batch']}:",
            "",
            "| clock | pass ms | floor ms | EBCLR step ms | ratio |",
            "|---|---|---|---|---|",
        ]
        for clock in ("wall", "cpu"):
            c = floor[clock]
            lines.append(f"| {clock} | {c['pass_ms']:.1f} | {c['floor_ms']:.1f} | {c['step_ms']:.1f} | {c['ratio']:.2f} |")
    lines += ["", "## Raw settings", "", "```json", json.dumps(s, indent=1), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small settings, under 2 minutes on 2 idle cores")
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset of " + ",".join(ALL_METHODS))
    parser.add_argument("--batch", type=int, default=128, help="images per training step (method table)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--loss-batches", default="64,128,256,512,1024,2048,4096")
    parser.add_argument("--loss-repeats", type=int, default=5)
    parser.add_argument("--loss-warmup", type=int, default=1)
    parser.add_argument("--loss-cap-s", type=float, default=20.0, help="skip an implementation at larger batches after a call this slow")
    parser.add_argument("--references", default="pytorch-metric-learning,lightly",
                        help="reference implementations to compare with (comma-separated; empty for none)")
    parser.add_argument("--sgld-batches", default="64,128,256")
    parser.add_argument("--sgld-steps", type=int, default=10)
    parser.add_argument("--ebclr-batch", type=int, default=128)
    parser.add_argument("--no-ebclr-floor", action="store_true")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the forked peak-memory measurements")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="markdown file to write (atomically)")
    parser.add_argument("--json", default=None, help="also write the raw results as JSON here")
    parser.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        explicit = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        quick = {"--batch": ("batch", 64), "--repeats": ("repeats", 3), "--warmup": ("warmup", 1),
                 "--loss-batches": ("loss_batches", "64,512,1024"), "--loss-repeats": ("loss_repeats", 3),
                 "--loss-cap-s": ("loss_cap_s", 5.0), "--sgld-batches": ("sgld_batches", "64"),
                 "--sgld-steps": ("sgld_steps", 5), "--ebclr-batch": ("ebclr_batch", 64), "--memory-steps": ("memory_steps", 2)}
        for flag, (attr, value) in quick.items():
            if flag not in explicit:
                setattr(args, attr, value)
    return args


def run(args: argparse.Namespace, argv_text: str) -> dict:
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    info = machine_info()
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {','.join(ALL_METHODS)}")
    loss_batches = [int(x) for x in args.loss_batches.split(",") if x]
    sgld_batches = [int(x) for x in args.sgld_batches.split(",") if x]
    references = tuple(r for r in args.references.split(",") if r)
    unknown_refs = sorted(set(references) - set(REFERENCE_PACKAGE))
    if unknown_refs:
        raise SystemExit(f"unknown references {unknown_refs}; choose from {','.join(REFERENCE_PACKAGE)}")
    settings = {k: v for k, v in vars(args).items() if k not in ("memory_worker", "output", "json")}
    result: dict[str, Any] = {"machine": info, "settings": settings, "command": argv_text}
    print(f"[benchmark] load {info['load_average_start']}, methods {methods}, batch {args.batch}", flush=True)
    result["methods"] = bench_methods(methods, args.batch, args.repeats, args.warmup)
    print(f"[benchmark] method steps done ({time.perf_counter() - start:.0f} s)", flush=True)
    result["losses"] = bench_losses(loss_batches, args.loss_repeats, args.loss_warmup, args.loss_cap_s, references)
    result["loss_ratios"] = loss_time_ratios(result["losses"])
    print(f"[benchmark] losses done ({time.perf_counter() - start:.0f} s)", flush=True)
    result["sgld"] = bench_sgld(sgld_batches, args.sgld_steps, max(2, args.repeats // 2), 1)
    if not args.no_ebclr_floor:
        result["ebclr_floor"] = bench_ebclr_floor(args.ebclr_batch, args.repeats, args.warmup)
    print(f"[benchmark] SGLD/EBCLR done ({time.perf_counter() - start:.0f} s)", flush=True)
    # peak memory in a separate fresh process (see measure_memory); losses only where the timing ran uncapped
    if not args.no_memory:
        spec = {"threads": args.threads, "batch": args.batch, "steps": args.memory_steps, "methods": methods,
                "bare": sorted({r["images"] for r in result["methods"]}),
                "losses": [(r["loss"], r["impl"], r["batch"]) for r in result["losses"] if not r["capped"]],
                "references": list(references)}
        result["memory"] = measure_memory(spec)
        print(f"[benchmark] memory done ({time.perf_counter() - start:.0f} s)", flush=True)
    result["targets"] = evaluate_targets(result)
    result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_worker is not None:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))), flush=True)
        return 0
    from hf_hybridcl.io_utils import atomic_write_json, atomic_write_text

    shown = " ".join(argv if argv is not None else sys.argv[1:])
    result = run(args, f"python scripts/benchmark.py {shown}".strip())
    atomic_write_text(args.output, render_markdown(result))
    if args.json:
        atomic_write_json(args.json, result)
    for t in result["targets"]:
        print(f"{t['target']}: {t['measured']} -> {_met(t['met']).strip('*')}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
