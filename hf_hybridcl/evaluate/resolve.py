"""Where ``hybridcl evaluate MODEL`` finds the model: a run directory, a model folder or a Hugging Face hub id."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import HybridCLError

REPO_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TRUTHY = {"1", "true", "yes", "on"}


@dataclass
class ModelSource:
    """A resolved model: the HF folder to load and, for a run directory, the run's recipe and metrics."""

    kind: str  # "run" | "folder" | "hub"
    model_dir: str
    name: str  # what the user gave (path or hub id)
    run_dir: str | None = None
    recipe: dict[str, Any] | None = None
    run_metrics: dict[str, Any] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return "HybridCLForImageClassification" in (self.config.get("architectures") or [])


def hub_offline() -> bool:
    """True when the usual offline switches are set (read at call time, not at import time)."""
    flags = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(name, "").strip().lower() in TRUTHY for name in flags)


def is_model_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and any(
        name.endswith(".safetensors") for name in os.listdir(path)
    )


def is_run_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "model")) and is_model_folder(os.path.join(path, "model"))


def resolve_model(name: str) -> ModelSource:
    """Find the model folder behind ``name``; raise a :class:`HybridCLError` that says what to do otherwise."""
    if os.path.isdir(name):
        path = os.path.abspath(name)
        if is_run_dir(path):
            model_dir = os.path.join(path, "model")
            return ModelSource("run", model_dir, name, run_dir=path, recipe=_read_yaml(os.path.join(path, "recipe.yaml")),
                               run_metrics=_read_json(os.path.join(path, "metrics.json")), config=_config(model_dir))
        if is_model_folder(path):
            return ModelSource("folder", path, name, run_metrics=_read_json(os.path.join(path, "metrics.json")),
                               config=_config(path))
        raise HybridCLError(
            f"{name} is a folder but neither a run directory (with model/) nor a model folder (config.json + "
            f"*.safetensors); give the output directory of `hybridcl train` or its model/ folder."
        )
    if os.path.exists(name):
        raise HybridCLError(f"{name} is a file; give a run directory, a model folder or a hub id (ORG/NAME).")
    if not REPO_ID_PATTERN.match(name):
        raise HybridCLError(
            f"{name!r} is not an existing folder and not a hub id of the form ORG/NAME; check the path or the id."
        )
    model_dir = download_or_cached(name)
    return ModelSource("hub", model_dir, name, run_metrics=_read_json(os.path.join(model_dir, "metrics.json")),
                       config=_config(model_dir))


def download_or_cached(repo_id: str) -> str:
    """The local snapshot of ``repo_id``: from the cache when offline, downloaded otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = hub_offline()
    try:
        return snapshot_download(repo_id, local_files_only=offline)
    except LocalEntryNotFoundError:
        if offline:
            raise HybridCLError(
                f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. Unset "
                f"HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) to download it once, or pass a local model folder or "
                f"run directory instead."
            ) from None
        raise HybridCLError(
            f"could not download {repo_id!r} (no connection to the Hub?). Check the network or pass a local folder."
        ) from None
    except RepositoryNotFoundError:
        raise HybridCLError(
            f"hub repository {repo_id!r} was not found or is private; check the id, or log in with `hf auth login`."
        ) from None


def _config(model_dir: str) -> dict[str, Any]:
    return _read_json(os.path.join(model_dir, "config.json")) or {}


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _read_yaml(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        data = yaml.safe_load(handle)
    return data if isinstance(data, dict) else None
