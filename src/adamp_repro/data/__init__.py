"""Data sets, augmentation and per-rank batching: ``build_data(dataset_cfg, seed=...)``.

Two families (``dataset.family``):
- ``cifar``: CIFAR-10/100 and the embedded CIFAR-10 mini set, held in memory as uint8 tensors and
  augmented on the device (:mod:`.in_memory`, sources in :mod:`.cifar_sources`).
- ``imagenet``: ImageNet and Imagenette ImageFolder trees through a DataLoader (:mod:`.image_folder`).
"""

from adamp_repro.data.base import ClassificationData, DataInfo
from adamp_repro.data.build import build_data

__all__ = ["ClassificationData", "DataInfo", "build_data"]
