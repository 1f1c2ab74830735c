"""Training recipes: built-in defaults, YAML files in ``hf_hybridcl/recipes/`` and ``key=value`` overrides.

Resolution order: :data:`DEFAULT_RECIPE` <- the recipe file (``--recipe`` or ``recipes/<method>-<dataset>.yaml``)
<- command-line flags <- ``section.key=value`` overrides. Every key must exist in the defaults (``method_args``
keys are checked against the method's own defaults), so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import copy
import os
import re
from importlib import resources
from typing import Any

import yaml

from .errors import HybridCLError

DEFAULT_RECIPE: dict[str, Any] = {
    # `hybridcl train` with no arguments (the main job) trains the flagship hybrid, HDGE, on the embedded digits.
    "method": "hdge",
    "data": {
        "dataset": "digits",
        "image_column": None,
        "label_column": None,
        "test_fraction": 0.2,
        "num_workers": 0,
    },
    "model": {
        "backbone": "vit_tiny_patch16_224",
        "backbone_kwargs": {"patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 2.0},
        "image_size": 16,
        "num_channels": 1,
        "image_mean": None,
        "image_std": None,
        "cifar_stem": False,
        "classifier_dropout": 0.0,
        "proj_hidden_dim": 256,
        "proj_output_dim": 64,
        "proj_num_layers": 2,
        "proj_activation": "relu",
        "proj_batch_norm": False,
    },
    "method_args": {},
    "views": {
        "crop_scale": [0.3, 1.0],
        "flip": False,
        "jitter_strength": 0.5,
        "jitter_p": 0.8,
        "grayscale_p": 0.2,
        "blur_p": 0.5,
        "noise_std": 0.0,
    },
    "optim": {
        "name": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "momentum": 0.9,
        "betas": [0.9, 0.999],
        "warmup_steps": 20,
        "min_lr_ratio": 0.0,
        "schedule": "cosine",
        "max_grad_norm": None,
    },
    "train": {
        "batch_size": 128,
        "epochs": 10,
        "max_steps": None,
        "grad_accum": 1,
        "mixed_precision": "no",
        "seed": 0,
        "save_every": 200,
        "keep_checkpoints": 2,
        "log_every": 10,
        "log_with": "tensorboard",
        "max_bad_steps": 20,
    },
    "eval": {
        "protocols": ["linear", "knn"],
        "knn_k": 20,
        "knn_tau": 0.07,
        "linear_epochs": 100,
        "linear_lr": 1e-2,
        "linear_batch_size": 256,
        "linear_weight_decay": 0.0,
        "batch_size": 256,
        "random_init_baseline": True,
        # `hybridcl evaluate` (the full suite; training runs only `protocols` above)
        "suite_protocols": ["linear", "knn", "finetune", "calibration", "ood", "corruptions", "robust", "generative",
                            "embedding"],
        "seed": 0,
        "finetune_epochs": 3,
        "finetune_lr": 1e-3,
        "finetune_batch_size": 64,
        "finetune_weight_decay": 0.05,
        "calibration_source": "auto",  # auto (classifier logits, else probe) | probe | finetune | classifier
        "ece_bins": 15,
        "ece_bins_hdge": 20,
        "ood_shifts": ["gaussian_noise", "inverted", "hflip", "interp"],
        "ood_real_sets": ["sample_patches"],
        "ood_primary_score": "energy",
        "ood_knn_k": 5,
        "corruptions": ["gaussian_noise", "gaussian_blur", "contrast"],
        "tsne_perplexity": 30.0,
        "tsne_iterations": 500,
        # CPU-sized differences from hf_hybridcl.evaluate.robust.DEFAULT_ROBUST_SETTINGS (which validates the keys)
        "robust": {"probes": ["slf"], "autoattack_max_images": 200, "max_test_images": 500},
        "card_license": "apache-2.0",
    },
}

MAIN_JOB_RECIPE = "main-digits.yaml"
FREE_FORM_KEYS = {("model", "backbone_kwargs"), ("method_args",), ("eval", "robust")}


def recipe_dir() -> str:
    return str(resources.files("hf_hybridcl") / "recipes")


def list_recipes() -> list[str]:
    return sorted(f for f in os.listdir(recipe_dir()) if f.endswith(".yaml"))


def find_recipe(method: str, dataset: str) -> str | None:
    """The packaged recipe for a method and data set (``<method>-<dataset>.yaml``), if any."""
    key = "digits" if dataset in ("digits", "embedded", "default") else os.path.basename(dataset.rstrip("/")).replace("/", "-")
    path = os.path.join(recipe_dir(), f"{method}-{key}.yaml")
    return path if os.path.exists(path) else None


def load_yaml(path: str) -> dict[str, Any]:
    if not os.path.exists(path):
        candidate = os.path.join(recipe_dir(), path if path.endswith(".yaml") else f"{path}.yaml")
        if os.path.exists(candidate):
            path = candidate
        else:
            raise HybridCLError(f"recipe {path!r} not found; packaged recipes: {', '.join(list_recipes())}.")
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise HybridCLError(f"recipe {path} must be a YAML mapping of sections (data, model, optim, ...).")
    return coerce_numbers({k: v for k, v in data.items() if not str(k).startswith("_")})  # drop saved bookkeeping


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def coerce_numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; turn such strings into floats, recursively."""
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_numbers(v) for v in value]
    return value


