"""GCRL (METHODS.md 3j): quantiser, causal decoder, masking, bits/dim, sampling, save/load and the three arms."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from hf_hybridcl.errors import HybridCLError
from hf_hybridcl.generative import DecoderConfig, PixelDecoder, PixelQuantizer, sample_tokens
from hf_hybridcl.methods.base import TrainContext
from hf_hybridcl.methods.gcrl import (
    GCRL,
    encode_visible_patches,
    load_gcrl_decoder,
    num_kept_patches,
    random_keep_indices,
)

from .conftest import tiny_train_overrides

TINY_DECODER = {"decoder_width": 16, "decoder_depth": 1, "decoder_heads": 2, "sample_rows": 2, "samples_per_row": 2}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these models are tiny, and on a shared, oversubscribed CPU two OpenMP threads make the
    per-token sampling steps many times slower (measured ~50x at load 15 on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_gcrl(config, **hparams) -> GCRL:
    torch.manual_seed(0)
    return GCRL(config, {**TINY_DECODER, **hparams}, num_classes=10)


# ------------------------------------------------------------------------------------------------ quantiser
@pytest.mark.parametrize("channels,levels", [(1, 16), (3, 8), (1, 2)])
def test_uniform_round_trip_within_half_a_level(channels, levels):
    q = PixelQuantizer(channels, "uniform", levels)
    images = torch.rand(4, channels, 5, 6)
    tokens = q.encode(images)
    assert tokens.shape == (4, 30) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < q.vocab_size == levels**channels
    back = q.decode(tokens, 5, 6)
    assert (back - images).abs().max() <= 0.5 / (levels - 1) + 1e-6
    assert torch.equal(q.encode(back), tokens)  # decoded levels are fixed points


def test_uniform_token_combines_channels_most_significant_first():
    q = PixelQuantizer(3, "uniform", 8)
    pixel = torch.tensor([1.0, 0.0, 3 / 7]).view(1, 3, 1, 1)
    assert q.encode(pixel).item() == 7 * 64 + 0 * 8 + 3


def test_kmeans_palette_is_seeded_and_round_trips_to_palette_colours(digits):
    from hf_hybridcl.evaluate import pixel_tensor
    from hf_hybridcl.image_processing_hybridcl import HybridCLImageProcessor

    processor = HybridCLImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5], image_std=[0.5], num_channels=1)
    pixels = pixel_tensor(digits.test, processor) * 0.5 + 0.5
    a, b = PixelQuantizer(1, "kmeans", palette_size=8), PixelQuantizer(1, "kmeans", palette_size=8)
    with pytest.raises(HybridCLError, match="fit_palette"):
        a.encode(pixels[:2])
    a.fit_palette(pixels, seed=3, max_pixels=20_000)
    b.fit_palette(pixels, seed=3, max_pixels=20_000)
    assert torch.equal(a.palette, b.palette)
    tokens = a.encode(pixels[:10])
    assert int(tokens.max()) < 8
    back = a.decode(tokens, 16, 16)
    nearest = (pixels[:10].reshape(-1, 1) - a.palette.view(1, -1)).abs().min(dim=1).values
    assert torch.allclose((back.reshape(-1) - pixels[:10].reshape(-1)).abs(), nearest, atol=1e-6)


# ------------------------------------------------------------------------------------------------- decoder
def tiny_decoder(vocab: int = 16, seq: int = 12) -> PixelDecoder:
    torch.manual_seed(0)
    return PixelDecoder(DecoderConfig(vocab, seq, memory_dim=8, width=16, depth=2, heads=2)).eval()


def test_decoder_is_causal():
    decoder = tiny_decoder()
    tokens = torch.randint(0, 16, (3, 12))
    memory = torch.randn(3, 4, 8)
    base = decoder(tokens, memory)
    for t in (0, 5, 11):
        changed = tokens.clone()
        changed[:, t] = (changed[:, t] + 7) % 16
        out = decoder(changed, memory)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        if t + 1 < 12:
            assert not torch.allclose(out[:, t + 1], base[:, t + 1])


def test_cached_sampling_steps_match_teacher_forcing():
    decoder = tiny_decoder()
    memory = torch.randn(2, 3, 8)
    tokens = sample_tokens(decoder, 2, memory, temperature=1.0, seed=1)
    built = decoder.build_memory(memory, 2)
    caches = [{} for _ in decoder.blocks]
    with torch.no_grad():
        steps = torch.stack([decoder.step(tokens[:, i - 1] if i else None, i, built, caches) for i in range(12)], dim=1)
        forced = decoder(tokens, memory)
    assert torch.allclose(steps, forced, atol=1e-5)


def test_sampling_returns_valid_tokens_and_images(tiny_vit_config):
    method = tiny_gcrl(tiny_vit_config, gen_mask_ratio=1.0, levels=4)
    tokens = sample_tokens(method.generator.decoder, 5, None, temperature=0.7, seed=0)
    assert tokens.shape == (5, 256) and int(tokens.min()) >= 0 and int(tokens.max()) < 4
    images = method.generator.sample_images(3, temperature=1.5)
    assert images.shape == (3, 1, 16, 16)
    assert torch.allclose(images * 3, (images * 3).round(), atol=1e-6)  # on the 4-level grid
    with pytest.raises(HybridCLError, match="temperature"):
        sample_tokens(method.generator.decoder, 1, None, temperature=0.0)


# ------------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 0.9, 1.0])
def test_mask_keeps_round_of_visible_share(tiny_vit_config, ratio):
    method = tiny_gcrl(tiny_vit_config)
    n = method.model.backbone.patch_embed.num_patches  # 16
    keep = random_keep_indices(4, n, ratio, generator=torch.Generator().manual_seed(0))
    expected = int(round((1 - ratio) * n))
    assert keep.shape == (4, expected) == (4, num_kept_patches(n, ratio))
    for row in keep:
        assert len(set(row.tolist())) == expected and all(0 <= i < n for i in row.tolist())
    if expected:
        tokens = encode_visible_patches(method.model, torch.randn(4, 1, 16, 16), keep)
        assert tokens.shape == (4, expected, method.model.backbone.embed_dim)


def test_keeping_every_patch_equals_the_plain_encoder(tiny_vit_config):
    method = tiny_gcrl(tiny_vit_config).eval()
    x = torch.randn(2, 1, 16, 16)
    keep = torch.arange(16).repeat(2, 1)
    tokens, _ = method.model.encode(x)
    assert torch.allclose(encode_visible_patches(method.model, x, keep), tokens[:, 1:], atol=1e-6)


def test_full_mask_makes_decoder_independent_of_the_image(tiny_vit_config):
    tokens = torch.randint(0, 16, (2, 256))
    a, b = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16)
    outputs = {}
    for ratio in (1.0, 0.75):
        method = tiny_gcrl(tiny_vit_config, gen_mask_ratio=ratio).eval()
        gen = method.generator
        run = lambda x: gen.decoder(tokens, gen.encoder_memory(method.model, x, torch.Generator().manual_seed(0)))  # noqa: E731
        outputs[ratio] = (run(a), run(b))
    assert torch.equal(*outputs[1.0])
    assert not torch.allclose(*outputs[0.75])  # the check above can fail: with visible patches the image matters


# ----------------------------------------------------------------------------------------------- bits / dim
@pytest.mark.parametrize("channels,kind,levels,palette,expected", [
    (1, "uniform", 16, None, 4.0),
    (3, "uniform", 8, None, 3.0),
    (3, "kmeans", 8, 64, 2.0),  # a palette token covers 3 sub-pixels: log2(64) / 3
])
def test_uniform_logits_give_log2_levels_bits_per_dim(channels, kind, levels, palette, expected):
    from hf_hybridcl import HybridCLConfig

    config = HybridCLConfig(
        backbone="vit_tiny_patch16_224", backbone_kwargs={"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2},
        image_size=8, num_channels=channels, proj_hidden_dim=16, proj_output_dim=8,
    )
    method = tiny_gcrl(config, gen_mask_ratio=1.0, quantizer=kind, levels=levels, palette_size=palette)
    if kind == "kmeans":
        method.generator.quantizer.fit_palette(torch.rand(500, channels), seed=0)
    torch.nn.init.zeros_(method.generator.decoder.head.weight)
    torch.nn.init.zeros_(method.generator.decoder.head.bias)
    result = method.generator.evaluate_bits_per_dim(torch.rand(5, channels, 8, 8) * 2 - 1, batch_size=2)
    assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-5)
    assert result["uniform_baseline_bits_per_dim"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------ method contract
def test_non_vit_backbone_is_refused():
    from hf_hybridcl import HybridCLConfig

    config = HybridCLConfig(backbone="resnet18", image_size=16, num_channels=1, proj_hidden_dim=16, proj_output_dim=8)
    with pytest.raises(HybridCLError, match="needs a timm ViT backbone"):
        GCRL(config, {}, num_classes=10)


@pytest.mark.parametrize("hparams,match", [
    ({"gen_mask_ratio": 1.5}, "gen_mask_ratio"),
    ({"use_decoder": False, "lambda_con": 0.0}, "nothing to train"),
    ({"quantizer": "vq"}, "quantizer"),
    ({"decoder_width": 10, "decoder_heads": 4}, "divisible"),
])
def test_bad_hparams_are_clear_errors(tiny_vit_config, hparams, match):
    with pytest.raises(HybridCLError, match=match):
        GCRL(tiny_vit_config, hparams, num_classes=10)


def test_artifacts_reload_to_identical_logits(tmp_path, tiny_vit_config, digits):
    method = tiny_gcrl(tiny_vit_config, quantizer="kmeans", palette_size=6)
    method.on_train_start(TrainContext(None, digits, None, {}, None, 1))
    views = [torch.rand(8, 1, 16, 16) * 2 - 1, torch.rand(8, 1, 16, 16) * 2 - 1]
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loss, logs = method.training_step({"views": views})
    loss.backward()
    optimizer.step()
    assert {"nt_xent", "gen_nll", "gen_bits_per_dim"} <= set(logs)
    paths = method.write_artifacts(str(tmp_path))
    assert os.path.isfile(tmp_path / "samples_gcrl.png") and str(tmp_path / "samples_gcrl.png") in paths
    loaded = load_gcrl_decoder(str(tmp_path))
    assert torch.equal(loaded.quantizer.palette, method.generator.quantizer.palette)
    method.eval()
    tokens = method.generator.tokens_of(views[0])
    memory = method.generator.encoder_memory(method.model, views[0], torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decoder(tokens, memory), method.generator.decoder(tokens, memory))


# --------------------------------------------------------------------------------------------- CLI and arms
def run_cli(out, *extra: str) -> dict:
    from hf_hybridcl.cli import main

    args = ["train", "--method", "gcrl", "--max-steps", "2", "--output-dir", str(out), *tiny_train_overrides(32)]
    args += [f"method_args.{k}={v}" for k, v in TINY_DECODER.items()] + ["method_args.levels=8", *extra]
    assert main(args) == 0
    with open(os.path.join(out, "metrics.json")) as handle:
        return json.load(handle)


def test_hybrid_trains_from_the_cli_and_exports(tmp_path, digits):
    from transformers import AutoModel

    import hf_hybridcl  # noqa: F401  (registers the Auto classes)
    from hf_hybridcl.evaluate import pixel_tensor, processor_for

    out = tmp_path / "hybrid"
    metrics = run_cli(out)
    bpd = metrics["protocols"]["bits_per_dim"]
    assert 0 < bpd["value"] <= 3.5 and "conditional" in bpd["settings"]["likelihood"]
    assert {"linear_probe", "knn"} <= set(metrics["protocols"])
    assert os.path.isfile(out / "samples_gcrl.png") and os.path.isfile(out / "gcrl_decoder" / "model.safetensors")
    encoder = AutoModel.from_pretrained(out / "model").eval()
    generator = load_gcrl_decoder(str(out))
    test_pixels = pixel_tensor(digits.test, processor_for(encoder))
    again = generator.evaluate_bits_per_dim(test_pixels, encoder, batch_size=256, seed=0)
    assert again["bits_per_dim"] == pytest.approx(bpd["value"], abs=1e-5)
    with open(out / "train_log.jsonl") as handle:
        assert {"nt_xent", "gen_nll"} <= set(json.loads(handle.readlines()[-1]))


def test_generative_only_and_contrastive_only_arms_run(tmp_path):
    gen = run_cli(tmp_path / "gen", "method_args.lambda_con=0", "method_args.gen_mask_ratio=1.0")
    assert "unconditional" in gen["protocols"]["bits_per_dim"]["settings"]["likelihood"]
    with open(tmp_path / "gen" / "train_log.jsonl") as handle:
        assert "nt_xent" not in json.loads(handle.readlines()[-1])
    con = run_cli(tmp_path / "con", "method_args.use_decoder=false")
    assert "bits_per_dim" not in con["protocols"] and "linear_probe" in con["protocols"]
    assert not os.path.exists(tmp_path / "con" / "gcrl_decoder")
    assert math.isfinite(con["protocols"]["linear_probe"]["value"])
