"""Data sets, augmentation and per-rank batching: ``build_data(dataset_cfg, seed=...)``.

Three families (``dataset.family``), each a storage layout rather than a kind of data:
- ``in_memory``: the whole data set held in memory as uint8 tensors and augmented on the device, as for
  CIFAR-10/100 and the embedded CIFAR-10 mini set (:mod:`.in_memory`, sources in :mod:`.cifar_sources`).
- ``image_folder``: ImageFolder trees read through a DataLoader, as for ImageNet and Imagenette
  (:mod:`.image_folder`).
- ``text``: a token stream from a text file (character level; the embedded Tiny Shakespeare by default) or a
  WikiText-style word-level corpus, cut into fixed-length windows for language modelling (:mod:`.text`).
``check_source(dataset_cfg)`` refuses a missing data source in one line before any work (names only, nothing
decoded). The old spellings ``cifar`` and ``imagenet`` are still read (``build.FAMILY_ALIASES``).
"""

from adamp_repro.data.base import ClassificationData, DataInfo, DataSourceMissing
from adamp_repro.data.build import build_data, check_source

__all__ = ["ClassificationData", "DataInfo", "DataSourceMissing", "build_data", "check_source"]
