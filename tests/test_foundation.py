"""Issue 2: the exported model classes, the hub round trip, the processor and clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

from hf_hybridcl import HybridCLConfig, HybridCLForImageClassification, HybridCLImageProcessor, HybridCLModel
from hf_hybridcl.evaluate.features import pixel_tensor

from tests.conftest import TINY_VIT

BACKBONES = {
    "vit": dict(backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY_VIT), image_size=16),
    "resnet": dict(backbone="resnet18", cifar_stem=True, image_size=16),
}

BLOCK_HYBRIDCL = textwrap.dedent(
    """
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "hf_hybridcl" or name.startswith("hf_hybridcl."):
                raise ImportError("hf_hybridcl is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def save_folder(model, path) -> None:
    model.save_pretrained(path)
    HybridCLImageProcessor.from_model_config(model.config).save_pretrained(path)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_save_load_bit_identical(tmp_path, kind, channels):
    config = HybridCLConfig(num_channels=channels, proj_hidden_dim=32, proj_output_dim=16, **BACKBONES[kind])
    model = HybridCLModel(config).eval()
    x = torch.randn(3, channels, 16, 16)
    before = model(x)
    save_folder(model, tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is HybridCLModel
    after = loaded(x)
    for name in ("last_hidden_state", "pooler_output", "projection"):
        assert torch.equal(getattr(before, name), getattr(after, name)), name
    assert torch.allclose(after.projection.norm(dim=-1), torch.ones(3), atol=1e-5)
    saved = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "configuration_hybridcl.py",
            "modeling_hybridcl.py", "image_processing_hybridcl.py"} <= saved
    auto_map = AutoConfig.from_pretrained(tmp_path).auto_map
    assert {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"} <= set(auto_map)


def test_batch_norm_head_round_trip_keeps_running_statistics(tmp_path):
    """``proj_batch_norm``: Linear-BatchNorm-ReLU-Linear head; its running statistics are saved and reloaded."""
    config = HybridCLConfig(proj_hidden_dim=32, proj_output_dim=16, proj_batch_norm=True, num_channels=1, **BACKBONES["vit"])
    model = HybridCLModel(config)
    assert [type(m).__name__ for m in model.projection.layers] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    model.train()
    model(torch.randn(8, 1, 16, 16))  # one training forward moves the running statistics
    batch_norm = model.projection.layers[1]
    assert int(batch_norm.num_batches_tracked) == 1 and not torch.equal(batch_norm.running_mean, torch.zeros(32))
    model.eval()
    x = torch.randn(3, 1, 16, 16)
    before = model(x).projection
    save_folder(model, tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.proj_batch_norm is True
    torch.testing.assert_close(loaded.projection.layers[1].running_var, batch_norm.running_var, rtol=0, atol=0)
    assert torch.equal(loaded(x).projection, before)
    assert [type(m).__name__ for m in HybridCLModel(HybridCLConfig(**BACKBONES["vit"])).projection.layers] == [
        "Linear", "ReLU", "Linear"]  # off by default: existing folders load unchanged


def test_remote_code_loads_without_hf_hybridcl(tmp_path):
    config = HybridCLConfig(num_channels=1, proj_hidden_dim=32, proj_output_dim=16, **BACKBONES["vit"])
    model = HybridCLModel(config).eval()
    save_folder(model, tmp_path / "model")
    x = torch.randn(2, 1, 16, 16)
    torch.save(x, tmp_path / "x.pt")
    torch.save(model(x).pooler_output, tmp_path / "y.pt")
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(BLOCK_HYBRIDCL)
    script = textwrap.dedent(
        f"""
        import torch
        try:
            import hf_hybridcl
            raise SystemExit("hf_hybridcl should not be importable here")
        except ImportError:
            pass
        from transformers import AutoModel, AutoModelForImageClassification
        d = {str(tmp_path / 'model')!r}
        x = torch.load({str(tmp_path / 'x.pt')!r})
        m = AutoModel.from_pretrained(d, trust_remote_code=True).eval()
        assert "transformers_modules" in type(m).__module__, type(m).__module__
        assert torch.equal(m(x).pooler_output, torch.load({str(tmp_path / 'y.pt')!r}))
        c = AutoModelForImageClassification.from_pretrained(d, trust_remote_code=True, num_labels=5).eval()
        assert c(x).logits.shape == (2, 5)
        assert torch.equal(c.backbone.patch_embed.proj.weight, m.backbone.patch_embed.proj.weight)
        print("REMOTE_OK")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "block"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "REMOTE_OK" in result.stdout, result.stderr[-3000:]


def test_encoder_folder_into_classifier_and_one_step_lowers_loss(tmp_path, digits):
    config = HybridCLConfig(num_channels=1, proj_hidden_dim=32, proj_output_dim=16, **BACKBONES["vit"])
    encoder = HybridCLModel(config)
    save_folder(encoder, tmp_path)
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path, num_labels=10)
    assert type(classifier) is HybridCLForImageClassification
    for name, tensor in encoder.backbone.state_dict().items():
        assert torch.equal(tensor, classifier.backbone.state_dict()[name]), name
    assert classifier.classifier.weight.shape == (10, encoder.num_features)
    assert classifier.classifier.weight.abs().sum() > 0  # initialised, not garbage zeros/NaN
    assert torch.isfinite(classifier.classifier.weight).all()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    pixels = pixel_tensor(digits.train, processor)[:128]
    labels = torch.as_tensor(digits.train.labels[:128])
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.05)
    classifier.train()
    loss_before = classifier(pixel_values=pixels, labels=labels).loss
    loss_before.backward()
    optimizer.step()
    with torch.no_grad():
        loss_after = classifier(pixel_values=pixels, labels=labels).loss
    assert loss_after < loss_before


def test_pipelines_on_digits(tmp_path, digits):
    config = HybridCLConfig(num_channels=1, proj_hidden_dim=32, proj_output_dim=16, **BACKBONES["vit"],
                            id2label={i: str(i) for i in range(10)})
    model = HybridCLForImageClassification(config)
    save_folder(model, tmp_path)
    images = [digits.test.image(i) for i in range(3)]
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    features = np.asarray(extractor(images[0], pool=True))
    assert features.shape == (1, model.num_features) and np.isfinite(features).all()
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier(images, top_k=3)
    assert len(predictions) == 3
    for top in predictions:
        assert {p["label"] for p in top} <= {str(i) for i in range(10)}
        assert abs(sum(p["score"] for p in classifier(images[0], top_k=10)) - 1.0) < 1e-4


def test_processor_converts_channels_and_size():
    gray = HybridCLImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5], num_channels=1)
    rgb = HybridCLImageProcessor(size={"height": 16, "width": 16}, num_channels=3)
    from PIL import Image

    colour = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8), mode="RGB")
    mono = Image.fromarray(np.full((8, 8), 255, dtype=np.uint8), mode="L")
    assert gray(colour, return_tensors="pt")["pixel_values"].shape == (1, 1, 16, 16)
    assert rgb(mono, return_tensors="pt")["pixel_values"].shape == (1, 3, 16, 16)
    white = gray(mono, return_tensors="pt")["pixel_values"]
    assert torch.allclose(white, torch.ones_like(white))  # (1 - 0.5) / 0.5


def test_clear_errors_for_bad_input():
    model = HybridCLModel(HybridCLConfig(num_channels=1, **BACKBONES["vit"]))
    with pytest.raises(ValueError, match=r"expects 1.*\(batch, 1, 16, 16\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expects 16x16.*\(batch, 1, 16, 16\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="4-D tensor"):
        model(torch.randn(1, 16, 16))
    with pytest.raises(ValueError, match=r"timm.list_models"):
        HybridCLModel(HybridCLConfig(backbone="not_a_real_backbone_xyz"))
    with pytest.raises(ValueError, match="does not divide image_size"):
        HybridCLConfig(backbone="vit_tiny_patch16_224", backbone_kwargs={"patch_size": 5}, image_size=16)
    with pytest.raises(ValueError, match="1 or 3"):
        HybridCLConfig(num_channels=2)
    with pytest.raises(ValueError, match="cifar_stem"):
        HybridCLModel(HybridCLConfig(backbone="vit_tiny_patch16_224", backbone_kwargs=dict(TINY_VIT), image_size=16, cifar_stem=True))


def test_init_keeps_timm_initialisation_and_gradient_checkpointing_toggles():
    torch.manual_seed(0)
    model = HybridCLModel(HybridCLConfig(num_channels=1, **BACKBONES["vit"]))
    # timm initialises ViT position embeddings with std 0.02 trunc-normal and LayerNorm weight ones;
    # the heads get our initialisation (std initializer_range, zero bias)
    assert 0.005 < model.backbone.pos_embed.std().item() < 0.05
    assert torch.all(model.projection.layers[0].bias == 0)
    model.activation_checkpointing_enable()
    assert model.backbone.grad_checkpointing is True
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    model.train()
    model(x).projection.sum().backward()
    assert x.grad is not None
    model.activation_checkpointing_disable()
    assert model.backbone.grad_checkpointing is False
