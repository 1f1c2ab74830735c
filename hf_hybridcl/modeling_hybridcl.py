"""The exported hf_hybridcl models: a timm backbone with a projection head or a classifier.

Hub-facing and self-contained: this file is copied next to saved weights so that
``AutoModel.from_pretrained(..., trust_remote_code=True)`` works where hf_hybridcl is not
installed. It imports only torch, timm, transformers and the configuration file.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from .configuration_hybridcl import HybridCLConfig

# Files that make a saved folder loadable without hf_hybridcl installed, and where each Auto class points.
# The processor is declared here, in config.json, rather than in preprocessor_config.json: pipelines probe
# AutoVideoProcessor, which would otherwise turn the processor entry into a trust_remote_code prompt.
HUB_FILES = ("configuration_hybridcl.py", "modeling_hybridcl.py", "image_processing_hybridcl.py")
AUTO_MAP = {
    "AutoConfig": "configuration_hybridcl.HybridCLConfig",
    "AutoModel": "modeling_hybridcl.HybridCLModel",
    "AutoModelForImageClassification": "modeling_hybridcl.HybridCLForImageClassification",
    "AutoImageProcessor": "image_processing_hybridcl.HybridCLImageProcessor",
}


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-sum_c t_c log softmax(logits)_c``, mean over the batch: cross-entropy against label distributions
    ``targets`` (B, C), e.g. Mixup labels or HDGE's label smoothing. Lives here because this file is copied into
    every saved folder and must not import hf_hybridcl; the training losses use it from here."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


@dataclass
class HybridCLModelOutput(ModelOutput):
    """Output of [`HybridCLModel`].

    Args:
        last_hidden_state: backbone tokens ``(B, N, D)`` for transformers or feature map ``(B, C, H, W)`` for CNNs.
        pooler_output: the pooled representation ``(B, D)`` used by linear probes and kNN.
        projection: L2-normalised projection-head output ``(B, P)`` used by contrastive losses
            (``None`` when the config has no head).
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    projection: torch.FloatTensor | None = None


def build_backbone(config: HybridCLConfig) -> nn.Module:
    """Create the timm backbone named by ``config.backbone`` without downloading anything."""
    if not timm.is_model(config.backbone):
        raise ValueError(
            f"Unknown timm backbone {config.backbone!r}. List valid names with "
            f"`python -c \"import timm; print(timm.list_models('*vit*'))\"` (any pattern works)."
        )
    kwargs = dict(config.backbone_kwargs)
    try:
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **_with_img_size(kwargs, config))
    except TypeError as err:
        # CNN families do not take img_size; only retry when we added it ourselves.
        if "img_size" not in str(err) or "img_size" in kwargs:
            raise ValueError(f"timm could not build {config.backbone!r} with backbone_kwargs {kwargs}: {err}") from err
        backbone = timm.create_model(config.backbone, pretrained=False, num_classes=0, **kwargs)
    if config.cifar_stem:
        _apply_cifar_stem(backbone, config)
    return backbone


def _with_img_size(kwargs: dict, config: HybridCLConfig) -> dict:
    out = dict(kwargs)
    out.setdefault("img_size", config.image_size)
    return out


def _apply_cifar_stem(backbone: nn.Module, config: HybridCLConfig) -> None:
    """Swap a ResNet stem (7x7 stride-2 conv + max-pool) for a 3x3 stride-1 conv, as CIFAR ResNets do."""
    conv1 = getattr(backbone, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(backbone, "maxpool"):
        raise ValueError(
            f"cifar_stem=True needs a ResNet-style backbone with a single `conv1` and a `maxpool` "
            f"(e.g. 'resnet18'); {config.backbone!r} has none. Set cifar_stem=False."
        )
    stem = nn.Conv2d(conv1.in_channels, conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=conv1.bias is not None)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    if stem.bias is not None:
        nn.init.zeros_(stem.bias)
    backbone.conv1 = stem
    backbone.maxpool = nn.Identity()


_HEAD_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True),
    "gelu": nn.GELU,
}


