"""The data layer: the embedded set, deterministic batching and augmentation, distributed shards, the
four CIFAR layouts, the ImageNet pipeline (eval transform against a golden tensor) and the errors."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from adamp_repro.data import DataSourceMissing, build_data, check_source
from adamp_repro.data.augment import crop_flip, draw_crop_flip
from adamp_repro.data.cifar_sources import embedded_path
from adamp_repro.data.image_folder import eval_transform
from adamp_repro.data.sharding import class_interleaved_order, make_generator, train_shard
from adamp_repro.errors import UsageError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "dataset"
GOLDEN = Path(__file__).resolve().parent / "golden" / "imagenet_eval_transform.npz"


def dataset_cfg(name: str, **overrides):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def keys(x: torch.Tensor) -> list[bytes]:
    """One hashable key per image of a batch in [0, 1] (exact: pixels are k/255)."""
    return [row.tobytes() for row in (x * 255).round().to(torch.uint8).flatten(1).numpy()]


def synthetic_image(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([(xx * 7) % 256, (yy * 5) % 256, ((xx + 2 * yy) * 3) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


# ---------------------------------------------------------------- embedded set, batching, determinism


def test_embedded_set_loads_balanced():
    data = build_data(dataset_cfg("cifar10_mini"), seed=0)
    assert (data.num_train, data.num_eval, data.num_classes) == (5000, 1000, 10)
    assert data.label == "CIFAR-10 mini subset (JPEG copy)"
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10
    assert isinstance(data.mean, tuple) and isinstance(data.std, tuple) and len(data.mean) == 3
    assert set(Counter(data.train_labels.tolist()).values()) == {500}
    assert set(Counter(data.eval_labels.tolist()).values()) == {100}
    assert data.steps_per_epoch == 5000 // 128
    # The config's mean/std (original CIFAR-10) are close to the JPEG copy's own statistics.
    pixels = data.train_images.float() / 255
    assert torch.allclose(pixels.mean((0, 2, 3)), torch.tensor(data.mean), atol=0.01)
    assert torch.allclose(pixels.std((0, 2, 3)), torch.tensor(data.std), atol=0.01)


def test_embedded_full_test_set_is_the_whole_cifar10_test_set():
    """cifar10_embedded: the same 5,000 training images as cifar10_mini, and all 10,000 test images."""
    mini = build_data(dataset_cfg("cifar10_mini"), seed=0)
    data = build_data(dataset_cfg("cifar10_embedded"), seed=0)
    assert (data.num_train, data.num_eval, data.num_classes) == (5000, 10000, 10)
    assert data.label == "CIFAR-10 (JPEG copy): 5k-image train subset, full 10k test set"
    assert torch.equal(data.train_images, mini.train_images)
    assert set(Counter(data.eval_labels.tolist()).values()) == {1000}
    # The mini set's 1,000 test images are among the full set's (the same JPEG bytes, decoded the same way).
    full = set(keys(data.eval_images.float() / 255))
    assert all(k in full for k in keys(mini.eval_images.float() / 255))
    with np.load(embedded_path("cifar10_test.npz"), allow_pickle=False) as npz:
        assert len(npz["offsets"]) == 10001


def test_embedded_test_option_is_checked():
    with pytest.raises(ValueError, match=r"dataset.embedded_test='half' is not one of \('mini', 'full'\)"):
        build_data(dataset_cfg("cifar10_embedded", embedded_test="half"), seed=0)


def test_train_batches_shapes_values_and_determinism():
    cfg = dataset_cfg("cifar10_mini", batch_size=100)
    data = build_data(cfg, seed=3, train_subset=1000)
    batches = list(data.train_batches(epoch=0))
    assert len(batches) == data.steps_per_epoch == 10
    x, y = batches[0]
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    again = build_data(cfg, seed=3, train_subset=1000)  # a fresh object, as after a resume
    torch.manual_seed(123)  # the global RNG must not matter
    for (xa, ya), (xb, yb) in zip(batches, again.train_batches(epoch=0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    next_epoch = next(iter(data.train_batches(epoch=1)))
    other_seed = next(iter(build_data(cfg, seed=4, train_subset=1000).train_batches(epoch=0)))
    assert not torch.equal(next_epoch[1], y) and not torch.equal(other_seed[1], y)


def test_old_family_spellings_build_the_same_data(tmp_path):
    """``family: cifar`` / ``imagenet`` (the spellings before the rename) read as ``in_memory`` / ``image_folder``."""
    new = build_data(dataset_cfg("cifar10_mini", batch_size=100), seed=3, train_subset=200)
    old = build_data(dataset_cfg("cifar10_mini", batch_size=100, family="cifar"), seed=3, train_subset=200)
    for (xa, ya), (xb, yb) in zip(new.train_batches(epoch=0), old.train_batches(epoch=0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    write_tree(tmp_path, "train", {"n01": [(20, 20, "RGB")], "n02": [(20, 20, "RGB")]}, suffix=".JPEG")
    write_tree(tmp_path, "val", {"n01": [(20, 20, "RGB")], "n02": [(20, 20, "RGB")]}, suffix=".JPEG")
    small = dict(root=str(tmp_path), num_classes=2, batch_size=2, crop_size=8, resize_size=8, num_workers=0)
    assert build_data(dataset_cfg("imagenette", **small, family="imagenet"), seed=0).num_train == 2


def test_eval_batches_unaugmented_in_order():
    data = build_data(dataset_cfg("cifar10_mini", eval_batch_size=300), seed=0)
    batches = list(data.eval_batches())
    assert [len(y) for _, y in batches] == [300, 300, 300, 100]
    assert torch.equal(batches[0][0], data.eval_images[:300].float() / 255)


# ---------------------------------------------------------------- augmentation


def test_crop_flip_identity_shift_and_flip():
    image = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).view(2, 3, 4, 5)
    centre = torch.tensor([[2, 2], [2, 2]])
    assert torch.equal(crop_flip(image, centre, torch.tensor([False, False]), 2), image)
    flipped = crop_flip(image, centre, torch.tensor([True, False]), 2)
    assert torch.equal(flipped[0], image[0].flip(-1)) and torch.equal(flipped[1], image[1])
    shifted = crop_flip(image, torch.tensor([[0, 0], [4, 4]]), torch.tensor([False, False]), 2)
    assert torch.equal(shifted[0, :, 2:, 2:], image[0, :, :2, :3]) and shifted[0, :, :2].sum() == 0
    assert torch.equal(shifted[1, :, :2, :3], image[1, :, 2:, 2:]) and shifted[1, :, 2:].sum() == 0


def test_crop_flip_matches_per_image_reference():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    offsets, flips = draw_crop_flip(16, 4, True, make_generator(0))
    assert offsets.min() >= 0 and offsets.max() <= 8 and 0 < flips.sum() < 16
    out = crop_flip(images, offsets, flips, 4)
    for i in range(16):  # torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, one image at a time
        row, col = offsets[i].tolist()
        expected = F.pad(images[i], (4, 4, 4, 4))[:, row : row + 32, col : col + 32]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)


def test_no_augmentation_when_disabled():
    cfg = dataset_cfg("cifar10_mini", crop_padding=0, hflip=False)
    data = build_data(cfg, seed=0, train_subset=200)
    pool = set(keys(data.train_images.float() / 255))
    x, _ = next(iter(data.train_batches(0)))
    assert set(keys(x)) <= pool


# ---------------------------------------------------------------- subsets


def test_subsets_are_class_balanced():
    data = build_data(dataset_cfg("cifar10_mini", batch_size=16), seed=0, train_subset=105, eval_subset=30)
    counts = Counter(data.train_labels.tolist())
    assert sorted(counts.values()) == [10] * 5 + [11] * 5 and (data.num_train, data.num_eval) == (105, 30)
    assert set(Counter(data.eval_labels.tolist()).values()) == {3}


def test_class_interleaved_order_on_class_sorted_labels():
    labels = np.repeat(np.arange(4), [5, 3, 6, 2])  # sorted by class, unequal classes
    order = class_interleaved_order(labels)
    assert labels[order[:8]].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert sorted(order.tolist()) == list(range(16)) and labels[order[-1]] == 2


@pytest.mark.parametrize("subset", [0, -5, 5001, 2.5])
def test_bad_subset_is_named(subset):
    with pytest.raises(ValueError, match=f"train_subset.*{subset}|train_subset={subset}"):
        build_data(dataset_cfg("cifar10_mini"), seed=0, train_subset=subset)


# ---------------------------------------------------------------- distributed shards


def test_world_size_two_partitions_each_global_batch():
    cfg = dataset_cfg("cifar10_mini", batch_size=50, crop_padding=0, hflip=False)
    single = list(build_data(cfg, seed=1, train_subset=400).train_batches(2))
    ranks = [
        list(build_data(cfg, seed=1, train_subset=400, rank=r, world_size=2).train_batches(2))
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4 and len(single) == 8
    for step in range(4):  # the ranks' k-th batches together are global batch k of the shared permutation
        rank_keys = [keys(ranks[r][step][0]) for r in range(2)]
        assert not set(rank_keys[0]) & set(rank_keys[1])
        assert sorted(rank_keys[0] + rank_keys[1]) == sorted(
            keys(single[2 * step][0]) + keys(single[2 * step + 1][0])
        )


def test_train_shard_is_a_partition():
    permutation = torch.randperm(1003, generator=make_generator(5))
    shards = [train_shard(permutation, r, 3, steps=1003 // 3 // 7, batch_size=7) for r in range(3)]
    merged = torch.cat(shards)
    assert len(merged.unique()) == len(merged) == 3 * (1003 // 3 // 7) * 7


@pytest.mark.parametrize("world_size", [2, 3])
def test_eval_covers_each_sample_once_on_odd_sized_set(world_size):
    cfg = dataset_cfg("cifar10_mini", eval_batch_size=64)
    reference = Counter(
        k for x, _ in build_data(cfg, seed=0, eval_subset=999).eval_batches() for k in keys(x)
    )
    shards = [
        build_data(cfg, seed=0, eval_subset=999, rank=r, world_size=world_size) for r in range(world_size)
    ]
    sizes = [sum(len(y) for _, y in d.eval_batches()) for d in shards]
    assert sum(sizes) == 999 and max(sizes) - min(sizes) <= 1
    assert Counter(k for d in shards for x, _ in d.eval_batches() for k in keys(x)) == reference


# ---------------------------------------------------------------- errors


def test_missing_root_says_how_to_obtain(tmp_path):
    missing = tmp_path / "no_cifar_here"
    with pytest.raises(FileNotFoundError, match="no_cifar_here.*does not exist.*make data-cifar10"):
        build_data(dataset_cfg("cifar10", root=str(missing)), seed=0)
    with pytest.raises(FileNotFoundError, match="make data-imagenette"):
        build_data(dataset_cfg("imagenette", root=str(missing)), seed=0)


def test_check_source_refuses_a_missing_root_in_one_line_without_decoding(tmp_path):
    """The check made before any run folder exists: the same refusal as build_data's, from names alone."""
    missing = tmp_path / "no_cifar_here"
    with pytest.raises(DataSourceMissing) as refused:
        check_source(dataset_cfg("cifar10", root=str(missing)))
    line = str(refused.value)
    assert isinstance(refused.value, UsageError) and "\n" not in line
    assert line.startswith(
        f"dataset.root='{missing}' (does not exist) holds no data set in any allowed layout"
    )
    assert "root/train_jpeg.npz" in line and "make data-cifar10" in line and "CIFAR10_JPEG_DIR" in line
    missing.mkdir()
    with pytest.raises(
        DataSourceMissing, match=r"\(exists\) holds no data set in the dataset.format='jpeg_npz' layout"
    ):
        check_source(dataset_cfg("cifar10", root=str(missing), format="jpeg_npz"))
    # Empty files of the right names pass: the check opens nothing (build_data would fail to decode them).
    (missing / "train_jpeg.npz").touch()
    (missing / "test_jpeg.npz").touch()
    check_source(dataset_cfg("cifar10", root=str(missing)))
    check_source(dataset_cfg("cifar10", root="no_cifar_here"), base=tmp_path)  # relative to base
    with pytest.raises(DataSourceMissing, match="download=true"):
        check_source(dataset_cfg("cifar10", root="elsewhere"), base=tmp_path)
    check_source(dataset_cfg("cifar10", root=str(tmp_path / "later"), download=True))  # fetched at build
    check_source(dataset_cfg("cifar10_embedded"))  # root: null, shipped with the package
    trees = tmp_path / "imagenette"
    (trees / "train").mkdir(parents=True)
    with pytest.raises(DataSourceMissing, match=r"\(exists, incomplete\) must hold ImageFolder trees"):
        check_source(dataset_cfg("imagenette", root=str(trees)))
    (trees / "val").mkdir()
    check_source(dataset_cfg("imagenette", root=str(trees)))