def merge(base: dict[str, Any], update: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; keys unknown to ``base`` are an error outside free-form sections."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        here = path + (key,)
        if key not in out and path not in FREE_FORM_KEYS and here not in FREE_FORM_KEYS:
            valid = ", ".join(sorted(out))
            where = ".".join(path) or "the recipe"
            raise HybridCLError(f"unknown key {'.'.join(here)!r} in {where}; valid keys: {valid}.")
        if isinstance(value, dict) and isinstance(out.get(key), dict) and here not in FREE_FORM_KEYS:
            out[key] = merge(out[key], value, here)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = dict(out[key])
            merged.update(value)
            out[key] = merged
        else:
            out[key] = value
    return out


def merge_model_section_aware(recipe: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """:func:`merge`, except that backbone keyword arguments belong to one backbone: switching ``model.backbone``
    drops the previous backbone's kwargs, and a complete ``backbone_kwargs`` mapping (from a recipe file) replaces
    them. A single dotted override such as ``model.backbone_kwargs.depth=4`` still updates one key."""
    model_update = update.get("model") or {}
    recipe = copy.deepcopy(recipe)
    new_backbone = model_update.get("backbone")
    if new_backbone is not None and new_backbone != recipe["model"]["backbone"] and "backbone_kwargs" not in model_update:
        recipe["model"]["backbone_kwargs"] = {}
    kwargs_update = model_update.get("backbone_kwargs", "absent")
    if kwargs_update is None:
        update = copy.deepcopy(update)
        update["model"]["backbone_kwargs"] = {}
        recipe["model"]["backbone_kwargs"] = {}
    elif isinstance(kwargs_update, dict) and (len(kwargs_update) > 1 or "backbone" in model_update):
        recipe["model"]["backbone_kwargs"] = {}
    return merge(recipe, update)


def parse_override(text: str) -> dict[str, Any]:
    """``optim.lr=0.01`` -> ``{"optim": {"lr": 0.01}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise HybridCLError(f"override {text!r} must look like section.key=value (e.g. optim.lr=0.01).")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2 and parts != ["method"]:
        raise HybridCLError(f"override {text!r} needs a section, e.g. train.batch_size=64 or method_args.tau=0.2.")
    value = coerce_numbers(yaml.safe_load(raw)) if raw.strip() else None
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def resolve_recipe(
    method: str | None = None,
    recipe_path: str | None = None,
    dataset: str | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The full recipe for a run (see module docstring)."""
    recipe = copy.deepcopy(DEFAULT_RECIPE)
    if method is None and recipe_path is None and dataset is None:
        recipe_path = os.path.join(recipe_dir(), MAIN_JOB_RECIPE)  # `hybridcl train` alone: the main job
    if recipe_path is None:
        recipe_path = find_recipe(method or recipe["method"], dataset or recipe["data"]["dataset"])
    if recipe_path is not None:
        recipe = merge_model_section_aware(recipe, load_yaml(recipe_path))
    if method is not None:
        if recipe_path is not None and recipe.get("method") not in (None, method):
            raise HybridCLError(
                f"--method {method} conflicts with recipe {os.path.basename(recipe_path)} (method {recipe['method']}); drop one."
            )
        recipe["method"] = method
    if dataset is not None:
        recipe["data"]["dataset"] = dataset
    for section_key, value in (flags or {}).items():
        if value is None:
            continue
        section, key = section_key.split(".")
        recipe = merge_model_section_aware(recipe, {section: {key: value}})
    for text in overrides or []:
        recipe = merge_model_section_aware(recipe, parse_override(text))
    recipe["_recipe_file"] = os.path.basename(recipe_path) if recipe_path else None
    return recipe
