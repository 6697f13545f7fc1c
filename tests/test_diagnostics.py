"""Weight diagnostics: detection of scale invariance, purity (training unchanged), rows and resume state."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import timm
import torch
from torch import nn

from adamp_repro.optim.projection import project_reference, scale_invariance_test
from adamp_repro.tracking.schema import ROW_KEYS, SUMMARY_KEYS
from adamp_repro.train.diagnostics import WeightDiagnostics, display_name, normalised_weights


def _batch(seed: int = 0, n: int = 4, size: int = 32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


class Wrapper(nn.Module):
    """Stands in for the trainer's wrapper: the network lives at ``.net``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


class SmallBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def scale_invariance_report(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    delta: float = 0.1,
    eps: float = 1e-8,
) -> dict[str, Any]:
    """One forward/backward on ``batch = (inputs, targets)`` in train mode, on a copy of ``model``.

    Returns ``detected_share`` (share of the elements of ndim > 1 weights that pass the optimizer's test),
    ``detected_tensor_share`` (the same by tensor count), ``normalised_share`` (element share of the weights
    followed by a normalisation layer), ``agreement`` (share of tensors where the structural rule and the
    gradient test agree) and per-weight ``rows``. The model (weights, grads, BN statistics) is untouched.
    """
    work = copy.deepcopy(model).train()
    inputs, targets = batch
    work.zero_grad(set_to_none=True)
    loss_fn(work(inputs), targets).backward()
    normalised = normalised_weights(work)
    rows = []
    with torch.no_grad():
        for name, p in work.named_parameters():
            if p.ndim < 2 or p.grad is None:
                continue
            test = scale_invariance_test(p, p.grad, delta, eps)
            rows.append(
                {
                    "param": display_name(name),
                    "numel": p.numel(),
                    "abs_cos_max": float(test.channel_cos),
                    "detected": bool(test.passed),
                    "followed_by_norm": name in normalised,
                }
            )
    total = sum(r["numel"] for r in rows)
    return {
        "detected_share": sum(r["numel"] for r in rows if r["detected"]) / total if total else math.nan,
        "detected_tensor_share": sum(r["detected"] for r in rows) / len(rows) if rows else math.nan,
        "normalised_share": sum(r["numel"] for r in rows if r["followed_by_norm"]) / total
        if total
        else math.nan,
        "agreement": sum(r["detected"] == r["followed_by_norm"] for r in rows) / len(rows)
        if rows
        else math.nan,
        "rows": rows,
    }


@pytest.fixture()
def resnet18():
    torch.manual_seed(0)
    # zero_init_last=False: timm zeroes each block's last BN scale, which zeroes the conv gradients and
    # would make the test pass trivially (cos(0, w) = 0).
    return timm.create_model("resnet18", num_classes=10, zero_init_last=False)


def test_detection_share_is_high_on_resnet18(resnet18):
    before = {k: v.clone() for k, v in resnet18.state_dict().items()}
    report = scale_invariance_report(resnet18, nn.functional.cross_entropy, _batch())
    assert report["detected_share"] > 0.9  # the paper: "more than 90% of the weights in ResNet"
    assert report["agreement"] == 1.0  # every conv is followed by BN and detected; the classifier is neither
    assert [r["param"] for r in report["rows"] if not r["detected"]] == ["fc.weight"]
    # The report works on a copy: weights, BN running statistics and grads of the model are untouched.
    assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    assert all(p.grad is None for p in resnet18.parameters())


def test_detection_share_is_near_zero_without_normalisation():
    report = scale_invariance_report(_mlp(), nn.functional.cross_entropy, _batch())
    assert report["detected_share"] < 0.05
    assert report["normalised_share"] == 0.0


def test_structural_rule_on_pre_activation_block():
    class PreActBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn1, self.relu1, self.conv1 = nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)
            self.bn2, self.relu2, self.conv2 = nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)

    # conv1 feeds bn2 (scale-invariant); conv2 feeds the residual sum (not).
    assert normalised_weights(PreActBlock()) == {"conv1.weight"}
    assert normalised_weights(Wrapper(SmallBNNet())) == {"net.conv1.weight", "net.conv2.weight"}


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (10, 64), (1, 12)])
def test_diagnostics_report_the_verdict_the_optimizer_acts_on(shape):
    """The diagnostics read the optimizers' own test: detected is what project_reference projects on."""
    gen = torch.Generator().manual_seed(1)
    for delta in (0.01, 0.1, 1.0, 10.0):
        w, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        test = scale_invariance_test(w, g, delta, 1e-8)
        assert torch.equal(
            test.passed, project_reference(w, g, torch.randn(shape, generator=gen), delta, 1e-8)
        )
        rows = torch.nn.functional.cosine_similarity(g.reshape(shape[0], -1), w.reshape(shape[0], -1), dim=1)
        assert torch.equal(test.channel_cos, rows.abs().max())
        assert bool(test.channel) == bool(test.channel_cos < delta / math.sqrt(w[0].numel()))


