"""Registry of training methods: name -> "module:Class". Adding a method is one line here."""

from __future__ import annotations

import importlib

from ..errors import HybridCLError
from .base import Batch, HybridMethod, StepContext, TrainContext

METHODS: dict[str, str] = {
    "simclr": "hf_hybridcl.methods.simclr:SimCLR",
    "supcon": "hf_hybridcl.methods.supcon:SupCon",
    "ce": "hf_hybridcl.methods.ce:CrossEntropy",
    "moco": "hf_hybridcl.methods.moco:MoCoV2",
    "genscl": "hf_hybridcl.methods.genscl:GenSCL",
    "hdge": "hf_hybridcl.methods.hdge:HDGE",
    "ebclr": "hf_hybridcl.methods.ebclr:EBCLR",
    "gcrl": "hf_hybridcl.methods.gcrl:GCRL",
    "robustcl": "hf_hybridcl.methods.robustcl:RobustCL",
}


def available_methods() -> list[str]:
    """Names of the registered methods whose module is importable."""
    names = []
    for name in METHODS:
        try:
            get_method_class(name)
        except HybridCLError:
            continue
        names.append(name)
    return names


def get_method_class(name: str) -> type[HybridMethod]:
    if name not in METHODS:
        raise HybridCLError(f"unknown method {name!r}; choose one of {sorted(METHODS)} (`hybridcl methods` lists them).")
    module_name, class_name = METHODS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            raise HybridCLError(f"method {name!r} is registered but not implemented in this version.") from None
        raise
    return getattr(module, class_name)


__all__ = ["METHODS", "Batch", "HybridMethod", "StepContext", "TrainContext", "available_methods", "get_method_class"]
