"""GCRL: hybrid generative-contrastive representation learning, the variant of METHODS.md 3j.

Kim, Kim & Lee 2021 (arXiv:2106.06162) train one transformer encoder-decoder with a contrastive and a likelihood
loss; their code and details are unavailable, so this is our documented re-derivation:

- encoder: the timm ViT of :class:`HybridCLModel`; contrastive term = NT-Xent (SimCLR form, METHODS.md 1) between
  the projections of the two augmented views, negatives from every process (``global_nt_xent``);
- generative term: a small causal transformer (``generative.PixelDecoder``) models the quantised pixels of
  **view 1** in raster order (iGPT-style) while cross-attending to the encoder's patch tokens of a *masked* copy of
  view 1. Why view 1: the loop hands every method the same two strong views, and modelling a view the encoder also
  contrasts keeps one augmentation pipeline; the price is that the decoder learns p(x) of augmented images while
  bits/dim is measured on clean test images (a mild train/test shift, stated in the metric's settings);
- masking drops patch tokens (MAE-style): ``patch_embed`` + position embedding, keep a random subset of
  ``round((1 - gen_mask_ratio) * N)`` patch tokens per image (plus the class token), run the blocks and the final
  norm, and hand the visible patch tokens to the decoder. Dropping, rather than zeroing pixels, hides the patches
  completely: a zeroed patch would still be a token (a grey patch the encoder sees, which on digits differs from the
  black background) and would cost compute;
- ``gen_mask_ratio = 1`` skips the encoder on the generative path: the decoder sees only its learned null memory
  token, so it is an unconditional autoregressive model and its bits/dim is an honest likelihood of p(x);
  below 1 the bits/dim is a conditional likelihood p(x | visible patches), averaged over *all* pixels;
- loss ``L = L_gen + lambda_con * L_con``. Arms of the reproduction: generative only (``lambda_con = 0``),
  contrastive only (``use_decoder = false``, which is SimCLR scaled by ``lambda_con``), hybrid (defaults).

The exported model is the encoder; the decoder and the quantiser settings are written beside the run
(``run_dir/gcrl_decoder/``) with a sample grid (``run_dir/samples_gcrl.png``); :func:`load_gcrl_decoder` restores them.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import nn

from ..errors import HybridCLError
from ..generative import (
    DecoderConfig,
    PixelDecoder,
    PixelQuantizer,
    bits_per_dim,
    load_generator,
    sample_tokens,
    save_generator,
    save_image_grid,
    token_nll,
)
from ..generative.quantize import QUANTIZERS
from ..modeling_hybridcl import HybridCLModel
from .base import Batch, HybridMethod, TrainContext
from ..losses import global_nt_xent

DECODER_DIR = "gcrl_decoder"
SAMPLES_FILE = "samples_gcrl.png"


# ---------------------------------------------------------------------------------------------- masked encoding
def check_vit_backbone(backbone: nn.Module, name: str) -> None:
    """GCRL masks patch tokens, which needs a timm ``VisionTransformer``; anything else is a clear error."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(backbone, VisionTransformer):
        raise HybridCLError(
            f"method 'gcrl' needs a timm ViT backbone (it hides patch tokens from the encoder), got {name!r}; "
            f"use e.g. --backbone vit_tiny_patch16_224 with model.backbone_kwargs.patch_size=4."
        )


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Visible patches on the generative path: ``round((1 - mask_ratio) * num_patches)``."""
    return int(round((1.0 - mask_ratio) * num_patches))


def random_keep_indices(
    batch_size: int, num_patches: int, mask_ratio: float, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sorted indices ``(B, K)`` of the visible patches of each image, a uniformly random subset of size K."""
    keep = num_kept_patches(num_patches, mask_ratio)
    noise = torch.rand(batch_size, num_patches, generator=generator)
    return noise.argsort(dim=1)[:, :keep].sort(dim=1).values.to(device)


