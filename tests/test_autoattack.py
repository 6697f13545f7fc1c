"""AutoAttack (train/autoattack.py) and PGD against robust accuracy known in closed form, and the wrapper's contract.

A linear classifier z = W x + b has an exact worst case: the smallest l-inf perturbation that turns class y into j
is margin_j / ||w_y - w_j||_1 (l2: margin_j / ||w_y - w_j||_2), reached at a vertex of the threat ball. With the
inputs in [0.3, 0.7], eps well below 0.3 keeps that vertex inside the [0, 1] box, so a sample is robust exactly
when its smallest such distance exceeds eps. Samples within 5% of eps are dropped, so float rounding cannot
decide a sample either way.
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adamp_repro.train.attacks import PGD
from adamp_repro.train.autoattack import VERSION_ATTACKS, WARNING_FLAGS, AutoAttack, frozen_parameters

CLASSES, SHAPE = 10, (3, 8, 8)

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def linear_problem(norm: str, n: int, seed: int = 0):
    """A linear model, n samples (10% of them with a wrong label), eps, and the exact robust accuracy (%)."""
    g = torch.Generator().manual_seed(seed)
    d = SHAPE[0] * SHAPE[1] * SHAPE[2]
    weight, bias = torch.randn(CLASSES, d, generator=g), 2.0 * torch.randn(CLASSES, generator=g)
    model = Linear(weight, bias).eval()
    x = 0.3 + 0.4 * torch.rand(4 * n, *SHAPE, generator=g)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    dual = 1 if norm == "linf" else 2  # the dual norm of the threat model's
    gap = torch.linalg.vector_norm(weight[y][:, None, :] - weight[None], ord=dual, dim=2)  # (4n, C)
    distance = (logits.gather(1, y[:, None]) - logits) / gap
    distance[torch.arange(len(y)), y] = torch.inf
    radius = distance.min(1).values  # the smallest perturbation that changes the prediction
    eps = float(radius.median())
    keep = (radius / eps - 1).abs() > 0.05
    x, y, radius = x[keep][:n], y[keep][:n], radius[keep][:n]
    wrong = torch.arange(n) % 10 == 0  # clean errors count as not robust, whatever the attack does
    y = torch.where(wrong, (y + 1) % CLASSES, y)
    exact = 100.0 * float(((radius > eps) & ~wrong).float().mean())
    return model, x, y, eps, exact


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100.0 * float(model(x).argmax(1).eq(y).float().mean())


def test_the_linear_problem_is_not_trivial():
    model, x, y, eps, exact = linear_problem("linf", 400)
    assert 25.0 < exact < 65.0 and accuracy(model, x, y) == pytest.approx(90.0)
    assert float((x - eps).min()) > 0.0 and float((x + eps).max()) < 1.0  # the box never binds in l-inf


# AutoAttack: exact. Its targeted APGD tries all 9 other classes, and for a linear model each target's worst case
# is one vertex that a sign step reaches, so no sample can survive that the closed form calls non-robust.
# PGD: never below the exact value (no example in the threat set can fool a sample whose distance exceeds eps),
# and at most 1 point above it: cross-entropy's gradient mixes the classes, so PGD can miss the worst class of a
# sample (measured: 0 points here).
@pytest.mark.parametrize("norm,step_rule", [("linf", "sign"), ("l2", "steepest")])
def test_pgd_and_autoattack_give_the_closed_form_robust_accuracy(norm, step_rule):
    model, x, y, eps, exact = linear_problem(norm, 400)
    pgd = PGD(norm=norm, eps=eps, step_size=eps / 4, steps=10, random_start=False, step_rule=step_rule)
    pgd_accuracy = accuracy(model, pgd(model, x, y), y)
    assert exact <= pgd_accuracy <= exact + 1.0, (exact, pgd_accuracy)
    result = AutoAttack(norm, eps, version="custom", attacks=("apgd-ce", "apgd-t"))(model, x, y)
    assert 100.0 * float(result.correct.float().mean()) == pytest.approx(exact, abs=1e-9)
    assert result.flags == dict.fromkeys(WARNING_FLAGS, 0) and result.messages == []


def test_standard_autoattack_gives_the_closed_form_robust_accuracy():
    model, x, y, eps, exact = linear_problem("linf", 60, seed=1)
    result = AutoAttack("linf", eps)(model, x, y)
    assert 100.0 * float(result.correct.float().mean()) == pytest.approx(exact, abs=1e-9)
    assert accuracy(model, result.x_adv, y) == pytest.approx(exact, abs=1e-9)  # correct means top-1 on x_adv
    assert result.seconds > 0 and result.flags["outside_threat_set"] == 0


def test_cross_entropy_pgd_is_fooled_by_saturated_logits_and_autoattack_is_not():
    # Logits x 1e4 saturate the softmax: the cross-entropy gradient is exactly 0 in float32 for nearly every
    # sample, so sign-PGD does not move them (gradient masking), while APGD-T's DLR loss is scale-invariant and
    # still finds the worst case. Measured: PGD 89.5 (clean 90.0), exact and AutoAttack 45.5.
    model, x, y, eps, exact = linear_problem("linf", 200, seed=2)
    with torch.no_grad():
        model.fc.weight.mul_(1e4)
        model.fc.bias.mul_(1e4)
    pgd = PGD(norm="linf", eps=eps, step_size=eps / 4, steps=10, random_start=False)
    assert accuracy(model, pgd(model, x, y), y) > exact + 30.0
    result = AutoAttack("linf", eps, version="custom", attacks=("apgd-ce", "apgd-t"))(model, x, y)
    assert 100.0 * float(result.correct.float().mean()) == pytest.approx(exact, abs=1e-9)


# ------------------------------------------------------------------------------------------- the contract
class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
        )
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_batch(model: nn.Module, n: int = 3):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, *SHAPE, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct: every attack runs on every sample
    return x, y


def test_modes_grads_rng_and_trace_restored():
    torch.manual_seed(0)
    model = SmallNet().train()
    model.features[1].eval()  # mixed modes come back per module
    x, y = small_batch(model.eval())
    model.train()
    model.features[1].eval()
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = None if i % 2 else torch.full_like(p, 0.5 + i)
    params[0].requires_grad_(False)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    buffers = [b.clone() for b in model.buffers()]
    tracer = sys.gettrace()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    # FAB-T is the member that calls backward() (APGD uses autograd.grad on the input, Square only forwards).
    AutoAttack("linf", 8 / 255, version="custom", attacks=("fab-t",))(model, x, y)
    assert torch.equal(torch.rand(3), expected_draw)  # the package reseeded torch's RNG; ours is back
    assert sys.gettrace() is tracer
    assert model.training and not model.features[1].training and model.features[0].training
    assert [p.requires_grad for p in params] == [False] + [True] * (len(params) - 1)
    for p, g in zip(params, before):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))


def test_the_package_alone_would_write_parameter_grads():
    # Why frozen_parameters exists: FAB's backward() adds into every parameter's .grad.
    from pyautoattack import AutoAttack as PackageAutoAttack

    torch.manual_seed(0)
    model = SmallNet().eval()
    x, y = small_batch(model)
    package = PackageAutoAttack(model, attacks=["fab-t"], eps=8 / 255, version="custom", seed=0)
    package.fab.n_restarts, package.fab.n_target_classes = 1, 1
    package.run_standard_evaluation(x, y)
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())
    for p in model.parameters():
        p.grad = None
    with frozen_parameters(model):
        package.run_standard_evaluation(x, y)
    assert all(p.grad is None for p in model.parameters())


class Probabilities(SmallNet):
    def forward(self, x):
        return F.softmax(super().forward(x), dim=1)


class Noisy(SmallNet):
    def forward(self, x):
        return super().forward(x) + 0.1 * torch.randn(x.shape[0], CLASSES)


@pytest.mark.parametrize("net,flag", [(Probabilities, "probability_output"), (Noisy, "randomized")])
def test_the_package_checks_are_recorded_as_flags(net, flag, caplog):
    torch.manual_seed(0)
    model = net().eval()
    x, y = small_batch(model)
    with caplog.at_level(logging.WARNING):
        result = AutoAttack("linf", 1 / 255, version="custom", attacks=("apgd-ce",))(model, x, y)
    assert result.flags[flag] == 1 and result.flags["other"] == 0
    assert any(flag.split("_")[0] in m for m in result.messages)
    assert any(r.name == "auto-attack" for r in caplog.records)  # the user still sees the warning


def test_an_example_outside_the_threat_set_is_flagged():
    attack = AutoAttack("l2", 0.5)
    x = torch.full((2, *SHAPE), 0.5)
    inside = x.clone()
    inside[0, 0, 0, 0] += 0.5
    assert attack._inside_threat_set(inside, x)
    outside = inside.clone()
    outside[1, 0, 0, 1] += 0.6
    assert not attack._inside_threat_set(outside, x)
    assert not attack._inside_threat_set(x + 0.6, x)  # leaves the [0, 1] box as well


def test_empty_input_runs_nothing():
    result = AutoAttack("linf", 0.1)(SmallNet(), torch.zeros(0, *SHAPE), torch.zeros(0, dtype=torch.long))
    assert result.correct.shape == (0,) and result.seconds == 0.0


@pytest.mark.parametrize("version", sorted(VERSION_ATTACKS))
def test_version_attacks_are_the_packages(version):
    from pyautoattack import AutoAttack as PackageAutoAttack

    package = PackageAutoAttack(nn.Identity(), version=version, norm="Linf")
    assert tuple(package.attacks_to_run) == VERSION_ATTACKS[version]
    assert AutoAttack("linf", 0.1, version=version).describe()["attacks"] == list(VERSION_ATTACKS[version])


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"version": "fast"}, r"Invalid autoattack version: 'fast'; expected one of \('standard'"),
        ({"attacks": ("apgd-ce",)}, r"only version 'custom' takes a list \(version 'standard'"),
        ({"version": "custom"}, r"version 'custom' needs a list of distinct names"),
        ({"version": "custom", "attacks": ("pgd",)}, r"Invalid autoattack attacks: \('pgd',\)"),
        ({"norm": "l1"}, r"Invalid autoattack norm: 'l1'"),
        ({"eps": -1.0}, r"Invalid autoattack eps: -1.0"),
        ({"batch_size": 0}, r"Invalid autoattack batch_size: 0; expected an integer >= 1"),
    ],
)
def test_invalid_settings_name_the_value(kw, message):
    settings = {"norm": "linf", "eps": 0.1, **kw}
    with pytest.raises(ValueError, match=message):
        AutoAttack(**settings)
