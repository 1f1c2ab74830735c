"""A frozen classifier teacher for knowledge distillation inside a contrastive loss (GenSCL, METHODS.md 5b/5c).

The teacher's soft labels ``softmax(logits / kd_tau)`` (Hinton et al. 2015) are computed in eval mode without
gradients and used as label distributions. Two sources:

- a folder or hub id loadable with ``AutoModelForImageClassification.from_pretrained`` (e.g. the ``model/`` folder
  of a ``hybridcl train --method ce`` run);
- ``timm:NAME:CHECKPOINT``: ``timm.create_model(NAME, pretrained=False, num_classes=C, in_chans=...)`` with the
  state dict of the local file ``CHECKPOINT`` (timm or plain PyTorch checkpoint).

The teacher is a sub-module of the method (so it moves with it to the device) but never trains: its parameters
have ``requires_grad = False`` and it stays in eval mode even when the method is put in training mode. It is not part
of the exported model. Inputs arrive normalised with the student's mean/std; when the teacher declares its own
normalisation or input size (HybridCL config or image processor), the images are re-normalised and resized for it.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import HybridCLError

TIMM_PREFIX = "timm:"


class Teacher(nn.Module):
    """Frozen classifier returning soft labels ``softmax(logits / kd_tau)``."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        kd_tau: float = 1.0,
        input_mean: list[float] | None = None,
        input_std: list[float] | None = None,
        teacher_mean: list[float] | None = None,
        teacher_std: list[float] | None = None,
        image_size: int | None = None,
        hf_output: bool = False,
    ):
        super().__init__()
        if kd_tau <= 0:
            raise HybridCLError(f"method_args.kd_tau must be positive, got {kd_tau}; the GenSCL paper uses 1.0.")
        self.model = model.eval().requires_grad_(False)
        self.num_classes, self.kd_tau, self.image_size, self.hf_output = int(num_classes), float(kd_tau), image_size, hf_output
        # (x * in_std + in_mean - t_mean) / t_std, folded into one affine map per channel (identity if unknown)
        scale, shift = _renormalisation(input_mean, input_std, teacher_mean, teacher_std)
        self.register_buffer("in_scale", scale, persistent=False)
        self.register_buffer("in_shift", shift, persistent=False)

    def train(self, mode: bool = True) -> "Teacher":
        """The teacher always stays in eval mode (BatchNorm statistics and dropout frozen)."""
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.in_scale + self.in_shift
        if self.image_size is not None and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        out = self.model(pixel_values=x) if self.hf_output else self.model(x)
        logits = out.logits if hasattr(out, "logits") else out
        if logits.shape[-1] != self.num_classes:
            raise HybridCLError(
                f"the teacher predicts {logits.shape[-1]} classes but the data has {self.num_classes}; "
                f"use a teacher trained on the same label set."
            )
        return F.softmax(logits.float() / self.kd_tau, dim=-1)


def _renormalisation(in_mean, in_std, t_mean, t_std) -> tuple[torch.Tensor, torch.Tensor]:
    if None in (in_mean, in_std, t_mean, t_std) or len(t_mean) != len(in_mean):
        return torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1)
    in_mean, in_std = torch.tensor(in_mean, dtype=torch.float32), torch.tensor(in_std, dtype=torch.float32)
    t_mean, t_std = torch.tensor(t_mean, dtype=torch.float32), torch.tensor(t_std, dtype=torch.float32)
    scale, shift = in_std / t_std, (in_mean - t_mean) / t_std
    return scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)


def load_teacher(
    spec: str,
    num_classes: int,
    num_channels: int,
    kd_tau: float = 1.0,
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
) -> Teacher:
    """Build a :class:`Teacher` from ``spec``: a folder / hub id, or ``timm:NAME:CHECKPOINT`` (module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise HybridCLError(
            f"method_args.teacher must be a model folder, a hub id or 'timm:NAME:CHECKPOINT', got {spec!r}."
        )
    if spec.startswith(TIMM_PREFIX):
        model = _load_timm(spec, num_classes, num_channels)
        return Teacher(model, num_classes, kd_tau)
    model, mean, std, size = _load_auto(spec)
    return Teacher(model, num_classes, kd_tau, input_mean, input_std, mean, std, size, hf_output=True)


def _load_timm(spec: str, num_classes: int, num_channels: int) -> nn.Module:
    import timm

    parts = spec[len(TIMM_PREFIX):].split(":", 1)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise HybridCLError(f"teacher {spec!r} must look like 'timm:NAME:CHECKPOINT' (e.g. timm:resnet18:/path/teacher.pth).")
    name, checkpoint = parts
    if not timm.is_model(name):
        raise HybridCLError(f"teacher backbone {name!r} is not a timm model name; list them with timm.list_models().")
    if not os.path.isfile(checkpoint):
        raise HybridCLError(f"teacher checkpoint {checkpoint!r} not found; give the path of a local .pth/.safetensors file.")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=num_channels)
    state = _read_state_dict(checkpoint)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise HybridCLError(
            f"teacher checkpoint {checkpoint} does not match timm {name!r} with {num_classes} classes and "
            f"{num_channels} input channel(s): {first}"
        ) from None
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_auto(spec: str) -> tuple[nn.Module, list[float] | None, list[float] | None, int | None]:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_hybridcl  # noqa: F401  (registers the hybridcl Auto classes)

    try:
        model = AutoModelForImageClassification.from_pretrained(spec)
    except (OSError, ValueError) as err:
        offline = any(os.environ.get(v, "") in ("1", "true", "True") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        where = "is not a local folder and the hub is offline (HF_HUB_OFFLINE)" if offline and not os.path.isdir(spec) else "could not be loaded"
        raise HybridCLError(
            f"teacher {spec!r} {where}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. Give a local "
            f"folder saved with save_pretrained (e.g. the model/ folder of a `hybridcl train --method ce` run), "
            f"'timm:NAME:CHECKPOINT', or go online to download a hub id."
        ) from None
    config = model.config
    mean, std, size = getattr(config, "image_mean", None), getattr(config, "image_std", None), None
    if getattr(config, "model_type", None) == "hybridcl":
        size = int(config.image_size)
    else:
        try:
            processor = AutoImageProcessor.from_pretrained(spec)
            mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
            size = _processor_side(processor)
        except (OSError, ValueError):
            pass  # no processor saved: the teacher gets the student's inputs unchanged
    return model, mean, std, size


def _processor_side(processor) -> int | None:
    """The square input side an image processor produces (crop size, else resize height), if it says."""
    for attr in ("crop_size", "size"):
        if attr == "crop_size" and not getattr(processor, "do_center_crop", False):
            continue
        value = getattr(processor, attr, None)
        height = value.get("height") if isinstance(value, dict) else getattr(value, "height", None)
        if height:
            return int(height)
    return None


__all__ = ["TIMM_PREFIX", "Teacher", "load_teacher"]
