"""Model cards with measured metrics, the Hub upload folder, a timm export and ``hybridcl push``.

Cards are rendered from ``model_card_template.md`` (package data) with ``huggingface_hub.ModelCard.from_template``:
the YAML metadata is a ``ModelCardData`` whose ``model-index`` holds one ``EvalResult`` per number in the
``metrics.json`` values (``metric_config`` = ``"<protocol>.<key>"`` points back to it), the body describes the
method (``model_card_methods.yaml``), usage, the training recipe, a metrics table and the plots. See
``model_cards/README.md``.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from typing import Any

import yaml

from .errors import HybridCLError
from .io_utils import atomic_directory, atomic_write_json, atomic_write_text

CARD_TEMPLATE = "model_card_template.md"
METHOD_INFO_FILE = "model_card_methods.yaml"
REPO_PLACEHOLDER = "ORG/NAME"
HUB_CODE_FILES = ("configuration_hybridcl.py", "modeling_hybridcl.py", "image_processing_hybridcl.py")
REQUIRED_UPLOAD_FILES = ("config.json", "preprocessor_config.json", "README.md", *HUB_CODE_FILES)
PLOT_TITLES = {
    "reliability": "Reliability diagram (calibration)",
    "ood_scores": "OOD score distributions",
    "corruptions": "Accuracy under corruptions",
    "embedding_tsne": "t-SNE of test features",
}
EMBEDDED_DATASETS = {"digits": "scikit-learn handwritten digits (embedded, 8x8 grayscale, 10 classes)"}


# ----------------------------------------------------------------------------------------------- card content
def method_info(method: str) -> dict[str, str]:
    """Title, description, paper and citation of a method (``model_card_methods.yaml``)."""
    with resources.files("hf_hybridcl").joinpath(METHOD_INFO_FILE).open() as handle:
        info = yaml.safe_load(handle)
    return info.get(method) or {
        "title": method, "description": f"Trained with the `{method}` method.", "paper": "not recorded", "citation": "",
    }


def is_classifier_config(config: dict[str, Any]) -> bool:
    return "HybridCLForImageClassification" in (config.get("architectures") or [])


def hub_dataset_id(name: str) -> str | None:
    """The data set as a Hub id for the ``datasets`` metadata (None for embedded data and local folders)."""
    if not name or name in EMBEDDED_DATASETS or os.path.isabs(name) or os.path.exists(name) or name.startswith("."):
        return None
    return name


def _metric_type(key: str) -> str:
    last = key.split(".")[-1]
    if "accuracy" in last:
        return "accuracy"
    if last.startswith("ece"):
        return "ece"
    return last


def iter_metric_values(metrics: dict[str, Any]):
    """``(protocol, key, value, result)`` for every finite number in the protocols' ``values``."""
    for protocol, result in (metrics.get("protocols") or {}).items():
        if not isinstance(result, dict) or "skipped" in result:
            continue
        for key, value in (result.get("values") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield protocol, key, value, result


def eval_results(metrics: dict[str, Any]) -> list:
    """One ``EvalResult`` per measured number; ``metric_config`` is ``"<protocol>.<key>"`` of metrics.json."""
    from huggingface_hub import EvalResult

    rows = []
    for protocol, key, value, result in iter_metric_values(metrics):
        dataset = result.get("dataset") or metrics.get("dataset", {}).get("name", "unknown")
        rows.append(EvalResult(
            task_type="image-classification",
            task_name=f"image classification ({protocol})",
            dataset_type=dataset,
            dataset_name=EMBEDDED_DATASETS.get(dataset, dataset),
            dataset_split=result.get("split", "test"),
            metric_type=_metric_type(key),
            metric_name=f"{protocol}: {key}",
            metric_config=f"{protocol}.{key}",
            metric_value=value,
        ))
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "n/a" if value is None else str(value)


def _settings_summary(settings: dict[str, Any], limit: int = 160) -> str:
    parts = [f"{k}={v}" for k, v in settings.items() if isinstance(v, (int, float, str, bool)) and len(str(v)) < 60]
    text = ", ".join(parts)
    return (text[: limit - 3] + "...") if len(text) > limit else text


def metrics_tables(metrics: dict[str, Any]) -> str:
    """A headline table (one row per protocol) and a collapsible table of every value."""
    protocols = metrics.get("protocols") or {}
    if not protocols:
        return "No metrics were recorded for this model."
    head = ["| protocol | value | data / split | source | settings |", "|---|---|---|---|---|"]
    for name, result in protocols.items():
        where = f"{result.get('dataset', '')} / {result.get('split', '')}"
        if "skipped" in result:
            head.append(f"| {name} | skipped: {result['skipped']} | {where} | | |")
            continue
        settings = _settings_summary(result.get("settings") or {}).replace("|", "/")
        head.append(f"| {name} | {_fmt(result.get('value'))} | {where} | {result.get('source', '')} | {settings} |")
    rows = ["| protocol | metric | value |", "|---|---|---|"]
    rows += [f"| {p} | {k} | {_fmt(v)} |" for p, k, v, _ in iter_metric_values(metrics)]
    return "\n".join(head) + "\n\n<details><summary>All values</summary>\n\n" + "\n".join(rows) + "\n\n</details>"


def recipe_table(recipe: dict[str, Any] | None, config: dict[str, Any]) -> str:
    """Key training settings from the run's recipe (or what the config alone tells)."""
    if not recipe:
        return (f"No recipe was saved with this folder. Config: method `{config.get('method')}`, backbone "
                f"`{config.get('backbone')}` with `{config.get('backbone_kwargs')}`.")
    data, model, optim, train = (recipe.get(k, {}) for k in ("data", "model", "optim", "train"))
    rows = [
        ("method", recipe.get("method")),
        ("method_args", recipe.get("method_args") or "defaults"),
        ("data set", f"{data.get('dataset')} (test fraction {data.get('test_fraction')}, split seed {train.get('seed')})"),
        ("backbone", f"timm `{model.get('backbone')}` {model.get('backbone_kwargs')}, from scratch"),
        ("input", f"{config.get('image_size')}x{config.get('image_size')}, {config.get('num_channels')} channel(s), "
                  f"mean {config.get('image_mean')}, std {config.get('image_std')}"),
        ("projection head", f"{model.get('proj_num_layers')} layers, hidden {model.get('proj_hidden_dim')}, "
                            f"output {model.get('proj_output_dim')}"),
        ("optimizer", f"{optim.get('name')} lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
                      f"{optim.get('schedule')} schedule, {optim.get('warmup_steps')} warm-up steps"),
        ("batch size", f"{train.get('batch_size')} (grad accumulation {train.get('grad_accum')})"),
        ("length", f"{train.get('max_steps')} steps" if train.get("max_steps") else f"{train.get('epochs')} epochs"),
        ("mixed precision", train.get("mixed_precision")),
        ("views", _settings_summary(recipe.get("views") or {}, 200)),
    ]
    return "\n".join(["| setting | value |", "|---|---|", *[f"| {k} | {str(v).replace('|', '/')} |" for k, v in rows]])


def usage_code(config: dict[str, Any], repo_id: str) -> str:
    """The card's Python snippet: features with AutoModel, fine-tuning with AutoModelForImageClassification."""
    num_labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
    return f'''import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

repo_id = "{repo_id}"  # the Hub id, or the path of a local copy of this folder
processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
image = Image.new("RGB", (64, 64), color=(40, 40, 40))  # use your own: Image.open("image.png")
inputs = processor(images=image, return_tensors="pt")

# frozen features (the representation used by linear probes and kNN)
encoder = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()
with torch.no_grad():
    features = encoder(**inputs).pooler_output
print(features.shape)

# fine-tuning for a classification task with num_labels classes
classifier = AutoModelForImageClassification.from_pretrained(
    repo_id, num_labels={num_labels}, ignore_mismatched_sizes=True, trust_remote_code=True
)
optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-4)
loss = classifier(**inputs, labels=torch.tensor([0])).loss
loss.backward()
optimizer.step()
print(float(loss))'''


def render_card(
    config: dict[str, Any],
    recipe: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    repo_id: str | None = None,
    plots: dict[str, str] | None = None,
    sample_grids: list[str] | None = None,
    timm_repo_id: str | None = None,
):
    """The ``huggingface_hub.ModelCard`` of a model folder (see the module docstring)."""
    from huggingface_hub import ModelCard, ModelCardData

    from . import __version__

    metrics = metrics or {}
    method = (recipe or {}).get("method") or config.get("method") or "unknown"
    info = method_info(method)
    classifier = is_classifier_config(config)
    dataset = (metrics.get("dataset") or {}).get("name") or ((recipe or {}).get("data") or {}).get("dataset") or "unknown"
    backbone = config.get("backbone", "unknown")
    model_name = f"hybridcl-{method}-{backbone}-{os.path.basename(str(dataset).rstrip('/'))}"
    hub_dataset = hub_dataset_id(str(dataset))
    results = eval_results(metrics)
    license_id = (((recipe or {}).get("eval") or {}).get("card_license")) or "apache-2.0"
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification" if classifier else "image-feature-extraction",
        tags=["hf_hybridcl", method, "contrastive-learning", "timm-backbone"],
        datasets=[hub_dataset] if hub_dataset else None,
        license=license_id,
        model_name=model_name,
        eval_results=results or None,
    )
    kind = "classifier (backbone + linear layer)" if classifier else "encoder (backbone + projection head)"
    evaluated = metrics.get("evaluation", {}).get("command") or "the fast evaluation at the end of training"
    summary = (
        f"A `{config.get('architectures', ['HybridCLModel'])[0]}` {kind} trained with hf_hybridcl's `{method}` "
        f"method on `{dataset}`. Backbone: timm `{backbone}` ({config.get('backbone_kwargs')}), trained from scratch "
        f"(no base model), input {config.get('image_size')}x{config.get('image_size')} with "
        f"{config.get('num_channels')} channel(s)."
    )
    card_plots = [{"title": PLOT_TITLES.get(k, k), "path": p} for k, p in (plots or {}).items()]
    timm_note = (
        f"A backbone-only timm export is at [`{timm_repo_id}`](https://huggingface.co/{timm_repo_id}): "
        f'`timm.create_model("hf-hub:{timm_repo_id}", pretrained=True)` gives the pooled features.'
        if timm_repo_id else ""
    )
    return ModelCard.from_template(
        card_data,
        template_str=resources.files("hf_hybridcl").joinpath(CARD_TEMPLATE).read_text(),
        title=f"{info['title']} · {backbone} · {dataset}",
        summary=summary,
        method_title=info["title"],
        method_description=info["description"],
        method_paper=info["paper"],
        citation=info.get("citation") or "",
        usage_code=usage_code(config, repo_id or REPO_PLACEHOLDER),
        timm_note=timm_note,
        recipe_table=recipe_table(recipe, config),
        metrics_intro=(
            f"Measured by {evaluated} on the held-out `{metrics.get('dataset', {}).get('name', dataset)}` test split "
            f"(hf_hybridcl {metrics.get('library_version', __version__)}, {metrics.get('machine', 'unknown machine')}). "
            f"Every number below is also in the `model-index` metadata and in `metrics.json` (with full settings)."
            if metrics.get("protocols") else "This folder has not been evaluated yet: run `hybridcl evaluate` on it."
        ),
        metrics_table=metrics_tables(metrics),
        plots=card_plots,
        sample_grids=sample_grids or [],
        limitations=(
            f"The numbers are CPU-sized protocols on `{dataset}`; they describe this checkpoint, not the paper's "
            f"headline results. The model has only seen `{dataset}`-like images at "
            f"{config.get('image_size')}x{config.get('image_size')}; expect poor transfer elsewhere without fine-tuning."
        ),
        library_version=__version__,
    )