class HybridCLProjectionHead(nn.Module):
    """MLP projection head (Linear[-BatchNorm]-activation repeated, last layer linear); the output is L2-normalised
    in the model."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str = "relu", batch_norm: bool = False
    ):
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(_HEAD_ACTIVATIONS[activation]())
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class HybridCLPreTrainedModel(PreTrainedModel):
    """Shared loading, saving, initialisation and input checks of the hf_hybridcl models."""

    config_class = HybridCLConfig
    config: HybridCLConfig
    base_model_prefix = "hybridcl"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def _build_backbone(self) -> None:
        self.backbone = build_backbone(self.config)
        for module in self.backbone.modules():
            module._hybridcl_from_timm = True  # keep timm's own initialisation in _init_weights
        self._strict_image_size = hasattr(self.backbone, "patch_embed") and not getattr(
            self.backbone, "dynamic_img_size", False
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise our heads only; timm modules keep timm's initialisation, and their
        non-persistent buffers are refilled (they are not in the checkpoint)."""
        if hasattr(module, "init_non_persistent_buffers"):
            module.init_non_persistent_buffers()
        if getattr(module, "_hybridcl_from_timm", False):
            return
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs) -> None:
        """Toggle timm's own activation checkpointing of the backbone blocks."""
        if not hasattr(self.backbone, "set_grad_checkpointing"):
            raise ValueError(f"timm backbone {self.config.backbone!r} does not support gradient checkpointing.")
        self.backbone.set_grad_checkpointing(enable)
        self.gradient_checkpointing = enable

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raise a ValueError naming the expected shape when ``pixel_values`` cannot be fed to the backbone."""
        c, s = self.config.num_channels, self.config.image_size
        expected = f"(batch, {c}, {s}, {s})"
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a 4-D tensor of shape {expected}, got {shape}.")
        if pixel_values.shape[1] != c:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channel(s) but the model expects {c}: shape {expected}, "
                f"got {tuple(pixel_values.shape)}. Use the model's image processor, which converts the channels."
            )
        if self._strict_image_size and tuple(pixel_values.shape[-2:]) != (s, s):
            raise ValueError(
                f"pixel_values is {pixel_values.shape[-2]}x{pixel_values.shape[-1]} but the model expects {s}x{s}: "
                f"shape {expected}. Resize with the model's image processor."
            )

    def encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone tokens/feature map and the pooled representation (timm's ``forward_head(pre_logits=True)``)."""
        self.check_pixel_values(pixel_values)
        features = self.backbone.forward_features(pixel_values)
        pooled = self.backbone.forward_head(features, pre_logits=True)
        return features, pooled

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Save weights and config plus ``auto_map`` for the Auto classes and the hub-facing files, so the
        folder loads with ``trust_remote_code=True`` where hf_hybridcl is not installed."""
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        auto_map.update(AUTO_MAP)
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)
        here = os.path.dirname(os.path.abspath(__file__))
        for name in HUB_FILES:
            shutil.copyfile(os.path.join(here, name), os.path.join(save_directory, name))


class HybridCLModel(HybridCLPreTrainedModel):
    """Encoder exported by every hf_hybridcl method: timm backbone + L2-normalised projection head."""

    def __init__(self, config: HybridCLConfig):
        super().__init__(config)
        self._build_backbone()
        self.num_features = self.backbone.num_features
        if config.proj_num_layers > 0:
            self.projection = HybridCLProjectionHead(
                self.num_features, config.proj_hidden_dim, config.proj_output_dim, config.proj_num_layers,
                config.proj_activation, config.proj_batch_norm,
            )
        else:
            self.projection = None
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs) -> HybridCLModelOutput | tuple:
        features, pooled = self.encode(pixel_values)
        projection = F.normalize(self.projection(pooled), dim=-1) if self.projection is not None else None
        output = HybridCLModelOutput(last_hidden_state=features, pooler_output=pooled, projection=projection)
        return output if return_dict is not False else output.to_tuple()


class HybridCLForImageClassification(HybridCLPreTrainedModel):
    """Backbone + linear classifier. Shares the ``backbone`` attribute with [`HybridCLModel`], so an encoder
    folder loads into it with the backbone unchanged and a freshly initialised classifier."""

    def __init__(self, config: HybridCLConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self._build_backbone()
        self.num_features = self.backbone.num_features
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(self.num_features, config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        """``labels``: class indices ``(B,)`` or label distributions ``(B, num_labels)`` (Mixup/soft targets)."""
        _, pooled = self.encode(pixel_values)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            if labels.is_floating_point() and labels.shape == logits.shape:
                loss = soft_cross_entropy(logits, labels)
            else:
                loss = F.cross_entropy(logits.float(), labels.long().view(-1))
        output = ImageClassifierOutput(loss=loss, logits=logits)
        return output if return_dict is not False else output.to_tuple()


__all__ = ["HybridCLPreTrainedModel", "HybridCLModel", "HybridCLForImageClassification", "HybridCLModelOutput"]
