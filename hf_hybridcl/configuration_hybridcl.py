"""Configuration of the exported hf_hybridcl models.

Hub-facing and self-contained: this file is copied next to saved weights so that
``AutoConfig.from_pretrained(..., trust_remote_code=True)`` works where hf_hybridcl is
not installed. It may import only ``transformers`` and the standard library.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedConfig


class HybridCLConfig(PreTrainedConfig):
    r"""Configuration of [`HybridCLModel`] and [`HybridCLForImageClassification`].

    Args:
        backbone (`str`): any timm model name, built with ``pretrained=False, num_classes=0``.
        backbone_kwargs (`dict`): keyword arguments for ``timm.create_model`` (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``drop_path_rate``, ...). ``in_chans`` and, for
            backbones that take it, ``img_size`` are kept in sync with ``num_channels`` and ``image_size``.
        image_size (`int`): side of the square input images.
        num_channels (`int`): 1 (grayscale) or 3 (RGB).
        image_mean, image_std (`list[float]`): normalisation the image processor applies.
        cifar_stem (`bool`): replace a ResNet's 7x7/stride-2 stem and max-pool by a 3x3/stride-1 conv,
            the usual choice for 32x32 and smaller images.
        proj_hidden_dim, proj_output_dim, proj_num_layers (`int`): MLP projection head; the output is
            L2-normalised. ``proj_num_layers = 0`` disables the head.
        proj_activation (`str`): hidden activation of the head: ``relu``, ``leaky_relu`` (slope 0.2, as EBCLR) or ``gelu``.
        proj_batch_norm (`bool`): batch normalisation after every hidden linear layer of the head (the SimCLR
            head, Chen et al. 2020 appendix B.9). It centres the batch inside the head; a freshly initialised ViT
            maps all images to nearly the same direction (mean pairwise cosine ~0.98 on the digits).
        method (`str`): the training method that produced the weights (provenance only).
        classifier_dropout (`float`): dropout before the classification layer.
    """

    model_type = "hybridcl"

    backbone: str = "vit_tiny_patch16_224"
    backbone_kwargs: dict[str, Any] | None = None
    image_size: int = 32
    num_channels: int = 3
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    cifar_stem: bool = False
    proj_hidden_dim: int = 512
    proj_output_dim: int = 128
    proj_num_layers: int = 2
    proj_activation: str = "relu"
    proj_batch_norm: bool = False
    method: str = "none"
    classifier_dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        kwargs_copy = dict(self.backbone_kwargs or {})
        if "in_chans" in kwargs_copy:
            self.num_channels = int(kwargs_copy["in_chans"])
        kwargs_copy["in_chans"] = int(self.num_channels)
        if "img_size" in kwargs_copy:
            img_size = kwargs_copy["img_size"]
            self.image_size = int(img_size[0] if isinstance(img_size, (list, tuple)) else img_size)
        self.backbone_kwargs = kwargs_copy
        if self.image_mean is None:
            self.image_mean = [0.5] * self.num_channels
        if self.image_std is None:
            self.image_std = [0.5] * self.num_channels
        self.image_mean = [float(v) for v in self.image_mean]
        self.image_std = [float(v) for v in self.image_std]
        super().__post_init__(**kwargs)
        self._check_consistency()

    def _check_consistency(self) -> None:
        """Fail at construction, with the reason, for settings that cannot work."""
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError("HybridCLConfig.backbone must be a timm model name, e.g. 'vit_tiny_patch16_224' or 'resnet18'.")
        if self.num_channels not in (1, 3):
            raise ValueError(f"num_channels (backbone_kwargs['in_chans']) must be 1 or 3, got {self.num_channels}.")
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size}.")
        for name in ("image_mean", "image_std"):
            values = getattr(self, name)
            if len(values) != self.num_channels:
                raise ValueError(
                    f"{name} has {len(values)} values but the model has {self.num_channels} channel(s); "
                    f"give one value per channel."
                )
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        patch = self.backbone_kwargs.get("patch_size")
        if patch is not None:
            patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
            if patch < 1 or self.image_size % patch != 0:
                raise ValueError(
                    f"patch_size {patch} does not divide image_size {self.image_size}: a ViT needs "
                    f"image_size to be a multiple of patch_size (e.g. image_size {patch * max(1, self.image_size // patch)})."
                )
        if self.proj_activation not in ("relu", "leaky_relu", "gelu"):
            raise ValueError(f"proj_activation must be relu, leaky_relu or gelu, got {self.proj_activation!r}.")
        if self.proj_num_layers < 0 or (self.proj_num_layers > 0 and (self.proj_output_dim < 1 or self.proj_hidden_dim < 1)):
            raise ValueError("projection head sizes must be positive (proj_num_layers=0 disables the head).")


__all__ = ["HybridCLConfig"]
