"""Read an ``in_memory``-family data set into uint8 tensors, from whichever of four on-disk layouts holds it.

Layouts (``dataset.format``; ``auto`` detects it from the files in ``dataset.root``):

- ``embedded``: ``root: null``; the 5,000 + 1,000 image CIFAR-10 JPEG copy shipped in the package
  (``adamp_repro/data/assets/cifar10_mini.npz``). With ``embedded_test='full'`` the evaluation set is the
  whole 10,000-image CIFAR-10 test set of the same JPEG copy (``assets/cifar10_test.npz``), not the
  1,000-image subset: test noise of a top-1 figure drops from about +-1.5 to +-0.5 points.
- ``jpeg_npz``: ``root/train_jpeg.npz`` and ``root/test_jpeg.npz``, the offline CIFAR-10 JPEG copy
  (keys ``jpeg``, ``offsets``, ``labels``, ``class_names``).
- ``torchvision``: torchvision's python-pickle format, ``root/cifar-10-batches-py`` or
  ``root/cifar-100-python`` (``dataset.download: true`` fetches it when online).
- ``imagefolder``: ``root/train/<class>/*`` and ``root/test/<class>/*`` image files of one size.

Decoding happens once per process per (layout, root): the result is cached.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adamp_repro.data.base import DataSourceMissing
from adamp_repro.errors import ConfigError

FORMATS = ("auto", "embedded", "jpeg_npz", "torchvision", "imagefolder")
EMBEDDED_TESTS = ("mini", "full")
TORCHVISION_NAMES = ("CIFAR10", "CIFAR100")
LAYOUTS_HELP = (
    "root/train_jpeg.npz + root/test_jpeg.npz (CIFAR-10 JPEG copy); "
    "root/cifar-10-batches-py or root/cifar-100-python (torchvision format; dataset.download=true "
    "fetches it); root/train/<class>/* + root/test/<class>/* (ImageFolder tree); "
    "or root: null for the embedded CIFAR-10 mini set"
)


@dataclass(frozen=True)
class CifarArrays:
    """A decoded data set. Images uint8 (N, 3, H, W) on the CPU; labels int64 (N,).

    ``jpeg_copy`` is True when the pixels come from the lossy CIFAR-10 JPEG copy, which must be said
    in every label shown with results.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    eval_images: torch.Tensor
    eval_labels: torch.Tensor
    class_names: tuple[str, ...]
    source: str
    jpeg_copy: bool


def embedded_path(name: str = "cifar10_mini.npz") -> Path:
    """Path of an embedded asset inside the installed package (the mini set, or the full test set)."""
    return Path(str(resources.files("adamp_repro.data") / "assets" / name))


def detect_format(root: Path, torchvision_name: str | None) -> list[str]:
    """Every layout whose files are present in ``root`` (empty when none or root is missing)."""
    found = []
    if (root / "train_jpeg.npz").is_file() and (root / "test_jpeg.npz").is_file():
        found.append("jpeg_npz")
    if torchvision_name is not None and (root / _torchvision_folder(torchvision_name)).is_dir():
        found.append("torchvision")
    if (root / "train").is_dir() and (root / "test").is_dir():
        found.append("imagefolder")
    return found