def test_batch_larger_than_data_names_both_numbers():
    with pytest.raises(ValueError, match="batch_size=128.*200 samples"):
        build_data(dataset_cfg("cifar10_mini"), seed=0, train_subset=200, world_size=2, rank=1)


def test_bad_config_values_are_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"family='mnist'.*one of \['in_memory', 'image_folder', 'text'\]"
    ) as bad:
        build_data(dataset_cfg("cifar10_mini", family="mnist"), seed=0)
    assert "\n" not in str(bad.value) and "old spellings, still read: 'cifar', 'imagenet'" in str(bad.value)
    with pytest.raises(ValueError, match="num_classes=100.*10 classes"):
        build_data(dataset_cfg("cifar10_mini", num_classes=100), seed=0)
    with pytest.raises(KeyError, match="'hflip'"):
        cfg = OmegaConf.to_container(dataset_cfg("cifar10_mini"))
        del cfg["hflip"]
        build_data(cfg, seed=0)
    with pytest.raises(ValueError, match="rank must be in"):
        build_data(dataset_cfg("cifar10_mini"), seed=0, rank=2, world_size=2)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(ValueError, match=r"several layouts \['torchvision', 'imagefolder'\]"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), seed=0)


# ---------------------------------------------------------------- other CIFAR layouts


