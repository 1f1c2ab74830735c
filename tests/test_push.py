"""`hybridcl push` up to the network boundary, and the state after a push: a Hub-cache copy loads by name."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_hybridcl.cli import main
from tests.conftest import copy_run

REPO = "hybridcl-test/tiny-simclr"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BLOCKER = textwrap.dedent(
    """
    import sys


    class _BlockHybridCL:
        '''Pretend hf_hybridcl is not installed: the folder must load through its own remote code.'''

        def find_spec(self, name, path=None, target=None):
            if name == "hf_hybridcl" or name.startswith("hf_hybridcl."):
                raise ImportError(f"{name} is blocked for this test")
            return None


    sys.meta_path.insert(0, _BlockHybridCL())
    """
)
LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    mode, reference_path = sys.argv[1], sys.argv[2]
    if mode == "installed":
        import hf_hybridcl  # noqa: F401  registers the Auto classes
        remote = {}
    else:
        try:
            import hf_hybridcl  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("hf_hybridcl should not be importable here")
        remote = {"trust_remote_code": True}
    reference = json.load(open(reference_path))
    x = torch.tensor(reference["pixels"])
    model = AutoModel.from_pretrained("%(repo)s", **remote).eval()
    with torch.no_grad():
        pooled = model(pixel_values=x).pooler_output
    np.testing.assert_allclose(pooled.numpy(), np.array(reference["pooled"]), atol=1e-5)
    classifier = AutoModelForImageClassification.from_pretrained("%(repo)s", num_labels=10, **remote)
    assert classifier(pixel_values=x).logits.shape == (x.shape[0], 10)
    extractor = pipeline("image-feature-extraction", model="%(repo)s", **remote)
    features = extractor(Image.new("RGB", (40, 40), color=(90, 90, 90)))
    print("module", type(model).__module__)
    print("pipeline", np.array(features).shape)
    if mode == "installed":
        import timm
        backbone = timm.create_model("hf-hub:%(repo)s-timm", pretrained=True).eval()
        with torch.no_grad():
            out = backbone(x)
        np.testing.assert_allclose(out.numpy(), np.array(reference["pooled"]), atol=1e-5)
        print("timm", tuple(out.shape), backbone.num_classes)
    """
) % {"repo": REPO}


@pytest.fixture(scope="module")
def run_dir(simclr_run_template, tmp_path_factory):
    return copy_run(simclr_run_template, tmp_path_factory, "push")


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to create or upload a repository."""
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("a network call to the Hub was attempted")

    for name in ("create_repo", "upload_folder", "create_branch"):
        monkeypatch.setattr(HfApi, name, refuse)


@pytest.fixture(scope="module")
def dry_run(run_dir):
    assert main(["push", run_dir, "--repo-id", REPO, "--dry-run", "--timm-export"]) == 0
    upload = os.path.join(run_dir, "hub_upload", REPO.replace("/", "--"))
    return upload, upload + "-timm"


def test_dry_run_prepares_a_complete_folder(dry_run, no_network):
    upload, timm_dir = dry_run
    files = set(os.listdir(upload))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "metrics.json",
            "configuration_hybridcl.py", "modeling_hybridcl.py", "image_processing_hybridcl.py"} <= files
    with open(os.path.join(upload, "README.md")) as handle:
        card = handle.read()
    assert f'repo_id = "{REPO}"' in card and f"hf-hub:{REPO}-timm" in card
    with open(os.path.join(timm_dir, "config.json")) as handle:
        timm_cfg = json.load(handle)
    assert timm_cfg["architecture"] == "vit_tiny_patch16_224" and timm_cfg["num_classes"] == 0
    assert "num_classes" not in timm_cfg["model_args"] and timm_cfg["model_args"]["in_chans"] == 1
    assert timm_cfg["pretrained_cfg"]["input_size"] == [1, 16, 16]
    assert timm_cfg["pretrained_cfg"]["mean"] == [0.5] and timm_cfg["pretrained_cfg"]["std"] == [0.5]
    assert "tag" not in timm_cfg["pretrained_cfg"]


def test_dry_run_again_with_the_network_refused(run_dir, no_network):
    assert main(["push", run_dir, "--repo-id", REPO, "--dry-run"]) == 0


def test_offline_push_fails_before_any_network_call(run_dir, no_network, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", run_dir, "--repo-id", REPO]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_unauthenticated_push_fails_before_any_network_call(run_dir, no_network, monkeypatch, tmp_path, capsys):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "token"))
    assert main(["push", run_dir, "--repo-id", REPO]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err


def test_bad_repo_id_is_a_clear_error(run_dir, no_network, capsys):
    assert main(["push", run_dir, "--repo-id", "not a repo", "--dry-run"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err


def _place_in_cache(cache: str, repo_id: str, folder: str) -> None:
    """The layout huggingface_hub leaves after downloading ``repo_id`` at commit ``COMMIT``."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, os.path.join(repo, "snapshots", COMMIT))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(COMMIT)


@pytest.mark.parametrize("mode", ["installed", "not_installed"])
def test_pushed_folder_loads_by_name_from_the_hub_cache(dry_run, run_dir, tmp_path, mode):
    from hf_hybridcl import HybridCLModel

    upload, timm_dir = dry_run
    home = tmp_path / "hf_home"
    cache = str(home / "hub")
    _place_in_cache(cache, REPO, upload)
    _place_in_cache(cache, REPO + "-timm", timm_dir)
    model = HybridCLModel.from_pretrained(os.path.join(run_dir, "model")).eval()
    pixels = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        pooled = model(pixel_values=pixels).pooler_output
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"pixels": pixels.tolist(), "pooled": pooled.tolist()}))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(home), HF_HUB_CACHE=cache)
    env.pop("HF_MODULES_CACHE", None)
    if mode == "not_installed":
        blocker = tmp_path / "blocker"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(BLOCKER)
        env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", LOADER, mode, str(reference)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    module = next(line for line in proc.stdout.splitlines() if line.startswith("module"))
    if mode == "installed":
        assert "hf_hybridcl" in module
        assert "timm (3, 32) 0" in proc.stdout
    else:
        assert "hf_hybridcl" not in module and "transformers_modules" in module
    shape = next(line for line in proc.stdout.splitlines() if line.startswith("pipeline"))
    assert shape.startswith("pipeline (1,") and shape.endswith(", 32)")  # token features of the tiny ViT