def card_plots(model_dir: str, metrics: dict[str, Any]) -> dict[str, str]:
    """The plots of ``metrics`` that exist inside ``model_dir`` (so the card's links resolve)."""
    return {k: p for k, p in (metrics.get("plots") or {}).items() if os.path.isfile(os.path.join(model_dir, p))}


def write_card(model_dir: str, recipe: dict[str, Any] | None, metrics: dict[str, Any] | None,
               repo_id: str | None = None, sample_grids: list[str] | None = None,
               timm_repo_id: str | None = None) -> str:
    """Render the card for ``model_dir`` and write ``README.md`` atomically; returns its path."""
    with open(os.path.join(model_dir, "config.json")) as handle:
        config = json.load(handle)
    card = render_card(config, recipe, metrics, repo_id, card_plots(model_dir, metrics or {}), sample_grids, timm_repo_id)
    path = os.path.join(model_dir, "README.md")
    atomic_write_text(path, str(card))
    return path


def write_minimal_card(model_dir: str, recipe: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The card written at the end of training (called by ``Trainer.finish``): the full card with the
    training-time metrics; ``hybridcl evaluate`` regenerates it with the whole suite."""
    write_card(model_dir, recipe, metrics)


# ------------------------------------------------------------------------------------------------ timm export
def export_timm(model_dir: str, out_dir: str, license_id: str = "apache-2.0", source: str | None = None) -> str:
    """A backbone-only folder in timm's Hub format (``config.json`` + ``model.safetensors`` under timm's names),
    loadable with ``timm.create_model("hf-hub:<repo>", pretrained=True)``; written atomically."""
    from timm.models._hub import save_for_hf
    from transformers import AutoConfig, AutoModel

    from . import HybridCLModel  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "cifar_stem", False):
        raise HybridCLError(
            "this model uses hf_hybridcl's CIFAR stem (a 3x3 conv replacing timm's stem), which timm cannot rebuild "
            "from its own arguments; push without --timm-export and load it with transformers instead."
        )
    model = AutoModel.from_pretrained(model_dir)
    backbone = model.backbone.eval()
    data_config = {
        "input_size": (config.num_channels, config.image_size, config.image_size),
        "mean": tuple(config.image_mean), "std": tuple(config.image_std),
        "interpolation": "bilinear", "crop_pct": 1.0,
    }
    with atomic_directory(out_dir) as tmp:
        save_for_hf(backbone, tmp, safe_serialization=True, data_config=data_config)
        cfg_path = os.path.join(tmp, "config.json")
        with open(cfg_path) as handle:
            timm_cfg = json.load(handle)
        timm_cfg["num_classes"] = 0
        timm_cfg.get("model_args", {}).pop("num_classes", None)
        pretrained = timm_cfg.setdefault("pretrained_cfg", {})
        for stale in ("tag", "hf_hub_id", "url", "origin_url", "paper_ids"):
            pretrained.pop(stale, None)  # describe these weights, not timm's registry entry
        pretrained["license"] = license_id
        timm_cfg["hf_hybridcl"] = {"method": config.method, "source": source or os.path.abspath(model_dir)}
        atomic_write_json(cfg_path, timm_cfg)
        atomic_write_text(os.path.join(tmp, "README.md"), _timm_card(timm_cfg, config.method, source, license_id))
    return out_dir


def _timm_card(timm_cfg: dict[str, Any], method: str, source: str | None, license_id: str) -> str:
    data = {"library_name": "timm", "license": license_id, "tags": ["timm", "image-feature-extraction", "hf_hybridcl", method]}
    args = ", ".join(f"{k}={v!r}" for k, v in timm_cfg.get("model_args", {}).items())
    return (
        f"---\n{yaml.safe_dump(data, sort_keys=False)}---\n\n# {timm_cfg['architecture']} backbone ({method}, hf_hybridcl)\n\n"
        f"Backbone-only export of {f'`{source}`' if source else 'an hf_hybridcl model'} in timm's format "
        f"(`num_classes=0`: the model returns pooled features). timm arguments: `{args}`.\n\n"
        f"```python\nimport timm\nmodel = timm.create_model(\"hf-hub:<this repo id>\", pretrained=True)\n```\n"
    )


# ------------------------------------------------------------------------------------------------------- push
def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def push_source(path: str) -> tuple[str, str | None]:
    """``(model_dir, run_dir or None)`` for a run directory or a model folder."""
    from .evaluate.resolve import is_model_folder, is_run_dir

    if not os.path.isdir(path):
        raise HybridCLError(f"{path} is not a folder; give a run directory (with model/) or a model folder.")
    path = os.path.abspath(path)
    if is_run_dir(path):
        return os.path.join(path, "model"), path
    if is_model_folder(path):
        return path, None
    raise HybridCLError(f"{path} holds no model (config.json + *.safetensors, or a model/ folder); train or give another path.")


def check_repo_id(repo_id: str) -> None:
    from .evaluate.resolve import REPO_ID_PATTERN

    if not REPO_ID_PATTERN.match(repo_id or ""):
        raise HybridCLError(f"--repo-id {repo_id!r} must look like ORG/NAME (letters, digits, '-', '_', '.').")


def ensure_can_push() -> str:
    """The token to push with; a clear error (before any network call) when offline or not logged in."""
    from huggingface_hub import get_token

    from .evaluate.resolve import hub_offline

    if hub_offline():
        raise HybridCLError(
            "cannot push: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set. Unset it and retry, or use --dry-run to "
            "prepare and check the upload folder without uploading."
        )
    token = get_token()
    if not token:
        raise HybridCLError(
            "cannot push: no Hugging Face token found. Run `hf auth login` or set HF_TOKEN, then retry "
            "(--dry-run prepares the folder without one)."
        )
    return token


def check_upload_folder(folder: str) -> None:
    """Raise if the folder misses a file the Hub copy needs to load by name."""
    missing = [name for name in REQUIRED_UPLOAD_FILES if not os.path.isfile(os.path.join(folder, name))]
    if not any(n == "model.safetensors" or n == "model.safetensors.index.json" for n in os.listdir(folder)):
        missing.append("model.safetensors")
    if missing:
        raise HybridCLError(f"upload folder {folder} is missing {missing}; re-export the model (hybridcl train/evaluate).")
    config = _read_json(os.path.join(folder, "config.json")) or {}
    needed = {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"}
    absent = sorted(needed - set(config.get("auto_map") or {}))
    if absent:
        raise HybridCLError(f"config.json in {folder} has no auto_map entry for {absent}; re-save the model with hf_hybridcl.")


def prepare_upload_folder(model_dir: str, run_dir: str | None, repo_id: str, out_dir: str,
                          timm_repo_id: str | None = None) -> str:
    """Copy the model folder, its plots and metrics.json into ``out_dir`` and render the card for ``repo_id``."""
    base = run_dir or model_dir
    metrics = _read_json(os.path.join(base, "metrics.json")) or _read_json(os.path.join(model_dir, "metrics.json"))
    recipe = None
    if run_dir and os.path.isfile(os.path.join(run_dir, "recipe.yaml")):
        with open(os.path.join(run_dir, "recipe.yaml")) as handle:
            recipe = yaml.safe_load(handle)
    with atomic_directory(out_dir) as tmp:
        for name in os.listdir(model_dir):
            src = os.path.join(model_dir, name)
            if name.startswith(".") or name == "README.md" or not os.path.isfile(src):
                continue
            shutil.copy2(src, os.path.join(tmp, name))
        for plot in (metrics or {}).get("plots", {}).values():
            src = next((p for p in (os.path.join(model_dir, plot), os.path.join(base, plot)) if os.path.isfile(p)), None)
            if src:
                os.makedirs(os.path.dirname(os.path.join(tmp, plot)), exist_ok=True)
                shutil.copy2(src, os.path.join(tmp, plot))
        if metrics:
            atomic_write_json(os.path.join(tmp, "metrics.json"), metrics)
        write_card(tmp, recipe, metrics, repo_id=repo_id, timm_repo_id=timm_repo_id)
        check_upload_folder(tmp)
    return out_dir


def _card_license(run_dir: str | None) -> str | None:
    if not run_dir or not os.path.isfile(os.path.join(run_dir, "recipe.yaml")):
        return None
    with open(os.path.join(run_dir, "recipe.yaml")) as handle:
        recipe = yaml.safe_load(handle) or {}
    return (recipe.get("eval") or {}).get("card_license")


def run_push(args) -> dict[str, Any]:
    """``hybridcl push DIR --repo-id ORG/NAME [--private] [--revision B] [--timm-export] [--dry-run]``."""
    check_repo_id(args.repo_id)
    model_dir, run_dir = push_source(args.path)
    token = None if args.dry_run else ensure_can_push()
    staging_root = os.path.join(run_dir or os.path.dirname(model_dir), "hub_upload")
    upload_dir = os.path.join(staging_root, args.repo_id.replace("/", "--"))
    timm_repo_id = f"{args.repo_id}-timm" if args.timm_export else None
    prepare_upload_folder(model_dir, run_dir, args.repo_id, upload_dir, timm_repo_id)
    timm_dir = None
    if args.timm_export:
        license_id = _card_license(run_dir) or "apache-2.0"
        timm_dir = export_timm(model_dir, upload_dir + "-timm", license_id, source=args.repo_id)
    summary = {"upload_dir": upload_dir, "timm_dir": timm_dir, "repo_id": args.repo_id, "uploaded": False}
    print(f"upload folder: {upload_dir} ({', '.join(sorted(os.listdir(upload_dir)))})")
    if timm_dir:
        print(f"timm folder:   {timm_dir} -> {timm_repo_id}")
    if args.dry_run:
        print("dry run: nothing uploaded.")
        return summary
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    targets = [(args.repo_id, upload_dir)] + ([(timm_repo_id, timm_dir)] if timm_dir else [])
    for repo_id, folder in targets:
        url = api.create_repo(repo_id, private=args.private or None, exist_ok=True)
        if args.revision:
            api.create_branch(repo_id, branch=args.revision, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, revision=args.revision,
                          commit_message=f"Upload {os.path.basename(folder)} with hf_hybridcl")
        print(f"pushed {folder} to {url}")
    summary["uploaded"] = True
    return summary
