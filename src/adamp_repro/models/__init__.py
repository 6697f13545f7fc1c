"""Networks: any timm model by name, plus the CIFAR networks the paper's tables need.

Importing this package registers ``cifar_resnet20/32/56``, ``cifar_resnet18``,
``wide_resnet34_10_madry`` and ``wide_resnet10_2_madry`` with timm, so ``timm.create_model`` finds them, and the
language model ``causal_transformer`` (``transformer_lm``), which takes token ids (``input_kind``).
"""

from adamp_repro.models.cifar_resnet import CifarResNet
from adamp_repro.models.factory import (
    NormalizedModel,
    build_model,
    check_model_kwargs,
    check_model_name,
    close_model_names,
    input_kind,
)
from adamp_repro.models.transformer_lm import CausalTransformer
from adamp_repro.models.wide_resnet_madry import MadryWideResNet

__all__ = [
    "CausalTransformer",
    "CifarResNet",
    "MadryWideResNet",
    "NormalizedModel",
    "build_model",
    "check_model_kwargs",
    "check_model_name",
    "close_model_names",
    "input_kind",
]
