"""The Accelerate training loop: ``hybridcl train`` and ``accelerate launch -m hf_hybridcl.train``.

One loop for every method. It builds data, views and the method from a recipe, runs mixed precision and gradient
accumulation through Accelerate, checkpoints everything (weights, optimiser, scheduler, RNG states and the method's
training-only state) every ``train.save_every`` steps, resumes exactly with ``--resume``, guards against non-finite
losses, and finally exports, evaluates and writes the run directory:

    <output_dir>/checkpoints/checkpoint_<step>/   Accelerate states (atomic: written to a temp dir, then renamed)
    <output_dir>/model/                           the Hugging Face folder (config, safetensors, processor, card)
    <output_dir>/metrics.json                     evaluation with protocols and settings
    <output_dir>/train_log.jsonl                  one JSON line per logged step
    <output_dir>/recipe.yaml                      the resolved recipe
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from .configuration_hybridcl import HybridCLConfig
from .data import EpochShuffleSampler, ViewDataset, ViewRecipe, load_image_splits
from .errors import HybridCLError
from .image_processing_hybridcl import HybridCLImageProcessor
from .io_utils import atomic_directory, atomic_write_json, atomic_write_yaml
from .methods import HybridMethod, StepContext, TrainContext, get_method_class

CHECKPOINT_PATTERN = re.compile(r"^checkpoint_(\d+)$")
FAULT_ENV = "HYBRIDCL_FAULT_SIGKILL_AFTER_STEP"  # fault injection for resume tests: SIGKILL after this step


# ----------------------------------------------------------------------------------------------------------- setup
def build_model_config(recipe: dict, num_classes: int, class_names: list[str]) -> HybridCLConfig:
    model_args = {k: v for k, v in recipe["model"].items() if v is not None}
    id2label = {i: name for i, name in enumerate(class_names)} if class_names else None
    try:
        return HybridCLConfig(method=recipe["method"], id2label=id2label, **model_args)
    except (TypeError, ValueError) as err:
        raise HybridCLError(f"invalid model section in the recipe: {err}") from None


def build_view_recipe(recipe: dict, method_cls: type[HybridMethod], config: HybridCLConfig) -> ViewRecipe:
    return ViewRecipe(
        kind=method_cls.view_kind,
        image_size=config.image_size,
        num_channels=config.num_channels,
        mean=list(config.image_mean),
        std=list(config.image_std),
        normalize=method_cls.normalize_views,
        **recipe["views"],
    )


def build_optimizer(method: HybridMethod, optim: dict) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD with momentum; no weight decay on norms, biases, tokens and position embeddings."""
    skip = set()
    for module_name, module in method.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            skip |= {f"{module_name}.{n}" if module_name else n for n in module.no_weight_decay()}
    decay, no_decay = [], []
    for name, param in method.optimizer_parameters():
        (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": optim["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    name = optim["name"].lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
    if name == "adam":
        return torch.optim.Adam(groups, lr=optim["lr"], betas=tuple(optim["betas"]))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=False)
    raise HybridCLError(f"unknown optimizer {optim['name']!r}; use adamw, adam or sgd (optim.name=...).")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: dict, total_steps: int):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` (or constant), stepped once per optimiser step."""
    warmup = int(optim["warmup_steps"])
    floor = float(optim["min_lr_ratio"])
    schedule = optim["schedule"]
    if schedule not in ("cosine", "constant"):
        raise HybridCLError(f"unknown schedule {schedule!r}; use cosine or constant (optim.schedule=...).")

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _use_cpu() -> bool:
    """CPU (gloo) when asked (ACCELERATE_USE_CPU / accelerate launch --cpu) or when several processes run without
    CUDA; a single process keeps Accelerate's own device choice (CUDA, MPS, ...)."""
    from accelerate.utils import parse_flag_from_env

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return parse_flag_from_env("ACCELERATE_USE_CPU") or (several and not torch.cuda.is_available())


def latest_checkpoint(checkpoint_root: str) -> tuple[int, str] | None:
    if not os.path.isdir(checkpoint_root):
        return None
    found = [(int(m.group(1)), os.path.join(checkpoint_root, d)) for d in os.listdir(checkpoint_root) if (m := CHECKPOINT_PATTERN.match(d))]
    return max(found) if found else None


def default_output_dir(recipe: dict) -> str:
    dataset = os.path.basename(str(recipe["data"]["dataset"]).rstrip("/")).replace("/", "-")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{recipe['method']}-{dataset}-{stamp}")


def latest_run_dir(recipe: dict) -> str | None:
    dataset = os.path.basename(str(recipe["data"]["dataset"]).rstrip("/")).replace("/", "-")
    prefix = f"{recipe['method']}-{dataset}-"
    if not os.path.isdir("runs"):
        return None
    runs = sorted(d for d in os.listdir("runs") if d.startswith(prefix))
    return os.path.join("runs", runs[-1]) if runs else None


# ------------------------------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs one recipe end to end; see the module docstring for the outputs."""

    def __init__(self, recipe: dict, output_dir: str | None = None, resume: bool = False):
        from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, PartialState
        from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

        self.recipe = copy.deepcopy(recipe)
        self.resume = resume
        train_cfg = self.recipe["train"]
        self.method_cls = get_method_class(self.recipe["method"])
        use_cpu = _use_cpu()
        PartialState(cpu=use_cpu)  # joins the process group, so every process agrees on the run directory
        if output_dir is None:
            output_dir = (latest_run_dir(self.recipe) if resume else None) or default_output_dir(self.recipe)
        holder = [output_dir]
        broadcast_object_list(holder)
        self.output_dir = holder[0]
        log_with = train_cfg["log_with"]
        log_with = None if log_with in (None, "none", "") else log_with
        self.accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision=train_cfg["mixed_precision"],
            gradient_accumulation_steps=int(train_cfg["grad_accum"]),
            log_with=log_with,
            project_config=ProjectConfiguration(
                project_dir=self.output_dir, logging_dir=os.path.join(self.output_dir, "logs")
            ),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=self.method_cls.find_unused_parameters)],
        )
        self.checkpoint_root = os.path.join(self.output_dir, "checkpoints")
        existing = latest_checkpoint(self.checkpoint_root)
        if existing is not None and not resume:
            raise HybridCLError(
                f"{self.output_dir} already holds checkpoints; pass --resume to continue it or another --output-dir."
            )
        set_seed(int(train_cfg["seed"]))
        self._build(existing if resume else None)

    # -- construction ----------------------------------------------------------------------------------------
    def _build(self, checkpoint: tuple[int, str] | None) -> None:
        recipe, train_cfg, acc = self.recipe, self.recipe["train"], self.accelerator
        data_cfg = recipe["data"]
        self.splits = load_image_splits(
            data_cfg["dataset"], data_cfg["image_column"], data_cfg["label_column"], data_cfg["test_fraction"], train_cfg["seed"]
        )
        if self.method_cls.requires_labels and not self.splits.train.has_labels:
            raise HybridCLError(
                f"method {recipe['method']!r} is supervised but data set {data_cfg['dataset']!r} has no labels; "
                f"give --label-column, a labelled data set, or an unsupervised method such as simclr."
            )
        self.model_config = build_model_config(recipe, self.splits.num_classes, self.splits.class_names)
        self.view_recipe = build_view_recipe(recipe, self.method_cls, self.model_config)
        self.dataset = ViewDataset(self.splits.train, self.view_recipe.build(), seed=int(train_cfg["seed"]))
        batch_size = int(train_cfg["batch_size"])
        if batch_size % acc.num_processes:
            raise HybridCLError(f"train.batch_size {batch_size} must be divisible by the {acc.num_processes} processes.")
        if len(self.dataset) < batch_size:
            raise HybridCLError(
                f"train.batch_size {batch_size} is larger than the {len(self.dataset)} training images; lower it."
            )
        self.sampler = EpochShuffleSampler(len(self.dataset), seed=int(train_cfg["seed"]))
        num_workers = int(data_cfg["num_workers"])
        # The loader's own generator: creating an iterator (every epoch, and after a resume) must not draw from the
        # global RNG, which methods use during steps and which the checkpoint restores.
        loader = DataLoader(
            self.dataset, batch_size=batch_size, sampler=self.sampler, drop_last=True, num_workers=num_workers,
            persistent_workers=num_workers > 0, generator=torch.Generator().manual_seed(int(train_cfg["seed"])),
        )
        grad_accum = int(train_cfg["grad_accum"])
        self.batches_per_epoch = len(loader)
        self.steps_per_epoch = max(1, self.batches_per_epoch // grad_accum)
        max_steps = train_cfg["max_steps"]
        self.total_steps = int(max_steps) if max_steps else int(train_cfg["epochs"]) * self.steps_per_epoch
        if self.total_steps < 1:
            raise HybridCLError("nothing to train: set train.epochs or --max-steps to at least 1.")

        method = self.method_cls(self.model_config, recipe["method_args"], self.splits.num_classes)
        method.on_train_start(
            TrainContext(acc, self.splits, self.dataset, recipe, self.output_dir, self.total_steps)
        )
        self.custom_step = type(method).optimization_step is not HybridMethod.optimization_step
        if self.custom_step and grad_accum > 1:
            raise HybridCLError(f"method {recipe['method']!r} owns its optimisation step; set train.grad_accum=1.")
        optimizer = build_optimizer(method, recipe["optim"])
        self.scheduler = build_scheduler(optimizer, recipe["optim"], self.total_steps)
        self.wrapped, self.optimizer, self.loader = acc.prepare(method, optimizer, loader)
        self.method: HybridMethod = acc.unwrap_model(self.wrapped)
        acc.register_for_checkpointing(self.scheduler, *self.method.checkpoint_objects())
        self.start_step = 0
        if checkpoint is not None:
            self.start_step, path = checkpoint
            acc.load_state(path)
            acc.print(f"resumed from {path} (step {self.start_step} of {self.total_steps})")

    # -- one step --------------------------------------------------------------------------------------------
    def _standard_step(self, batch) -> tuple[dict[str, float], bool]:
        acc = self.accelerator
        with acc.accumulate(self.wrapped):
            loss, logs = self.wrapped(batch)
            finite = self._all_finite(loss)
            if finite:
                acc.backward(loss)
                max_norm = self.recipe["optim"]["max_grad_norm"]
                if acc.sync_gradients and max_norm:
                    acc.clip_grad_norm_(self.wrapped.parameters(), float(max_norm))
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        logs = dict(logs)
        logged = loss.detach().float()
        if acc.num_processes > 1:  # every process averages its local anchors: log the global mean
            logged = acc.reduce(logged.reshape(1), reduction="mean")
        logs["loss"] = float(logged.item())
        return logs, finite

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([1.0 if torch.isfinite(loss.detach()).all() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() == self.accelerator.num_processes)

    # -- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        acc, train_cfg = self.accelerator, self.recipe["train"]
        if acc.is_main_process:
            os.makedirs(self.output_dir, exist_ok=True)
            atomic_write_yaml(os.path.join(self.output_dir, "recipe.yaml"), self.recipe)
        if acc.log_with:
            acc.init_trackers("hybridcl", config=_flat_config(self.recipe))
        fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
        log_path = os.path.join(self.output_dir, "train_log.jsonl")
        step, bad_in_a_row = self.start_step, 0
        batch_size = int(train_cfg["batch_size"]) * int(train_cfg["grad_accum"])
        progress = _progress(self.total_steps, step, acc.is_main_process)
        window_start, window_steps = time.perf_counter(), 0
        while step < self.total_steps:
            epoch = step // self.steps_per_epoch
            self.sampler.set_epoch(epoch)
            skip = (step % self.steps_per_epoch) * int(train_cfg["grad_accum"])
            loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
            for batch in loader:
                if self.custom_step:
                    logs = self.method.optimization_step(
                        batch,
                        StepContext(acc, self.optimizer, self.scheduler, self.wrapped, step, self.recipe["optim"]["max_grad_norm"]),
                    )
                    finite = all(math.isfinite(v) for v in logs.values() if isinstance(v, float))
                else:
                    logs, finite = self._standard_step(batch)
                if not acc.sync_gradients:
                    continue
                if not finite:
                    bad_in_a_row += 1
                    acc.print(f"step {step}: non-finite loss, step skipped ({bad_in_a_row} in a row)")
                    if bad_in_a_row >= int(train_cfg["max_bad_steps"]):
                        raise HybridCLError(
                            f"training diverged: {bad_in_a_row} non-finite losses in a row at step {step}. Lower optim.lr, "
                            f"raise optim.warmup_steps or set optim.max_grad_norm; the last good checkpoint is in {self.checkpoint_root}."
                        )
                else:
                    bad_in_a_row = 0
                self.scheduler.step()
                self.method.after_optimizer_step(step)
                step += 1
                window_steps += 1
                if step % int(train_cfg["log_every"]) == 0 or step == self.total_steps:
                    elapsed = time.perf_counter() - window_start
                    record = {
                        "step": step, "epoch": epoch, "lr": self.scheduler.get_last_lr()[0],
                        "images_per_s": window_steps * batch_size / max(elapsed, 1e-9), "skipped": not finite, **logs,
                    }
                    self._log(record, log_path, step)
                    progress.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", img_s=f"{record['images_per_s']:.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                progress.update(1)
                if step % int(train_cfg["save_every"]) == 0 or step == self.total_steps:
                    self.save_checkpoint(step)
                if fault_step and step == fault_step:
                    os.kill(os.getpid(), signal.SIGKILL)
                if step >= self.total_steps:
                    break
        progress.close()
        summary = self.finish()
        acc.end_training()
        return summary

    def _sharded(self) -> bool:
        from accelerate.utils import DistributedType

        return self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def _log(self, record: dict, log_path: str, step: int) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            with open(log_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        if acc.log_with:
            acc.log({k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)

    def save_checkpoint(self, step: int) -> None:
        """Accelerate state into a temp dir, then one rename; keeps the newest ``train.keep_checkpoints``."""
        acc = self.accelerator
        acc.wait_for_everyone()
        final = os.path.join(self.checkpoint_root, f"checkpoint_{step}")
        tmp = os.path.join(self.checkpoint_root, f".tmp_checkpoint_{step}")
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)  # before the barrier: every process writes its RNG state into it
        acc.wait_for_everyone()
        acc.save_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            keep = max(1, int(self.recipe["train"]["keep_checkpoints"]))
            found = sorted(int(m.group(1)) for d in os.listdir(self.checkpoint_root) if (m := CHECKPOINT_PATTERN.match(d)))
            for old in found[:-keep]:
                shutil.rmtree(os.path.join(self.checkpoint_root, f"checkpoint_{old}"), ignore_errors=True)
        acc.wait_for_everyone()

    # -- export and evaluation -------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        from .evaluate.run import evaluate_encoder, metrics_document
        from .hub import write_minimal_card

        acc = self.accelerator
        acc.wait_for_everyone()
        summary: dict[str, Any] = {"output_dir": self.output_dir, "model_dir": os.path.join(self.output_dir, "model")}
        full_state = acc.get_state_dict(self.wrapped) if self._sharded() else None  # collective: every rank calls it
        if not acc.is_main_process:
            return summary
        method = self.method
        if full_state is not None:  # FSDP/DeepSpeed shard parameters: rebuild an unsharded method to export
            method = self.method_cls(self.model_config, self.recipe["method_args"], self.splits.num_classes)
            method.load_state_dict(full_state)
        model = method.export()
        model.eval()
        eval_cfg = self.recipe["eval"]
        random_model = type(model)(model.config) if eval_cfg.get("random_init_baseline", True) else None
        protocols = evaluate_encoder(model, self.splits, eval_cfg, acc.device, random_init_model=random_model)
        protocols.update(method.extra_metrics(self.splits, acc.device))
        model_info = {
            "method": self.recipe["method"],
            "backbone": self.model_config.backbone,
            "backbone_kwargs": self.model_config.backbone_kwargs,
            "class": type(model).__name__,
            "path": summary["model_dir"],
            "train_steps": self.total_steps,
            "train_batch_size": int(self.recipe["train"]["batch_size"]),
            "processes": acc.num_processes,
            "distributed_type": str(acc.distributed_type.value if hasattr(acc.distributed_type, "value") else acc.distributed_type),
            "mixed_precision": str(acc.mixed_precision),
        }
        metrics = metrics_document(protocols, model_info, self.splits)
        artifacts = method.write_artifacts(self.output_dir)
        if artifacts:
            metrics["artifacts"] = [os.path.relpath(p, self.output_dir) for p in artifacts]
        with atomic_directory(summary["model_dir"]) as tmp:
            model.save_pretrained(tmp)
            HybridCLImageProcessor.from_model_config(model.config).save_pretrained(tmp)
            write_minimal_card(tmp, self.recipe, metrics)
        atomic_write_json(os.path.join(self.output_dir, "metrics.json"), metrics)
        summary["metrics"] = {k: v.get("value") for k, v in protocols.items()}
        return summary


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()  # in logs (CI, redirected output) redraw at most every 30 s
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True, leave=True,
                mininterval=0.1 if interactive else 30.0)


def _flat_config(recipe: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in recipe.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


# ------------------------------------------------------------------------------------------------- entry points
def add_train_arguments(parser) -> None:
    parser.add_argument("--method", help="training method (see `hybridcl methods`); with no method, recipe or data set: "
                        "the main job (recipes/main-digits.yaml, HDGE)")
    parser.add_argument("--recipe", help="YAML recipe file or packaged recipe name (default: <method>-<dataset>.yaml)")
    parser.add_argument("--dataset", help="Hugging Face data set name, local image folder, or 'digits' (embedded)")
    parser.add_argument("--image-column", help="image column of a Hugging Face data set (detected if omitted)")
    parser.add_argument("--label-column", help="label column of a Hugging Face data set (detected if omitted)")
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (overrides --epochs)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size over all processes")
    parser.add_argument("--output-dir", help="run directory (default runs/<method>-<dataset>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run directory")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.01 method_args.tau=0.2")


def run_from_args(args) -> dict[str, Any]:
    from .recipes import resolve_recipe

    flags = {
        "data.image_column": args.image_column,
        "data.label_column": args.label_column,
        "model.backbone": args.backbone,
        "train.max_steps": args.max_steps,
        "train.epochs": args.epochs,
        "train.batch_size": args.batch_size,
    }
    recipe = resolve_recipe(args.method, args.recipe, args.dataset, flags, args.overrides)
    recipe.pop("_recipe_file", None)
    trainer = Trainer(recipe, args.output_dir, resume=args.resume)
    summary = trainer.fit()
    if trainer.accelerator.is_main_process:
        print(f"model folder: {summary['model_dir']}")
        for name, value in summary.get("metrics", {}).items():
            if isinstance(value, float):
                print(f"{name}: {value:.4f}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hf_hybridcl.train", description="Train a hybrid contrastive method.")
    add_train_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # `key=value` overrides may come before or after the flags
    try:
        run_from_args(args)
    except HybridCLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
