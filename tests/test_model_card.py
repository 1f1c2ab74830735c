"""The model card: parses with huggingface_hub, its model-index equals metrics.json, its snippet runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import copy_run
from hf_hybridcl.cli import main

METHODS = ("simclr", "supcon", "ce", "moco", "genscl", "hdge", "ebclr", "gcrl", "robustcl")


@pytest.fixture(scope="module")
def run_dir(simclr_run_template, tmp_path_factory):
    return copy_run(simclr_run_template, tmp_path_factory, "card")


@pytest.fixture(scope="module")
def training_card(run_dir):
    """The card as training wrote it (read before the evaluation regenerates it)."""
    from huggingface_hub import ModelCard

    return ModelCard.load(os.path.join(run_dir, "model", "README.md"))


@pytest.fixture(scope="module")
def evaluated(run_dir, training_card):
    # overrides before the options: the shared parser does not take positionals after options
    args = ["evaluate", run_dir, "eval.linear_epochs=5", "--protocols", "linear,knn,calibration,corruptions"]
    assert main(args) == 0
    from huggingface_hub import ModelCard

    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    return ModelCard.load(os.path.join(run_dir, "model", "README.md")), metrics


def _model_index_values(card) -> dict[str, float]:
    return {result.metric_config: result.metric_value for result in card.data.eval_results or []}


def _metrics_values(metrics) -> dict[str, float]:
    return {
        f"{protocol}.{key}": value
        for protocol, result in metrics["protocols"].items() if "skipped" not in result
        for key, value in result["values"].items() if isinstance(value, (int, float))
    }


def test_training_writes_the_full_card(training_card, run_dir):
    assert training_card.data.pipeline_tag == "image-feature-extraction"
    with open(os.path.join(run_dir, "metrics.json")) as handle:
        metrics = json.load(handle)
    assert _model_index_values(training_card) == _metrics_values(metrics)  # training-time linear probe + kNN
    assert "## Training recipe" in training_card.text


def test_metadata(evaluated):
    card, _ = evaluated
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction"
    assert {"hf_hybridcl", "simclr"} <= set(data.tags)
    assert data.license == "apache-2.0"
    assert data.datasets is None  # the embedded digits are not a Hub data set
    assert data.model_name.startswith("hybridcl-simclr-")


def test_model_index_holds_the_metrics_json_values(evaluated):
    card, metrics = evaluated
    expected = _metrics_values(metrics)
    assert "calibration.ece" in expected and "corruptions.gaussian_blur.s3" in expected
    assert _model_index_values(card) == expected
    for result in card.data.eval_results:
        assert result.dataset_split == "test" and result.task_type == "image-classification"


def test_body_describes_method_metrics_and_plots(evaluated):
    card, metrics = evaluated
    text = card.text
    assert "Chen, Kornblith, Norouzi, Hinton" in text and "@inproceedings{chen2020simclr" in text
    assert f"| calibration | {metrics['protocols']['calibration']['value']:.4f} |" in text
    assert "![Reliability diagram (calibration)](plots/reliability.png)" in text


def test_usage_snippet_runs_as_written(evaluated, run_dir):
    card, _ = evaluated
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0]
    assert 'repo_id = "ORG/NAME"' in code and "trust_remote_code=True" in code
    code = code.replace('"ORG/NAME"', repr(os.path.join(run_dir, "model")))  # a local copy, as the card says
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch.Size([1, 32])" in proc.stdout  # pooled features of the tiny ViT (embed_dim 32)


def test_every_method_has_a_description_and_citation():
    from hf_hybridcl.hub import method_info

    for method in METHODS:
        info = method_info(method)
        assert len(info["description"]) > 100 and info["paper"], method
        assert info["citation"].startswith("@") or method == "ce", method