def test_jpeg_npz_layout_is_labelled_jpeg_copy(tmp_path):
    with np.load(embedded_path()) as mini:
        for split, n in (("train", 40), ("test", 20)):
            offsets = mini[f"{split}_offsets"][: n + 1]
            np.savez(
                tmp_path / f"{split}_jpeg.npz",
                jpeg=mini[f"{split}_jpeg"][: offsets[-1]],
                offsets=offsets,
                labels=mini[f"{split}_labels"][:n],
                class_names=mini["class_names"],
            )
    data = build_data(dataset_cfg("cifar10", root=str(tmp_path), batch_size=8), seed=0)
    assert data.label == "CIFAR-10 (JPEG copy)" and (data.num_train, data.num_eval) == (40, 20)
    embedded = build_data(dataset_cfg("cifar10_mini"), seed=0)
    assert torch.equal(data.train_images, embedded.train_images[:40])


def test_torchvision_layout(tmp_path, monkeypatch):
    import torchvision

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for index, name in enumerate(names):  # torchvision's pickle format: rows of 3072 bytes, CHW order
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [index % 10, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda *args: True
    )  # fake files, no md5
    data = build_data(dataset_cfg("cifar10", root=str(tmp_path), batch_size=4), seed=0)
    assert (data.num_train, data.num_eval, data.label) == (20, 4, "CIFAR-10")
    x, y = next(iter(data.eval_batches()))
    expected = pickle.loads((folder / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    assert torch.equal((x[0] * 255).round().to(torch.uint8), torch.from_numpy(expected)) and y[0] == 5


def write_tree(root: Path, split: str, classes: dict[str, list[tuple[int, int, str]]], suffix: str = ".png"):
    """root/split/<class>/<i><suffix>: solid images of (width, height, mode) with value 10*i + class index."""
    for index, (name, specs) in enumerate(sorted(classes.items())):
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i, (width, height, mode) in enumerate(specs):
            value = 10 * i + index
            Image.new(mode, (width, height), value if mode == "L" else (value,) * 3).save(
                root / split / name / f"{i}{suffix}"
            )


def test_cifar_imagefolder_tree(tmp_path):
    write_tree(tmp_path, "train", {"cat": [(32, 32, "RGB")] * 3, "dog": [(32, 32, "L")] * 3})
    write_tree(tmp_path, "test", {"cat": [(32, 32, "RGB")], "dog": [(32, 32, "RGB")]})
    cfg = dataset_cfg("cifar10", root=str(tmp_path), num_classes=2, batch_size=2, eval_batch_size=5)
    data = build_data(cfg, seed=0)
    assert data.class_names == ("cat", "dog") and data.label == "CIFAR-10" and data.num_train == 6
    x, y = next(iter(data.eval_batches()))
    assert y.tolist() == [0, 1] and torch.equal(
        (x * 255).round()[:, :, 0, 0], torch.tensor([[0.0] * 3, [1.0] * 3])
    )
    write_tree(tmp_path, "train", {"cat": [(32, 32, "RGB")] * 3 + [(30, 32, "RGB")]})
    with pytest.raises(ValueError, match=r"3\.png is 30x32 pixels.*image_size=32"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path), num_classes=2, format="imagefolder"), seed=1)


