"""hf_hybridcl: hybrid discriminative / generative / contrastive representation learning as Hugging Face models.

Importing the package registers ``model_type = "hybridcl"`` with ``AutoConfig``, ``AutoModel``,
``AutoModelForImageClassification`` and ``AutoImageProcessor``.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_hybridcl import HybridCLConfig
from .image_processing_hybridcl import HybridCLImageProcessor
from .modeling_hybridcl import (
    HybridCLForImageClassification,
    HybridCLModel,
    HybridCLModelOutput,
    HybridCLPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(HybridCLConfig.model_type, HybridCLConfig, exist_ok=True)
AutoModel.register(HybridCLConfig, HybridCLModel, exist_ok=True)
AutoModelForImageClassification.register(HybridCLConfig, HybridCLForImageClassification, exist_ok=True)
AutoImageProcessor.register(HybridCLConfig, image_processor_classes={"torchvision": HybridCLImageProcessor}, exist_ok=True)

__all__ = [
    "HybridCLConfig",
    "HybridCLImageProcessor",
    "HybridCLModel",
    "HybridCLModelOutput",
    "HybridCLPreTrainedModel",
    "HybridCLForImageClassification",
    "__version__",
]
