"""Image processor saved beside hf_hybridcl weights.

Hub-facing and self-contained (imports only torch and transformers). It resizes to the model's
square input size, rescales to [0, 1], normalises with the model's mean/std and, unlike the stock ViT
processor, converts the *channels* to what the model expects: pipelines always hand over RGB images, so a
grayscale model gets luminance, and an RGB model gets a grayscale image repeated over three channels.
"""

from __future__ import annotations

import os
import shutil

import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs

PROCESSOR_FILE = "image_processing_hybridcl.py"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL's convert("L") uses


class HybridCLImageProcessorKwargs(ImagesKwargs, total=False):
    num_channels: int


class HybridCLImageProcessor(TorchvisionBackend):
    """Resize + rescale + normalise + channel conversion for [`HybridCLModel`] inputs."""

    valid_kwargs = HybridCLImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 32, "width": 32}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    num_channels = 3
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False

    def process_image(self, image, *args, **kwargs) -> torch.Tensor:
        """Convert one image to a channels-first tensor with ``self.num_channels`` channels."""
        kwargs["do_convert_rgb"] = False
        if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
            image = image.convert("L" if self.num_channels == 1 else "RGB")
        tensor = super().process_image(image, *args, **kwargs)
        return _match_channels(tensor, self.num_channels)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """Also copy this file; the ``AutoImageProcessor`` entry of ``auto_map`` lives in the model's config.json."""
        result = super().save_pretrained(save_directory, *args, **kwargs)
        here = os.path.dirname(os.path.abspath(__file__))
        shutil.copyfile(os.path.join(here, PROCESSOR_FILE), os.path.join(save_directory, PROCESSOR_FILE))
        return result

    def to_dict(self) -> dict:
        """Leave ``image_processor_type`` out: without it, ``AutoImageProcessor`` resolves the class through the
        registered local class or, where hf_hybridcl is not installed, the ``auto_map`` of config.json."""
        output = super().to_dict()
        output.pop("image_processor_type", None)
        return output

    @classmethod
    def from_model_config(cls, config) -> "HybridCLImageProcessor":
        """The processor that matches a `HybridCLConfig` (size, channels, mean/std)."""
        return cls(
            size={"height": config.image_size, "width": config.image_size},
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            num_channels=config.num_channels,
        )


def _match_channels(image: torch.Tensor, num_channels: int) -> torch.Tensor:
    channels = image.shape[0]
    if channels == 4:  # drop alpha
        image, channels = image[:3], 3
    if channels == num_channels:
        return image
    if num_channels == 1 and channels == 3:
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(3, 1, 1)
        gray = (image.float() * weights).sum(dim=0, keepdim=True)
        return gray.round().clamp(0, 255).to(image.dtype) if not image.is_floating_point() else gray.to(image.dtype)
    if num_channels == 3 and channels == 1:
        return image.expand(3, *image.shape[1:]).contiguous()
    raise ValueError(f"cannot convert an image with {channels} channels to {num_channels}; give 1- or 3-channel images.")


__all__ = ["HybridCLImageProcessor"]