def test_display_name_drops_wrapper_prefixes():
    assert display_name("module.net.layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert display_name("_orig_mod.fc.weight") == "fc.weight"


def _train(model: nn.Module, steps: int, with_diagnostics: bool, every: int = 1):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    diag = WeightDiagnostics(model, opt, every_n_steps=every) if with_diagnostics else None
    out = []
    for step in range(steps):
        x, y = _batch(step, size=8)
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if diag:
            diag.before_step(step)
        opt.step()
        if diag:
            diag.after_step(step)
        if diag and step % 5 == 4:
            out.append(diag.epoch_end(step // 5))
    return out, diag


def test_diagnostics_do_not_change_training():
    torch.manual_seed(0)
    plain = Wrapper(SmallBNNet())
    watched = Wrapper(SmallBNNet())
    watched.load_state_dict(plain.state_dict())
    rng = torch.get_rng_state()
    _train(plain, 10, with_diagnostics=False)
    torch.set_rng_state(rng)
    _train(watched, 10, with_diagnostics=True)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name  # bitwise, BN buffers included


def test_epoch_end_rows_and_summary():
    torch.manual_seed(0)
    model = Wrapper(SmallBNNet())
    epochs, _ = _train(model, 10, with_diagnostics=True, every=3)
    assert len(epochs) == 2
    summary, rows = epochs[-1]
    assert tuple(summary) == SUMMARY_KEYS
    assert all(isinstance(v, float) for v in summary.values())
    assert [r["param"] for r in rows] == ["conv1.weight", "conv2.weight", "fc.weight"]
    for row in rows:
        assert tuple(row) == ROW_KEYS
        assert row["epoch"] == 1 and row["step"] == 9
        assert row["effective_step_size"] == pytest.approx(0.1 / row["weight_norm"] ** 2)
    assert [r["followed_by_norm"] for r in rows] == [1, 1, 0]
    # The convs feed BN (exactly scale-invariant); the classifier can pass the noisy test only by chance.
    assert [r["detected"] for r in rows[:2]] == [1.0, 1.0] and rows[2]["detected"] < 1.0
    numels = [8 * 27, 8 * 72, 80]
    assert [r["numel"] for r in rows] == numels
    expected_share = sum(n * r["detected"] for n, r in zip(numels, rows)) / sum(numels)
    assert summary["detected_share"] == pytest.approx(expected_share)
    norms = [r["weight_norm"] for r in rows[:2]]
    assert summary["mean_weight_norm"] == pytest.approx(sum(norms) / 2)
    weights = [model.net.conv1.weight, model.net.conv2.weight]
    assert norms == pytest.approx([float(w.detach().norm()) for w in weights])
    # Per output channel: mean filter norm and lr x mean 1/||w_c||^2, checked against a plain loop.
    for row, w in zip(rows, weights):
        filter_norms = [float(w[c].detach().norm()) for c in range(w.shape[0])]
        assert row["filter_norm"] == pytest.approx(sum(filter_norms) / len(filter_norms))
        inv_sq = sum(1.0 / n**2 for n in filter_norms) / len(filter_norms)
        assert row["filter_effective_step_size"] == pytest.approx(0.1 * inv_sq)
        # Jensen: mean of norms <= root mean square (= tensor norm / sqrt(channels)); equal only if all equal
        assert row["filter_norm"] <= row["weight_norm"] / math.sqrt(w.shape[0]) + 1e-12
    assert summary["mean_filter_norm"] == pytest.approx((rows[0]["filter_norm"] + rows[1]["filter_norm"]) / 2)


def test_norms_at_init_are_taken_before_training():
    torch.manual_seed(0)
    model = Wrapper(SmallBNNet())
    convs = [model.net.conv1.weight.detach().clone(), model.net.conv2.weight.detach().clone()]
    _, diag = _train(model, 4, with_diagnostics=True)
    assert diag.at_init["mean_weight_norm"] == pytest.approx(sum(float(w.norm()) for w in convs) / 2)
    per_filter = [float(w.reshape(w.shape[0], -1).norm(dim=1).mean()) for w in convs]
    assert diag.at_init["mean_filter_norm"] == pytest.approx(sum(per_filter) / 2)
    assert diag.norms_now()["mean_weight_norm"] != pytest.approx(diag.at_init["mean_weight_norm"])


def test_measures_each_epoch_even_with_sparse_cadence():
    model = Wrapper(SmallBNNet())
    epochs, _ = _train(model, 10, with_diagnostics=True, every=1000)
    assert all(not math.isnan(summary["mean_abs_cos"]) for summary, _ in epochs)


def test_state_dict_round_trip():
    model = Wrapper(SmallBNNet())
    _, diag = _train(model, 7, with_diagnostics=True, every=1)  # stops mid-epoch: accumulators are non-empty
    state = diag.state_dict()
    fresh = WeightDiagnostics(model, torch.optim.SGD(model.parameters(), lr=0.1), every_n_steps=1)
    fresh.load_state_dict(state)
    for key in ("cos_sum", "detected_sum", "count"):
        assert torch.equal(fresh.state_dict()[key], state[key])

    # NaN marks a value not measured (the angles of the classifier): compared as equal to NaN.
    def readable(rows):
        return [{k: "nan" if v != v else v for k, v in row.items()} for row in rows]

    assert readable(diag.epoch_end(1)[1]) == readable(fresh.epoch_end(1)[1])


def test_bad_arguments():
    model = SmallBNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="every_n_steps"):
        WeightDiagnostics(model, opt, every_n_steps=0)
    with pytest.raises(ValueError, match="delta"):
        WeightDiagnostics(model, opt, delta=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measurement_steps_do_not_sync_the_host():
    model = Wrapper(SmallBNNet()).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    diag = WeightDiagnostics(model, opt, every_n_steps=1)
    x, y = (t.cuda() for t in _batch(size=8))
    nn.functional.cross_entropy(model(x), y).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside raises
    try:
        diag.before_step(0)
        diag.after_step(0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    summary, _ = diag.epoch_end(0)  # the one sync of the epoch happens here
    assert summary["detected_share"] > 0.5


class Rotate(torch.optim.Optimizer):
    """Turns each filter w_c of every weight with as many filters as ``angles[step]`` has entries (the
    convs of SmallBNNet, not its classifier) by the angle ``angles[step][c]`` (radians) in the plane of w_c
    and its gradient, keeping ||w_c||: an optimizer step whose angular update is known exactly."""

    def __init__(self, params, angles: list[torch.Tensor]):
        super().__init__(params, {"lr": 0.1})
        self.angles, self.count = angles, 0

    @torch.no_grad()
    def step(self):
        theta = self.angles[self.count]
        self.count += 1
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2 or p.grad is None or p.shape[0] != len(theta):
                    continue
                w = p.reshape(p.shape[0], -1)
                norm = w.norm(dim=1, keepdim=True)
                w_hat = w / norm
                u = p.grad.reshape(p.shape[0], -1)
                u = u - (u * w_hat).sum(1, keepdim=True) * w_hat
                u = u / u.norm(dim=1, keepdim=True)
                t = theta[:, None].to(p.dtype)
                p.copy_((norm * (torch.cos(t) * w_hat + torch.sin(t) * u)).reshape(p.shape))


def _rotate(angles: list[torch.Tensor], grad_scale: float | None = None):
    """SmallBNNet in float64 (each conv has 8 filters) turned by ``angles`` (one (8,) tensor per step), every
    step measured; returns the epoch's rows and the per-step squared filter gradient norms of conv1."""
    torch.manual_seed(0)
    model = Wrapper(SmallBNNet()).double()
    opt = Rotate(model.parameters(), angles)
    diag = WeightDiagnostics(model, opt, every_n_steps=1)
    grad_sq = []
    for step in range(len(angles)):
        x, y = _batch(step, size=8)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x.double()), y)
        (loss * (grad_scale or 1.0)).backward()
        g = model.net.conv1.weight.grad.reshape(8, -1) / (grad_scale or 1.0)
        grad_sq.append(g.pow(2).sum(1))
        diag.before_step(step, grad_scale=grad_scale)
        opt.step()
        diag.after_step(step)
    return diag.epoch_end(0), torch.cat(grad_sq)


@pytest.mark.parametrize("theta", [1e-4, 3e-3, 0.5])
def test_angle_of_a_known_rotation(theta):
    (summary, rows), _ = _rotate([torch.full((8,), theta)])
    by_name = {r["param"]: r for r in rows}
    for name in ("conv1.weight", "conv2.weight"):
        assert by_name[name]["filter_angle"] == pytest.approx(theta, rel=1e-3)
        assert by_name[name]["filter_angle_rms"] == pytest.approx(theta, rel=1e-3)
    assert math.isnan(by_name["fc.weight"]["filter_angle"])  # not followed by a normalisation layer
    assert summary["rms_filter_angle"] == pytest.approx(theta, rel=1e-3)
    if theta == 1e-4:  # the tolerance bites: an fp32 arccos of the cosine misses it by far
        w = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        u = torch.randn(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        w, u = w / w.norm(), u - (u @ w) * w / (w @ w)
        turned = math.cos(theta) * w + math.sin(theta) * u / u.norm()
        naive = float(torch.arccos(nn.functional.cosine_similarity(w.float(), turned.float(), dim=0)))
        assert not abs(naive - theta) <= 1e-3 * theta  # off by far, or NaN (a cosine rounded above 1)


def test_angle_mean_and_rms_over_filters_and_steps():
    first = torch.linspace(1e-3, 8e-3, 8, dtype=torch.float64)
    angles = [first, 3 * first]
    (summary, rows), grad_sq = _rotate(angles)
    every = torch.cat(angles)
    conv1 = rows[0]
    assert conv1["param"] == "conv1.weight"
    assert conv1["filter_angle"] == pytest.approx(float(every.mean()), rel=1e-6)
    assert conv1["filter_angle_rms"] == pytest.approx(float(every.pow(2).mean().sqrt()), rel=1e-6)
    assert conv1["filter_angle_rms"] > conv1["filter_angle"] * 1.05  # the two differ on this spread
    assert conv1["filter_grad_norm_rms"] == pytest.approx(float(grad_sq.mean().sqrt()), rel=1e-9)
    conv2 = rows[1]
    assert summary["mean_filter_angle"] == pytest.approx((conv1["filter_angle"] + conv2["filter_angle"]) / 2)
    mean_sq = (conv1["filter_angle_rms"] ** 2 + conv2["filter_angle_rms"] ** 2) / 2
    assert summary["rms_filter_angle"] == pytest.approx(math.sqrt(mean_sq))


def test_gradient_norms_of_scaled_gradients():
    angles = [torch.full((8,), 1e-3, dtype=torch.float64)] * 2
    (_, rows), grad_sq = _rotate(angles, grad_scale=1024.0)
    assert rows[0]["filter_grad_norm_rms"] == pytest.approx(float(grad_sq.mean().sqrt()), rel=1e-9)
    assert rows[0]["filter_angle"] == pytest.approx(1e-3, rel=1e-3)


def test_angles_are_measured_at_the_sampled_steps_only():
    torch.manual_seed(0)
    model = Wrapper(SmallBNNet())
    _, diag = _train(model, 4, with_diagnostics=True, every=3)  # steps 0-3, no epoch end: measured at 0 and 3
    assert diag._angle_count.tolist() == [2 * 8, 2 * 8, 0]  # (steps x filters); fc is not scale-invariant
    assert diag._grad_count.tolist() == [2 * 8, 2 * 8, 0]
    # A checkpoint written before the angles existed loads, with the angles starting from zero.
    state = {k: v for k, v in diag.state_dict().items() if not k.startswith(("angle", "grad"))}
    fresh = WeightDiagnostics(model, torch.optim.SGD(model.parameters(), lr=0.1), every_n_steps=3)
    fresh.load_state_dict(state)
    assert fresh._angle_sum.tolist() == [0.0, 0.0, 0.0]
    rows = diag.epoch_end(0)[1]
    assert all(r["filter_angle"] > 0 for r in rows[:2]) and diag._angle_count.tolist() == [0, 0, 0]


def test_diagnostics_with_angles_leave_a_network_step_bit_identical():
    """Every step measured (angles, gradient norms): the weights and optimizer state equal a plain run's."""
    from adamp_repro.optim import AdamP

    def run(with_diagnostics: bool):
        torch.manual_seed(0)
        model = Wrapper(SmallBNNet())
        opt = AdamP(model.parameters(), lr=0.01, weight_decay=1e-2)
        diag = WeightDiagnostics(model, opt, every_n_steps=1) if with_diagnostics else None
        for step in range(3):
            x, y = _batch(step, size=8)
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            if diag:
                diag.before_step(step)
            opt.step()
            if diag:
                diag.after_step(step)
        rows = diag.epoch_end(0)[1] if diag else []
        return model.state_dict(), opt.state_dict()["state"], rows

    plain, plain_opt, _ = run(False)
    watched, watched_opt, rows = run(True)
    assert rows[0]["filter_angle"] > 0  # the angles were measured
    for name, a in plain.items():
        assert torch.equal(a, watched[name]), name
    for index, state in plain_opt.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(watched_opt[index][key])), (index, key)