def encode_visible_patches(encoder: HybridCLModel, pixel_values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Encoder output tokens ``(B, K, D)`` of the visible patches only (hidden patches are dropped before the
    blocks, MAE-style; prefix tokens such as the class token are kept for the blocks and dropped afterwards)."""
    encoder.check_pixel_values(pixel_values)
    vit = encoder.backbone
    x = vit._pos_embed(vit.patch_embed(pixel_values))
    prefix = vit.num_prefix_tokens
    patches = x[:, prefix:]
    visible = torch.gather(patches, 1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    x = vit.norm_pre(torch.cat([x[:, :prefix], visible], dim=1))
    x = vit.norm(vit.blocks(x))
    return x[:, prefix:]


# ------------------------------------------------------------------------------------------- the generative half
class GCRLGenerator(nn.Module):
    """Quantiser + causal decoder with the image settings they need: the part of GCRL saved beside a run."""

    def __init__(
        self,
        decoder: PixelDecoder,
        quantizer: PixelQuantizer,
        image_size: int,
        image_mean: list[float],
        image_std: list[float],
        gen_mask_ratio: float,
    ):
        super().__init__()
        if decoder.config.seq_len != image_size * image_size or decoder.config.vocab_size != quantizer.vocab_size:
            raise HybridCLError("decoder sequence length / vocabulary do not match the image size / quantiser.")
        self.decoder = decoder
        self.quantizer = quantizer
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.gen_mask_ratio = float(gen_mask_ratio)

    @property
    def conditional(self) -> bool:
        return self.gen_mask_ratio < 1.0

    def likelihood_description(self) -> str:
        if not self.conditional:
            return "unconditional p(x) (gen_mask_ratio=1: the decoder sees no encoder tokens)"
        return (
            f"conditional p(x | visible patches): the decoder cross-attends to the encoder tokens of a random "
            f"{1 - self.gen_mask_ratio:.0%} of the patches of the same image; averaged over all pixels"
        )

    def settings(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size, "image_mean": self.image_mean, "image_std": self.image_std,
            "gen_mask_ratio": self.gen_mask_ratio,
        }

    def to_unit(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Undo the processor's normalisation: normalised pixels -> [0, 1]."""
        mean = torch.tensor(self.image_mean, device=pixel_values.device, dtype=pixel_values.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, device=pixel_values.device, dtype=pixel_values.dtype).view(1, -1, 1, 1)
        return (pixel_values * std + mean).clamp(0.0, 1.0)

    def tokens_of(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, C, H, W)`` -> pixel tokens ``(B, H*W)`` in raster order."""
        return self.quantizer.encode(self.to_unit(pixel_values))

    def encoder_memory(
        self, encoder: HybridCLModel | None, pixel_values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Encoder tokens of the visible patches, or ``None`` when nothing is visible (unconditional)."""
        if not self.conditional:
            return None
        if encoder is None:
            raise HybridCLError("this decoder is conditional (gen_mask_ratio < 1): pass the run's encoder (run_dir/model).")
        num_patches = encoder.backbone.patch_embed.num_patches
        if num_kept_patches(num_patches, self.gen_mask_ratio) == 0:
            return None
        keep = random_keep_indices(pixel_values.shape[0], num_patches, self.gen_mask_ratio, pixel_values.device, generator)
        return encode_visible_patches(encoder, pixel_values, keep)

    def forward(
        self, pixel_values: torch.Tensor, encoder: HybridCLModel | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced ``(logits (B, T, V), tokens (B, T))`` of normalised images."""
        tokens = self.tokens_of(pixel_values)
        return self.decoder(tokens, self.encoder_memory(encoder, pixel_values, generator)), tokens

    @torch.no_grad()
    def evaluate_bits_per_dim(
        self, pixel_values: torch.Tensor, encoder: HybridCLModel | None = None, batch_size: int = 256, seed: int = 0
    ) -> dict[str, float]:
        """Mean bits per sub-pixel of normalised images (see generative.metrics); masks drawn with ``seed``."""
        device = self.decoder.head.weight.device
        generator = torch.Generator().manual_seed(int(seed))
        modes = [(m, m.training) for m in (self.decoder, encoder) if m is not None]
        for module, _ in modes:
            module.eval()
        total, count = 0.0, 0
        for start in range(0, pixel_values.shape[0], batch_size):
            x = pixel_values[start : start + batch_size].to(device)
            logits, tokens = self(x, encoder, generator)
            total += float(token_nll(logits, tokens, reduction="sum"))
            count += tokens.numel()
        for module, was_training in modes:
            module.train(was_training)
        nll = total / count
        channels = self.quantizer.num_channels
        return {
            "bits_per_dim": bits_per_dim(nll, channels),
            "nll_nats_per_token": nll,
            "uniform_baseline_bits_per_dim": math.log2(self.quantizer.vocab_size) / channels,
        }

    @torch.no_grad()
    def sample_images(
        self,
        num_samples: int,
        encoder: HybridCLModel | None = None,
        pixel_values: torch.Tensor | None = None,
        temperature: float = 1.0,
        seed: int = 0,
    ) -> torch.Tensor:
        """Samples in [0, 1], ``(num_samples, C, H, W)``. A conditional decoder needs the encoder and one normalised
        image per sample (``pixel_values``); its visible patches are drawn with ``seed``."""
        memory = None
        if self.conditional:
            if pixel_values is None or pixel_values.shape[0] != num_samples:
                raise HybridCLError("a conditional GCRL decoder samples completions: give one image per sample (pixel_values).")
            was_training = encoder.training if encoder is not None else False
            if encoder is not None:
                encoder.eval()
            memory = self.encoder_memory(encoder, pixel_values, torch.Generator().manual_seed(int(seed)))
            if encoder is not None:
                encoder.train(was_training)
        tokens = sample_tokens(self.decoder, num_samples, memory, temperature=temperature, seed=seed)
        return self.quantizer.decode(tokens, self.image_size, self.image_size)


def load_gcrl_decoder(run_dir: str, device: torch.device | str = "cpu") -> GCRLGenerator:
    """The decoder + quantiser saved by a GCRL run (``run_dir/gcrl_decoder``), in eval mode. A conditional decoder
    (``gen_mask_ratio < 1``) also needs the run's encoder: ``HybridCLModel.from_pretrained(run_dir + "/model")``."""
    directory = run_dir if os.path.basename(os.path.normpath(run_dir)) == DECODER_DIR else os.path.join(run_dir, DECODER_DIR)
    decoder, quantizer, config = load_generator(directory, device)
    image = config["image"]
    generator = GCRLGenerator(decoder, quantizer, image["image_size"], image["image_mean"], image["image_std"], image["gen_mask_ratio"])
    return generator.to(device).eval()


# ------------------------------------------------------------------------------------------------------ method
class GCRL(HybridMethod):
    name = "gcrl"
    description = "ViT encoder with NT-Xent + causal pixel decoder on masked encoder tokens (variant of METHODS.md 3j)."
    paper = "Kim, Kim & Lee 2021, Hybrid Generative-Contrastive Representation Learning, arXiv:2106.06162"
    view_kind = "two_strong"
    # the arms leave parts unused (lambda_con=0: projection head; gen_mask_ratio=1: encoder on the generative path)
    find_unused_parameters = True
    default_hparams = {
        "tau": 0.5,  # NT-Xent temperature (SimCLR recipe value)
        "lambda_con": 1.0,
        "use_decoder": True,
        "gen_mask_ratio": 0.75,
        "quantizer": "uniform",  # or "kmeans"
        "levels": None,  # uniform levels per channel; None: 16 grayscale, 8 RGB
        "palette_size": None,  # k-means colours; None: levels ** channels
        "palette_seed": 0,
        "decoder_width": 64,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "decoder_mlp_ratio": 2.0,
        "decoder_dropout": 0.0,
        "sample_temperature": 1.0,
        "sample_rows": 8,  # rows of the sample grid (conditional: one test image per row)
        "samples_per_row": 4,
        "eval_seed": 0,  # masks of the test bits/dim and the sample grid
        "eval_batch_size": 256,
    }

    def build(self) -> None:
        hp, config = self.hparams, self.model_config
        if not 0.0 <= hp["gen_mask_ratio"] <= 1.0:
            raise HybridCLError(f"method_args.gen_mask_ratio must be in [0, 1], got {hp['gen_mask_ratio']}.")
        if hp["lambda_con"] < 0:
            raise HybridCLError(f"method_args.lambda_con must be >= 0, got {hp['lambda_con']}.")
        if not hp["use_decoder"] and hp["lambda_con"] == 0:
            raise HybridCLError("use_decoder=false and lambda_con=0 leave nothing to train; set one of them.")
        if hp["quantizer"] not in QUANTIZERS:
            raise HybridCLError(f"method_args.quantizer must be one of {QUANTIZERS}, got {hp['quantizer']!r}.")
        if self.uses_contrastive and config.proj_num_layers < 1:
            raise HybridCLError("the contrastive term needs a projection head; set model.proj_num_layers >= 1.")
        self.model = HybridCLModel(config)
        check_vit_backbone(self.model.backbone, config.backbone)
        self.generator: GCRLGenerator | None = None
        self._grid_images: torch.Tensor | None = None
        if hp["use_decoder"]:
            quantizer = PixelQuantizer(config.num_channels, hp["quantizer"], hp["levels"], hp["palette_size"])
            decoder = PixelDecoder(
                DecoderConfig(
                    vocab_size=quantizer.vocab_size,
                    seq_len=config.image_size**2,
                    memory_dim=self.model.backbone.embed_dim,
                    width=int(hp["decoder_width"]),
                    depth=int(hp["decoder_depth"]),
                    heads=int(hp["decoder_heads"]),
                    mlp_ratio=float(hp["decoder_mlp_ratio"]),
                    dropout=float(hp["decoder_dropout"]),
                )
            )
            self.generator = GCRLGenerator(
                decoder, quantizer, config.image_size, config.image_mean, config.image_std, hp["gen_mask_ratio"]
            )

    @property
    def uses_contrastive(self) -> bool:
        return self.hparams["lambda_con"] > 0 or not self.hparams["use_decoder"]

    # -- training ----------------------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> None:
        """Fit the k-means palette on clean training pixels (fixed seed) and keep a few test images for the grid."""
        if self.generator is None:
            return
        from ..image_processing_hybridcl import HybridCLImageProcessor

        processor = HybridCLImageProcessor.from_model_config(self.model_config)
        if self.generator.quantizer.kind == "kmeans":
            train = ctx.splits.train
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(self.hparams["palette_seed"])))
            images = [train.image(int(i)) for i in order[:2000]]
            pixels = processor(images, return_tensors="pt")["pixel_values"]
            self.generator.quantizer.fit_palette(self.generator.to_unit(pixels), seed=int(self.hparams["palette_seed"]))
        test = ctx.splits.test
        rows = min(int(self.hparams["sample_rows"]), len(test))
        if rows:
            self._grid_images = processor([test.image(i) for i in range(rows)], return_tensors="pt")["pixel_values"]

    def training_step(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = batch["views"][:2]
        loss = v1.new_zeros(())
        logs: dict[str, float] = {}
        if self.uses_contrastive:
            z1, z2 = self.model(torch.cat([v1, v2], dim=0)).projection.chunk(2, dim=0)
            con = global_nt_xent(z1, z2, self.hparams["tau"])
            loss = loss + self.hparams["lambda_con"] * con
            logs["nt_xent"] = con.item()
        if self.generator is not None:
            logits, tokens = self.generator(v1, self.model)
            gen = token_nll(logits, tokens)
            loss = loss + gen
            logs["gen_nll"] = gen.item()
            logs["gen_bits_per_dim"] = bits_per_dim(gen.item(), self.model_config.num_channels)
        return loss, logs

    def export(self) -> HybridCLModel:
        return self.model

    # -- evaluation and artifacts ------------------------------------------------------------------------------
    def extra_metrics(self, splits: Any, device: torch.device) -> dict[str, dict]:
        """Test bits/dim of the decoder (conditional or unconditional, stated in the settings)."""
        if self.generator is None:
            return {}
        from ..evaluate.features import pixel_tensor
        from ..image_processing_hybridcl import HybridCLImageProcessor

        pixels = pixel_tensor(splits.test, HybridCLImageProcessor.from_model_config(self.model_config))
        self.to(device)
        result = self.generator.evaluate_bits_per_dim(
            pixels, self.model, batch_size=int(self.hparams["eval_batch_size"]), seed=int(self.hparams["eval_seed"])
        )
        quantizer = self.generator.quantizer
        return {
            "bits_per_dim": {
                "value": result["bits_per_dim"],
                "values": result,
                "settings": {
                    "likelihood": self.generator.likelihood_description(),
                    "gen_mask_ratio": self.generator.gen_mask_ratio,
                    "dimension": quantizer.describe_dimension(),
                    "quantizer": quantizer.kind,
                    "levels": quantizer.levels,
                    "vocab_size": quantizer.vocab_size,
                    "tokens_per_image": self.generator.decoder.config.seq_len,
                    "resolution": self.model_config.image_size,
                    "test_images": "clean, through the model's image processor (the decoder trained on augmented view 1)",
                    "mask_seed": int(self.hparams["eval_seed"]),
                },
                "dataset": splits.name,
                "split": "test",
            }
        }

    def write_artifacts(self, run_dir: str) -> list[str]:
        """``run_dir/gcrl_decoder/`` (config.json + model.safetensors) and the sample grid ``samples_gcrl.png``."""
        if self.generator is None:
            return []
        from ..io_utils import atomic_directory

        directory = os.path.join(run_dir, DECODER_DIR)
        image = {**self.generator.settings(), "num_channels": self.model_config.num_channels}
        extra = {
            "method": "gcrl",
            "image": image,
            "likelihood": self.generator.likelihood_description(),
            "encoder": "../model (HybridCLModel; needed when gen_mask_ratio < 1)",
        }
        with atomic_directory(directory) as tmp:
            save_generator(tmp, self.generator.decoder, self.generator.quantizer, extra)
        paths = [os.path.join(directory, name) for name in sorted(os.listdir(directory))]
        paths.append(self.write_sample_grid(os.path.join(run_dir, SAMPLES_FILE)))
        return paths

    @torch.no_grad()
    def write_sample_grid(self, path: str) -> str:
        """Unconditional: ``sample_rows x samples_per_row`` samples. Conditional: one test image per row, showing the
        quantised original, its visible patches (hidden ones grey) and ``samples_per_row`` completions."""
        gen, hp = self.generator, self.hparams
        rows, per_row, seed = int(hp["sample_rows"]), int(hp["samples_per_row"]), int(hp["eval_seed"])
        device = gen.decoder.head.weight.device
        temperature = float(hp["sample_temperature"])
        if not gen.conditional:
            samples = gen.sample_images(rows * per_row, temperature=temperature, seed=seed)
            return save_image_grid(samples, path, columns=per_row)
        if self._grid_images is None:
            raise HybridCLError("no images to condition the sample grid on; on_train_start stores them from the test split.")
        images = self._grid_images.to(device)
        rows = images.shape[0]
        repeated = images.repeat_interleave(per_row, dim=0)
        samples = gen.sample_images(rows * per_row, self.model, repeated, temperature=temperature, seed=seed)
        original = gen.quantizer.decode(gen.tokens_of(images), gen.image_size, gen.image_size)
        visible = self._visible_only(original, seed)
        cells = torch.cat([original.unsqueeze(1), visible.unsqueeze(1), samples.view(rows, per_row, *samples.shape[1:])], dim=1)
        return save_image_grid(cells.flatten(0, 1), path, columns=per_row + 2)

    def _visible_only(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The patches the decoder's encoder saw for the first sample of each row (hidden patches grey)."""
        patch = self.model.backbone.patch_embed.patch_size[0]
        grid = self.model_config.image_size // patch
        per_row = int(self.hparams["samples_per_row"])
        keep = random_keep_indices(images.shape[0] * per_row, grid * grid, self.generator.gen_mask_ratio, generator=torch.Generator().manual_seed(seed))
        keep = keep[::per_row]
        mask = torch.zeros(images.shape[0], grid * grid, device=images.device)
        mask.scatter_(1, keep.to(images.device), 1.0)
        mask = mask.view(-1, 1, grid, grid).repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)
        return images * mask + 0.5 * (1 - mask)