# ---------------------------------------------------------------- image_folder family


@pytest.fixture
def imagenet_tree(tmp_path):
    sizes = [(40, 30, "RGB"), (30, 50, "L"), (64, 48, "RGB"), (33, 33, "RGB")]
    write_tree(tmp_path, "train", {"n01": sizes, "n02": sizes[::-1], "n03": sizes}, suffix=".JPEG")
    write_tree(tmp_path, "val", {"n01": sizes[:1], "n02": sizes[:2], "n03": sizes[:2]}, suffix=".JPEG")
    return tmp_path


def imagenet_cfg(root: Path, **overrides):
    small = dict(
        root=str(root),
        num_classes=3,
        batch_size=3,
        eval_batch_size=2,
        crop_size=16,
        resize_size=18,
        num_workers=0,
    )
    return dataset_cfg("imagenette", **{**small, **overrides})


def test_imagenet_pipeline_shapes_and_determinism(imagenet_tree):
    rng_before = torch.get_rng_state()
    data = build_data(imagenet_cfg(imagenet_tree), seed=0)
    assert (data.num_train, data.num_eval, data.steps_per_epoch) == (12, 5, 4)
    assert data.label == "Imagenette (96 px), not ImageNet"
    epoch0 = list(data.train_batches(0))
    assert torch.equal(torch.get_rng_state(), rng_before)  # augmentation never touches the global RNG
    x, y = epoch0[0]
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    workers = build_data(imagenet_cfg(imagenet_tree, num_workers=1), seed=0)  # same batches with a worker
    for (xa, ya), (xb, yb) in zip(epoch0, workers.train_batches(0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(
        torch.cat([x for x, _ in data.train_batches(1)]), torch.cat([x for x, _ in epoch0])
    )
    assert sorted(torch.cat([y for _, y in data.eval_batches()]).tolist()) == [0, 1, 1, 2, 2]


def test_imagenet_eval_shards_cover_once(imagenet_tree):
    shards = [build_data(imagenet_cfg(imagenet_tree), seed=0, rank=r, world_size=2) for r in range(2)]
    everything = [k for d in shards for x, _ in d.eval_batches() for k in keys(x)]
    reference = [
        k for x, _ in build_data(imagenet_cfg(imagenet_tree), seed=0).eval_batches() for k in keys(x)
    ]
    assert len(everything) == 5 and Counter(everything) == Counter(reference)


def test_imagenet_wrong_class_count(imagenet_tree):
    with pytest.raises(ValueError, match="num_classes=10.*3 class folders"):
        build_data(imagenet_cfg(imagenet_tree, num_classes=10), seed=0)


def test_eval_transform_matches_golden_and_pil_reference():
    golden = np.load(GOLDEN)
    small = eval_transform(36, 32, "bilinear")(synthetic_image(60, 45))
    # Independent reference: short side 45 -> 36 (so 60 -> 48), then the centred 32x32 box.
    resized = synthetic_image(60, 45).resize((48, 36), Image.BILINEAR).crop((8, 2, 40, 34))
    assert torch.equal(small, torch.from_numpy(np.array(resized)).permute(2, 0, 1).float() / 255)
    cfg = dataset_cfg("imagenet")
    big = eval_transform(cfg.resize_size, cfg.crop_size, cfg.interpolation)(synthetic_image(400, 300))
    # Golden tensors were made by this code (tests/golden/imagenet_eval_transform.npz); allow one grey
    # level of rounding drift across Pillow versions, nothing more.
    for name, tensor in (("small_60x45_r36_c32", small), ("imagenet_400x300_r256_c224", big)):
        expected = torch.from_numpy(golden[name]).float() / 255
        assert tensor.shape == expected.shape
        assert (tensor - expected).abs().max() <= 1 / 255 + 1e-6, name