def check_layout(
    fmt: str,
    root: Path | None,
    *,
    torchvision_name: str | None,
    download: bool,
    how_to_obtain: str,
    embedded_test: str = "mini",
) -> str:
    """The layout (format, root) reads, found by looking at file names only (nothing is opened or decoded):
    ``embedded``, ``embedded_full_test``, ``jpeg_npz``, ``torchvision`` (possibly still to be downloaded) or
    ``imagefolder``.

    Raises DataSourceMissing (one line saying how to obtain the data) when root holds none of the layouts,
    ConfigError when it holds several under ``format: auto``, and ValueError for an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"dataset.format={fmt!r} is not one of {FORMATS}")
    if torchvision_name is not None and torchvision_name not in TORCHVISION_NAMES:
        raise ValueError(f"dataset.torchvision_name={torchvision_name!r} is not one of {TORCHVISION_NAMES}")
    if embedded_test not in EMBEDDED_TESTS:
        raise ValueError(f"dataset.embedded_test={embedded_test!r} is not one of {EMBEDDED_TESTS}")
    if root is None:
        if fmt not in ("auto", "embedded"):
            raise ValueError(f"dataset.format={fmt!r} needs a dataset.root; root: null means 'embedded'")
        for path in _embedded_paths(embedded_test):
            if not path.is_file():
                raise DataSourceMissing(
                    f"dataset.root=null: the embedded data set {path} is missing. To obtain it: {how_to_obtain}"
                )
        return "embedded" if embedded_test == "mini" else "embedded_full_test"
    if embedded_test != "mini":
        raise ValueError(
            f"dataset.embedded_test={embedded_test!r} applies to the embedded data (root: null) only"
        )
    if fmt == "embedded":
        raise ValueError(f"dataset.format='embedded' takes root: null, got root={str(root)!r}")
    return _choose_format(fmt, root, torchvision_name, download, how_to_obtain)


def load_cifar_arrays(
    fmt: str,
    root: Path | None,
    *,
    torchvision_name: str | None,
    download: bool,
    image_size: int,
    how_to_obtain: str,
    embedded_test: str = "mini",
) -> CifarArrays:
    """Decode the data set described by (format, root); see the module docstring for the layouts and
    ``check_layout`` for the errors raised before anything is read."""
    layout = check_layout(
        fmt,
        root,
        torchvision_name=torchvision_name,
        download=download,
        how_to_obtain=how_to_obtain,
        embedded_test=embedded_test,
    )
    if root is None:
        paths = _embedded_paths(embedded_test)
        return _load_cached(layout, str(paths[0]), None, image_size, _fingerprint(paths))
    if layout == "torchvision" and not (root / _torchvision_folder(torchvision_name)).is_dir():
        _download_torchvision(root, torchvision_name)
    fingerprint = _fingerprint(_layout_paths(layout, root, torchvision_name))
    return _load_cached(layout, str(root), torchvision_name, image_size, fingerprint)


def _embedded_paths(embedded_test: str) -> list[Path]:
    return [embedded_path()] + ([embedded_path("cifar10_test.npz")] if embedded_test == "full" else [])


def _choose_format(
    fmt: str, root: Path, torchvision_name: str | None, download: bool, how_to_obtain: str
) -> str:
    """The layout to read from ``root``: the one requested, or the only one present when ``fmt='auto'``."""
    found = detect_format(root, torchvision_name)
    can_download = download and torchvision_name is not None
    if fmt == "auto":
        if len(found) > 1:
            raise ConfigError(
                f"dataset.root={str(root)!r} holds several layouts {found}; set dataset.format to the one to use"
            )
        if not found and can_download:
            return "torchvision"
        if not found:
            raise DataSourceMissing(_missing_message(root, how_to_obtain))
        return found[0]
    if fmt == "torchvision" and torchvision_name is None:
        raise ValueError("dataset.format='torchvision' needs dataset.torchvision_name (CIFAR10 or CIFAR100)")
    if fmt not in found and not (fmt == "torchvision" and can_download):
        raise DataSourceMissing(_missing_message(root, how_to_obtain, wanted=fmt))
    return fmt


def _layout_paths(fmt: str, root: Path, torchvision_name: str | None) -> list[Path]:
    """The files and folders whose change must invalidate the decode cache of a layout."""
    if fmt == "jpeg_npz":
        return [root / "train_jpeg.npz", root / "test_jpeg.npz"]
    if fmt == "torchvision":
        return sorted((root / _torchvision_folder(torchvision_name)).iterdir())
    # An ImageFolder tree: adding or removing an image changes its class folder's mtime.
    return [root / split / c for split in ("train", "test") for c in sorted(os.listdir(root / split))]


def _fingerprint(paths: list[Path]) -> tuple:
    """(path, size, mtime_ns) of each path: the decode cache reloads when any of them changes."""
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def _missing_message(root: Path, how_to_obtain: str, wanted: str | None = None) -> str:
    what = f"the dataset.format={wanted!r} layout" if wanted else "any allowed layout"
    state = "exists" if root.is_dir() else "does not exist"
    return (
        f"dataset.root={str(root)!r} ({state}) holds no data set in {what}. Allowed layouts: {LAYOUTS_HELP}. "
        f"To obtain the data: {how_to_obtain}"
    )


@functools.lru_cache(maxsize=4)
def _load_cached(
    fmt: str, root: str, torchvision_name: str | None, image_size: int, fingerprint: tuple
) -> CifarArrays:
    # Cached per process: a sweep or a test suite builds the same data many times, and decoding the
    # 60,000 JPEGs of CIFAR-10 takes seconds. ``fingerprint`` (file sizes and mtimes) is part of the key
    # so that changed files are read again. Callers must not modify the returned tensors in place.
    if fmt in ("embedded", "embedded_full_test"):
        arrays = _read_mini_npz(Path(root), full_test=fmt == "embedded_full_test")
    elif fmt == "jpeg_npz":
        arrays = _read_jpeg_npz(Path(root))
    elif fmt == "torchvision":
        arrays = _read_torchvision(Path(root), torchvision_name)
    else:
        arrays = _read_imagefolder(Path(root), image_size)
    height, width = arrays.train_images.shape[-2:]
    if (height, width) != (image_size, image_size):
        raise ValueError(f"images in {root!r} are {height}x{width}, but dataset.image_size={image_size}")
    return arrays


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """JPEG bytes concatenated in ``blob`` (image i = blob[offsets[i]:offsets[i+1]]) -> uint8 (N,3,H,W)."""
    view = memoryview(blob)
    images = [
        np.asarray(Image.open(io.BytesIO(view[offsets[i] : offsets[i + 1]])).convert("RGB"))
        for i in range(len(offsets) - 1)
    ]
    # Threads do not help here: Pillow's small-image decode is dominated by Python overhead (measured).
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _read_mini_npz(path: Path, full_test: bool = False) -> CifarArrays:
    with np.load(path, allow_pickle=False) as npz:
        train_images = _decode_jpegs(npz["train_jpeg"], npz["train_offsets"])
        train_labels = torch.from_numpy(npz["train_labels"].astype(np.int64))
        class_names = tuple(str(c) for c in npz["class_names"])
        eval_images = None if full_test else _decode_jpegs(npz["test_jpeg"], npz["test_offsets"])
        eval_labels = None if full_test else torch.from_numpy(npz["test_labels"].astype(np.int64))
    source = f"embedded CIFAR-10 JPEG copy, mini subset ({path.name})"
    if full_test:
        test_path = path.with_name("cifar10_test.npz")
        with np.load(test_path, allow_pickle=False) as npz:
            if tuple(str(c) for c in npz["class_names"]) != class_names:
                raise ValueError(f"class names differ between {path} and {test_path}")
            eval_images = _decode_jpegs(npz["jpeg"], npz["offsets"])
            eval_labels = torch.from_numpy(npz["labels"].astype(np.int64))
        source = (
            f"embedded CIFAR-10 JPEG copy: 5,000-image training subset ({path.name}), "
            f"full 10,000-image test set ({test_path.name})"
        )
    return CifarArrays(
        train_images=train_images,
        train_labels=train_labels,
        eval_images=eval_images,
        eval_labels=eval_labels,
        class_names=class_names,
        source=source,
        jpeg_copy=True,
    )


def _read_jpeg_npz(root: Path) -> CifarArrays:
    splits = {}
    for split in ("train", "test"):
        with np.load(root / f"{split}_jpeg.npz", allow_pickle=False) as npz:
            splits[split] = (
                _decode_jpegs(npz["jpeg"], npz["offsets"]),
                torch.from_numpy(npz["labels"].astype(np.int64)),
                tuple(str(c) for c in npz["class_names"]),
            )
    if splits["train"][2] != splits["test"][2]:
        raise ValueError(
            f"train and test class names differ in {root}: {splits['train'][2]} vs {splits['test'][2]}"
        )
    return CifarArrays(
        *splits["train"][:2],
        *splits["test"][:2],
        class_names=splits["train"][2],
        source=f"CIFAR-10 JPEG copy at {root}",
        jpeg_copy=True,
    )


def _torchvision_folder(torchvision_name: str) -> str:
    import torchvision

    return getattr(torchvision.datasets, torchvision_name).base_folder


def _download_torchvision(root: Path, torchvision_name: str) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, torchvision_name)(str(root), train=True, download=True)
    except Exception as err:  # URLError when offline
        raise RuntimeError(
            f"dataset.download=true could not fetch {torchvision_name} into {root}: {err}"
        ) from err


def _read_torchvision(root: Path, torchvision_name: str) -> CifarArrays:
    import torchvision

    cls = getattr(torchvision.datasets, torchvision_name)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except RuntimeError as err:  # torchvision's integrity check failed: missing or corrupt batch files
        raise RuntimeError(f"could not read torchvision {torchvision_name} at {root}: {err}") from err

    def to_tensor(data: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()

    return CifarArrays(
        to_tensor(train.data),
        torch.as_tensor(train.targets, dtype=torch.int64),
        to_tensor(test.data),
        torch.as_tensor(test.targets, dtype=torch.int64),
        class_names=tuple(train.classes),
        source=f"torchvision {torchvision_name} at {root}",
        jpeg_copy=False,
    )


def _read_imagefolder(root: Path, image_size: int) -> CifarArrays:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    classes, class_to_idx = find_classes(str(root / "train"))
    test_classes, _ = find_classes(str(root / "test"))
    if classes != test_classes:
        raise ValueError(
            f"class folders differ between {root / 'train'} {classes} and {root / 'test'} {test_classes}"
        )
    splits = []
    for split in ("train", "test"):
        samples = make_dataset(str(root / split), class_to_idx, extensions=IMG_EXTENSIONS)
        images = []
        for path, _ in samples:
            with Image.open(path) as image:
                if image.size != (image_size, image_size):
                    raise ValueError(
                        f"{path} is {image.size[0]}x{image.size[1]} pixels; every image must be "
                        f"dataset.image_size={image_size} square (no resizing is done)"
                    )
                images.append(np.asarray(image.convert("RGB")))
        pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
        splits += [pixels, torch.as_tensor([label for _, label in samples], dtype=torch.int64)]
    return CifarArrays(
        *splits, class_names=tuple(classes), source=f"ImageFolder tree at {root}", jpeg_copy=False
    )
