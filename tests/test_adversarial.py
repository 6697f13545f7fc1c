"""The adversarial task (train/tasks/adversarial.py) and its config: metrics, training step, and two trained tiny models
on real CIFAR-10 images (the embedded subset) for the checks that need a trained model: robust accuracy falls
with eps down to ~0 (no gradient masking), and adversarial training buys robustness.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from adamp_repro.data.sharding import make_generator
from adamp_repro.errors import ConfigError
from adamp_repro.train.attacks import PGD
from adamp_repro.train.autoattack import WARNING_FLAGS
from adamp_repro.train.tasks import build_task
from adamp_repro.train.tasks.adversarial import AdversarialTask, build_adversarial_task

ROOT = Path(__file__).resolve().parents[1]
TASK_YAML = ROOT / "configs" / "task" / "adversarial.yaml"
MINI = ROOT / "src" / "adamp_repro" / "data" / "assets" / "cifar10_mini.npz"


class TinyNet(nn.Module):
    """[0, 1] inputs, Normalize inside, BN after each conv (the contract of the project's models)."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * w, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


# One thread (conftest.py): bitwise-reproducible training, and no OpenMP oversubscription on a shared 2-core
# machine (measured: 2 threads under load ran this file's training 20x slower than 1 thread).
# one worker builds the module fixtures (make test runs pytest-xdist)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.xdist_group("adversarial")]


def task_cfg(**overrides):
    cfg = OmegaConf.load(TASK_YAML)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def decode(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n images of the embedded subset as float [0, 1] (n, 3, 32, 32), and their labels."""
    data = np.load(MINI)
    jpeg, offsets = data[f"{split}_jpeg"], data[f"{split}_offsets"]
    images = [
        np.asarray(Image.open(io.BytesIO(jpeg[offsets[i] : offsets[i + 1]].tobytes())).convert("RGB"))
        for i in range(n)
    ]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    return x, torch.from_numpy(data[f"{split}_labels"][:n]).long()


def random_model(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet()
    with torch.no_grad():
        net(torch.rand(64, 3, 32, 32))  # running statistics that differ from the init
    return net.eval()


# ------------------------------------------------------------------------------------------------ config
def test_config_builds_the_protocol():
    task = build_task(task_cfg())
    assert isinstance(task, AdversarialTask)
    tr, ev, aa, sweep = task.train_attack, task.eval_attack, task.autoattack, task.eps_sweep
    assert (tr.norm, tr.eps, tr.step_size, tr.steps) == ("linf", 4 / 255, 2 / 255, 10)
    assert tr.random_start and tr.step_rule == "sign" and tr.bn_mode == "eval" and tr.restarts == 1
    assert (ev.eps, ev.step_size, ev.steps, ev.random_start, ev.bn_mode) == (
        4 / 255,
        2 / 255,
        10,
        False,
        "eval",
    )
    # Without a scale (mini has no such key) the subsets fall back to the file's defaults.
    assert (aa.norm, aa.eps, aa.version, aa.attacks, aa.seed) == ("linf", 4 / 255, "standard", None, 0)
    assert task.autoattack_subset == 1000 and sweep.subset == 200
    assert sweep.eps_factors == (0.0, 0.5, 1.0, 2.0, 4.0) and sweep.attack.attacks == ("apgd-ce",)
    assert sweep.eps == pytest.approx([0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255])


def test_the_scale_sets_the_attacked_subsets_never_the_attack(smoke_cfg):
    from .conftest import compose_config

    smoke, mini = smoke_cfg("task=adversarial"), compose_config(["task=adversarial"])
    paper = compose_config(["task=adversarial", "scale=paper"])
    assert (smoke.task.autoattack.subset, smoke.task.eps_sweep.subset) == (8, 8)
    assert (mini.task.autoattack.subset, mini.task.eps_sweep.subset) == (1000, 200)
    assert (paper.task.autoattack.subset, paper.task.eps_sweep.subset) == (None, 1000)
    for cfg in (smoke, paper):
        for section in ("autoattack", "eps_sweep", "train_attack", "eval_attack"):
            a, b = OmegaConf.to_container(cfg.task[section]), OmegaConf.to_container(mini.task[section])
            a.pop("subset", None), b.pop("subset", None)
            assert a == b, section


@pytest.mark.parametrize(
    "name,norm,eps", [("cifar10_wrn_adv_linf", "linf", 4 / 255), ("cifar10_wrn_adv_l2", "l2", 80 / 255)]
)
def test_experiment_files_set_the_threat_model(name, norm, eps):
    exp = OmegaConf.load(ROOT / "configs" / "experiment" / f"{name}.yaml")
    cfg = OmegaConf.merge(OmegaConf.load(TASK_YAML), exp.task)
    task = build_adversarial_task(cfg)
    assert task.train_attack.norm == task.eval_attack.norm == task.autoattack.norm == norm
    assert task.train_attack.eps == task.autoattack.eps == pytest.approx(eps, abs=1e-15)
    assert task.autoattack.version == "standard"  # the paper-scale files: RobustBench's protocol
    assert exp.table.id == "P4a" and exp.experiment_name == name and exp.epochs == 200
    assert exp.dataset.batch_size == 128 and list(exp.scheduler.milestones_frac) == [0.5, 0.75]
    assert (
        exp.recipe.adam.lr == 1e-2 and exp.recipe.adam.weight_decay == 2e-4 and exp.model.normalize is False
    )


def test_describe_lists_every_setting():
    cfg = task_cfg()
    d = build_adversarial_task(cfg).describe()
    assert json.loads(json.dumps(d)) == d  # goes into summary.json as is
    for section in ("train_attack", "eval_attack", "autoattack", "eps_sweep"):
        for key, value in cfg[section].items():
            if key != "enabled" and not (key == "attacks" and value is None):
                assert d[section][key] == value, (section, key)
    assert d["autoattack"]["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]  # what `standard` runs
    assert d["autoattack"]["seed"] == d["eps_sweep"]["seed"] == d["eval_seed"] == cfg.eval_seed == 0
    assert set(d["autoattack"]["warning_flags"]) == set(WARNING_FLAGS)
    assert d["eps_sweep"]["eps_x255"] == [0.0, 2.0, 4.0, 8.0, 16.0]
    assert d["train_attack"]["bn_mode"] == d["train_attack_bn_mode"] == "eval"
    assert d["norm"] == "linf" and d["eps"] == cfg.eps
    assert d["denominators"]["autoattack_top1"] == "autoattack_images"
    assert d["denominators"]["eps_sweep_4_top1"] == "eps_sweep_images"
    assert d["denominators"]["autoattack_warn_zero_gradients"] == "autoattack_runs"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"norm": "l1"}, r"Invalid attack norm: 'l1'; expected one of \('linf', 'l2'\)"),
        ({"eps": -0.01}, r"Invalid attack eps: -0.01"),
        ({"train_attack.steps": -1}, r"Invalid attack steps: -1"),
        (
            {"train_attack.bn_mode": "batch"},
            r"Invalid attack bn_mode: 'batch'; expected one of \('eval', 'train'\)",
        ),
        ({"train_attack.stpes": 10}, r"Unknown key\(s\) \['stpes'\] in task.train_attack; expected keys"),
        ({"eval_attack.bn_mode": "train"}, r"Unknown key\(s\) \['bn_mode'\] in task.eval_attack"),
        ({"epsilon": 0.1}, r"Unknown task key\(s\) \['epsilon'\]"),
        ({"eval_seed": -1}, r"Invalid eval_seed: -1; expected an integer >= 0"),
        ({"autoattack.subset": 0}, r"Invalid autoattack.subset: 0; expected an integer >= 1 or null"),
        ({"autoattack.version": "fast"}, r"task.autoattack: Invalid autoattack version: 'fast'"),
        ({"autoattack.attacks": ["apgd-ce"]}, r"task.autoattack: .*only version 'custom' takes a list"),
        ({"eps_sweep.attacks": ["pgd"]}, r"task.eps_sweep: Invalid autoattack attacks: \('pgd',\)"),
        ({"eps_sweep.eps_factors": [1.0, 0.5]}, r"Invalid task.eps_sweep.eps_factors: \[1.0, 0.5\]"),
        ({"eps_sweep.subset": -3}, r"Invalid eps_sweep.subset: -3"),
        ({"autoattack.enabled": "yes"}, r"Invalid task.autoattack.enabled: 'yes'; expected true or false"),
    ],
)
def test_config_errors_name_the_bad_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_adversarial_task(task_cfg(**overrides))


def test_missing_keys_are_errors_not_defaults():
    cfg = OmegaConf.to_container(task_cfg())
    del cfg["train_attack"]["bn_mode"]
    with pytest.raises(ConfigError, match=r"Missing key\(s\) \['bn_mode'\] in task.train_attack"):
        build_adversarial_task(cfg)
    cfg = OmegaConf.to_container(task_cfg())
    del cfg["autoattack"]["batch_size"]
    with pytest.raises(ConfigError, match=r"Missing key\(s\) \['batch_size'\] in task.autoattack"):
        build_adversarial_task(cfg)


def test_final_checks_can_be_disabled(real_batches):
    task = build_adversarial_task(
        task_cfg(
            **{"autoattack": {"enabled": False}, "eps_sweep": {"enabled": False}, "eval_attack.steps": 1}
        )
    )
    assert task.autoattack is None and task.eps_sweep is None and task.denominators == {}
    assert task.describe()["autoattack"] is None and task.describe()["eps_sweep"] is None
    assert set(task.evaluate(random_model(), real_batches)) == set(task.metric_keys(final=True))


# ---------------------------------------------------------------------------------------------- evaluate
def small_task(**overrides) -> AdversarialTask:
    base = {
        "eval_attack.steps": 5,
        "autoattack.version": "custom",
        "autoattack.attacks": ["apgd-ce", "apgd-t"],
        "autoattack.subset": 24,
        "eps_sweep.subset": 12,
    }
    return build_adversarial_task(task_cfg(**{**base, **overrides}))


@pytest.fixture(scope="module")
def real_batches():
    x, y = decode("test", 64)
    return [(x[i : i + 20], y[i : i + 20]) for i in range(0, 64, 20)]  # 20, 20, 20, 4


def test_zero_step_attack_gives_robust_equal_to_clean(real_batches):
    task = small_task(**{"eval_attack.steps": 0})
    sums = task.evaluate(random_model(), real_batches, final=False)
    assert torch.equal(sums["robust_top1"], sums["clean_top1"]) and torch.equal(
        sums["robust_loss"], sums["loss"]
    )
    assert set(sums) == {"clean_top1", "robust_top1", "loss", "robust_loss", "count"}
    assert set(sums) == set(task.metric_keys(final=False))


def test_reported_accuracy_equals_accuracy_recomputed_on_the_examples(real_batches, trained):
    model, task = trained["clean"], small_task()
    generator = make_generator(0)
    total = {}
    for x, y in real_batches:
        sums, details = task.evaluate_batch(model, x, y, generator=generator)
        with torch.no_grad():
            clean_ok = model(x).argmax(1).eq(y)
            robust_ok = model(details["robust"]).argmax(1).eq(y)
        assert sums["clean_top1"] == 100 * clean_ok.sum() and sums["robust_top1"] == 100 * robust_ok.sum()
        assert torch.equal(details["clean_ok"], clean_ok) and torch.equal(details["robust_ok"], robust_ok)
        for key, value in sums.items():
            total[key] = total.get(key, 0) + value
    assert total["robust_top1"] < total["clean_top1"]  # the attack does something
    metrics = task.finalize(total)
    assert metrics["count"] == 64 and metrics["clean_top1"] == pytest.approx(float(total["clean_top1"]) / 64)


def test_final_evaluation_runs_autoattack_alone_on_the_subset(real_batches, trained):
    model, task = trained["adv"], small_task(**{"autoattack.subset": 12, "eps_sweep.subset": 6})
    model.train()
    # final=True: AutoAttack on the first 12 samples, the sweep on the first 6.
    sums = task.evaluate(model, real_batches)
    assert model.training  # the caller's mode is restored
    assert set(sums) == set(task.metric_keys(final=True))
    assert float(sums["count"]) == 64 and float(sums["autoattack_images"]) == 12
    assert float(sums["eps_sweep_images"]) == 6 and float(sums["autoattack_runs"]) == 1
    model.eval()
    x, y = torch.cat([b[0] for b in real_batches])[:12], torch.cat([b[1] for b in real_batches])[:12]
    alone = task.autoattack(model, x, y)  # the number is AutoAttack's own, not merged with PGD per sample
    assert float(sums["autoattack_top1"]) == 100 * float(alone.correct.sum())
    sample_by_sample = task.evaluate_batch(model, x, y, generator=make_generator(0))[0]
    assert torch.equal(sums["autoattack_subset_clean_top1"], sample_by_sample["clean_top1"])
    assert torch.equal(sums["autoattack_subset_robust_top1"], sample_by_sample["robust_top1"])
    assert sums["autoattack_top1"] <= sums["autoattack_subset_clean_top1"]
    assert float(sums["autoattack_s_per_1000_images"]) > 0
    assert all(float(sums[f"autoattack_warn_{flag}"]) == 0 for flag in WARNING_FLAGS)
    metrics = task.finalize(sums)
    assert metrics["autoattack_top1"] == pytest.approx(float(sums["autoattack_top1"]) / 12)
    first6 = task.evaluate_batch(model, x[:6], y[:6], generator=make_generator(0))[0]
    assert torch.equal(sums["eps_sweep_0_top1"], first6["clean_top1"])  # factor 0: no attack
    again = task.evaluate(model, real_batches)
    for key in sums:  # seeded per call: the same numbers every time (timing aside)
        if key != "autoattack_s_per_1000_images":
            assert torch.equal(sums[key], again[key]), key


def test_final_keys_present_on_every_rank_even_past_the_subset(real_batches):
    task = small_task(**{"autoattack.subset": 1, "eps_sweep.subset": 1, "eval_attack.steps": 1})
    sums = task.evaluate(random_model(), real_batches[-1:])
    assert float(sums["autoattack_images"]) == 1 and float(sums["eps_sweep_images"]) == 1
    empty = task.evaluate(random_model(), [])
    assert set(empty) == set(sums) and float(empty["count"]) == 0 and float(empty["autoattack_runs"]) == 0
    assert set(task.finalize(empty)) == set(sums)


# --------------------------------------------------------------------------------------------- train step
def test_train_loss_is_ce_on_the_adversarial_batch_and_keeps_train_mode(real_batches):
    x, y = real_batches[0]
    task = small_task()
    model = random_model().train()
    fresh = copy.deepcopy(model)  # train_loss's forward updates the BN statistics the next attack reads
    task.set_epoch(seed=0, epoch=3, rank=0)
    loss, logits = task.train_loss(model, x, y)
    assert model.training
    task.set_epoch(seed=0, epoch=3, rank=0)
    torch.testing.assert_close(task.train_loss(copy.deepcopy(fresh), x, y)[0], loss, rtol=0, atol=0)
    task.set_epoch(seed=0, epoch=4, rank=0)  # another epoch: other random starts
    assert not torch.equal(task.train_loss(copy.deepcopy(fresh), x, y)[0], loss)
    # The loss is the mean CE of the returned logits, and those are not the clean batch's logits.
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    with torch.no_grad():
        assert not torch.allclose(logits, copy.deepcopy(fresh)(x))
    loss.backward()  # the graph reaches the parameters (the attack's own graphs are gone)
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------ trained tiny models
TRAIN_EPS = 8 / 255  # larger than the paper's 4/255 so that a tiny model trained for seconds shows the effect


def train_tiny(adversarial: bool, x: torch.Tensor, y: torch.Tensor, epochs: int = 6) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    attack = PGD(norm="linf", eps=TRAIN_EPS, step_size=TRAIN_EPS / 2, steps=3, random_start=True)
    task = AdversarialTask(
        attack, PGD(norm="linf", eps=TRAIN_EPS, step_size=2 / 255, steps=1, random_start=False)
    )
    order = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        task.set_epoch(0, epoch)
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), 64):
            xb, yb = x[perm[i : i + 64]], y[perm[i : i + 64]]
            model.train()
            loss = task.train_loss(model, xb, yb)[0] if adversarial else F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    x, y = decode("train", 1024)
    x_test, y_test = decode("test", 500)
    return {"clean": train_tiny(False, x, y), "adv": train_tiny(True, x, y), "test": (x_test, y_test)}


def robust_accuracy(model, x, y, norm, eps, step_rule):
    """Top-1 (%) under PGD-10 with step eps/4 and no random start, through AdversarialTask.evaluate."""
    steps = 10 if eps > 0 else 0
    pgd = PGD(norm=norm, eps=eps, step_size=eps / 4, steps=steps, random_start=False, step_rule=step_rule)
    sums = AdversarialTask(pgd, pgd).evaluate(
        model, [(x[i : i + 250], y[i : i + 250]) for i in range(0, len(y), 250)]
    )
    return float(sums["robust_top1"] / sums["count"])


SWEEPS = {  # (model, norm, step rule): epsilons; the last one is large enough that any real attack wins
    ("clean", "linf", "sign"): [0.0, 2 / 255, 8 / 255, 64 / 255],
    ("adv", "linf", "sign"): [0.0, 2 / 255, 8 / 255, 64 / 255],
    ("adv", "l2", "steepest"): [0.0, 0.5, 2.0, 8.0],
}


@pytest.fixture(scope="module")
def sweeps(trained):
    x, y = trained["test"]
    return {
        key: [robust_accuracy(trained[key[0]], x, y, key[1], eps, key[2]) for eps in epsilons]
        for key, epsilons in SWEEPS.items()
    }


@pytest.mark.parametrize("key", list(SWEEPS))
def test_robust_accuracy_falls_with_eps_to_near_zero(sweeps, key):
    # Gradient-masking check: accuracy falls as eps grows and a real attack drives it to ~0 at a large eps.
    # Measured (500 test images): clean model l-inf 34.4 15.0 0.6 0.0; adversarially trained l-inf
    # 24.6 22.0 17.0 0.4, l2 24.6 21.2 10.2 0.4.
    accs = sweeps[key]
    assert accs[0] > 20.0, accs  # the model learnt something
    assert all(b < a for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] <= 2.0, accs


def test_eps_sweep_falls_as_eps_grows(trained):
    # The task's own sweep (APGD-CE at 0, 1/2, 1, 2, 4 x eps = 8/255) on the adversarially trained tiny model.
    # Measured (200 test images): 25.5 20.5 17.5 11.0 2.0.
    x, y = trained["test"]
    task = small_task(**{"eps": TRAIN_EPS, "eps_sweep.subset": 200, "autoattack.enabled": False})
    metrics = task.finalize(task.evaluate(trained["adv"], [(x[:100], y[:100]), (x[100:200], y[100:200])]))
    accs = [metrics[key] for key in task.eps_sweep.keys()]
    assert accs[0] > 20.0 and all(b < a for a, b in zip(accs, accs[1:])) and accs[-1] <= 6.0, accs


def test_adversarial_training_buys_robustness(sweeps):
    # Same attack (l-inf PGD-10, eps 2/255 and 8/255), same test images. Measured: 15.0 vs 22.0 and
    # 0.6 vs 17.0 points; a 5-point margin is far outside the difference between runs.
    clean_model, adv_model = sweeps[("clean", "linf", "sign")], sweeps[("adv", "linf", "sign")]
    for i in (1, 2):
        assert adv_model[i] >= clean_model[i] + 5.0, (clean_model, adv_model)
    assert adv_model[0] < clean_model[0]  # the known price: lower clean accuracy
