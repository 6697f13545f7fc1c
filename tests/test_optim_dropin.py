"""SGDP and AdamP as drop-ins for the official ``adamp==0.3.0`` classes, which every test here runs as the
oracle: every call the official classes take with a meaningful value works and gives their numbers (per-group
lr and torch's ``required`` sentinel, positional arguments, groups with their own hyper-parameters,
add_param_group, named parameters, tensor lr); what is meaningless is refused before any step although the
official code takes it (NaN/inf hyper-parameters, eps=0 in AdamP, a string for a bool); fp16/bf16 weights
keep fp32 state (NOTE: [low-precision state] in ``adamp_repro.optim.base``) in every form, and state dicts
still travel between the official classes and ours.
"""

from __future__ import annotations

import copy
import io
import math
import re

import adamp
import pytest
import torch
from torch import nn

from adamp_repro.optim import SGDP, AdamP, fused_cpu
from adamp_repro.optim import adamp as adamp_module
from adamp_repro.optim import sgdp as sgdp_module
from adamp_repro.optim.projection import project_reference
from tests.test_optim_behaviour import INFO_IDS, OPTIM_INFOS

pytestmark = pytest.mark.usefixtures("one_thread")

ADAMP_INFO, SGDP_INFO = OPTIM_INFOS
LOW_PRECISION = [torch.float16, torch.bfloat16]
FORMS = {
    "reference": dict(foreach=False),
    "fused": dict(foreach=None),
    "fast": dict(foreach=True),
    "compiled": dict(compile=True),  # run eagerly here (see the eager_kernels fixture)
}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture
def eager_kernels(monkeypatch):
    """compile=True runs the very functions Inductor would compile, uncompiled: the compiled form's code path
    in milliseconds (the real compile is test_optim_behaviour's slow test)."""

    def eager(kernel, rows):
        return lambda *args: kernel(*args, rows)

    monkeypatch.setattr(adamp_module, "compiled_kernel", eager)
    monkeypatch.setattr(sgdp_module, "compiled_kernel", eager)


@pytest.fixture
def fused_calls(monkeypatch) -> list[int]:
    """Spy on the fused C++ kernels: one entry per call."""
    seen: list[int] = []
    real = fused_cpu.step

    def spy(kind, tensors, *args, **kwargs):
        seen.append(len(tensors))
        return real(kind, tensors, *args, **kwargs)

    monkeypatch.setattr(fused_cpu, "step", spy)
    return seen


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device(name)


def _weights(device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """A conv weight (projected when it passes), a linear weight, a bias: fp32 starting values (a seed that
    no gradient of ``_grads`` uses)."""
    generator = torch.Generator().manual_seed(12345)
    shapes = [(8, 4, 3, 3), (5, 7), (8,)]
    return [torch.randn(shape, generator=generator).to(device) for shape in shapes]


def _grads(params, seed: int, scale: float = 1.0) -> list[torch.Tensor]:
    """Random gradients; the conv weight's is orthogonal to each of its output channels, as behind BN, so that
    weight passes the scale-invariance test and is projected, while the linear weight fails it."""
    generator = torch.Generator().manual_seed(seed)
    grads = []
    for p in params:
        g = scale * torch.randn(p.shape, generator=generator)
        if p.dim() > 2:
            w = p.detach().cpu().float().reshape(p.shape[0], -1)
            rows = g.view(p.shape[0], -1)
            rows -= w * (rows * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True).clamp_min(1e-30)
        grads.append(g.to(p.device, p.dtype))
    return grads


def test_these_gradients_take_both_branches_of_the_test() -> None:
    """The cases below cover a projected weight (conv) and an unprojected one (linear), in fp32 and fp16."""
    for dtype, scale in ((torch.float32, 1.0), (torch.float16, 1e-3)):
        weights = [w.to(dtype) for w in _weights()]
        conv, linear, _ = _grads(weights, 0, scale)
        assert bool(project_reference(weights[0].float(), conv.float(), conv.float(), 0.1, 1e-8))
        assert not bool(project_reference(weights[1].float(), linear.float(), linear.float(), 0.1, 1e-8))


def _step_both(pairs, seed: int) -> None:
    """One step of every (optimizer, params) pair on the same gradients."""
    grads = _grads(pairs[0][1], seed)
    for optimizer, params in pairs:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        optimizer.step()


def _params(values) -> list[nn.Parameter]:
    return [nn.Parameter(v.detach().clone()) for v in values]


# --- calls the official classes take ----------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, None])
def test_sgdp_takes_a_per_group_lr_as_the_official_class_does(foreach) -> None:
    """lr defaults to torch's ``required``: a group's own lr is enough, as in adamp.SGDP (timm's factory
    calls it so)."""
    ours_params, official_params = _params(_weights()), _params(_weights())
    ours = SGDP(
        [{"params": ours_params[:2], "lr": 0.1}, {"params": ours_params[2:], "lr": 0.01}], foreach=foreach
    )
    official = adamp.SGDP(
        [{"params": official_params[:2], "lr": 0.1}, {"params": official_params[2:], "lr": 0.01}]
    )
    for seed in range(3):
        _step_both([(ours, ours_params), (official, official_params)], seed)
    tolerance = dict(rtol=0, atol=0) if foreach is False else {}
    for a, b in zip(ours_params, official_params):
        torch.testing.assert_close(a, b, **tolerance)
    assert [group["lr"] for group in ours.param_groups] == [0.1, 0.01]


def test_sgdp_without_any_lr_fails_with_torchs_message() -> None:
    """No lr in the group and no default: torch's own error, word for word as the official class gives it."""
    messages = []
    for cls in (SGDP, adamp.SGDP):
        with pytest.raises(ValueError) as raised:
            cls([{"params": _params(_weights())}], momentum=0.9)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
    assert "required optimization parameter lr" in messages[0]
    optimizer = SGDP([{"params": _params(_weights()), "lr": 0.1}])
    for candidate in (optimizer, copy.deepcopy(optimizer)):  # the sentinel survives deepcopy
        with pytest.raises(ValueError, match="required optimization parameter lr"):
            candidate.add_param_group({"params": [nn.Parameter(torch.randn(3))]})
        assert len(candidate.param_groups) == 1


@pytest.mark.parametrize(
    ("info", "positional"),
    [
        (ADAMP_INFO, (2e-2, (0.8, 0.99), 1e-6, 1e-2, 0.2, 0.3, True)),
        (SGDP_INFO, (0.05, 0.9, 0.0, 1e-3, True, 1e-7, 0.2, 0.3)),
    ],
    ids=INFO_IDS,
)
def test_every_official_argument_positionally(info, positional) -> None:
    """The official positional order (lr, ..., wd_ratio[, nesterov]) means the same in ours: bit-exact."""
    ours_params, official_params = _params(_weights()), _params(_weights())
    ours = info.cls(ours_params, *positional, foreach=False)
    official = info.official(official_params, *positional)
    assert {k: ours.defaults[k] for k in official.defaults} == official.defaults
    for seed in range(3):
        _step_both([(ours, ours_params), (official, official_params)], seed)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, official_params))


GROUP_OPTIONS = {
    "AdamP": [
        dict(lr=3e-2, betas=(0.8, 0.99)),
        dict(eps=1e-4, nesterov=True),
        dict(delta=0.5, wd_ratio=0.5, weight_decay=0.1),
    ],
    "SGDP": [
        dict(lr=0.02, momentum=0.5, nesterov=False),
        dict(dampening=0.3, nesterov=False, eps=1e-6),
        dict(delta=0.5, wd_ratio=0.5, weight_decay=1e-2),
    ],
}


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
@pytest.mark.parametrize("foreach", [False, None, True])
def test_groups_with_their_own_hyper_parameters_and_a_group_added_later(info, foreach) -> None:
    """Each group overrides different options; a fourth group joins after two steps (add_param_group)."""
    values = _weights() + _weights()[:1]
    ours_params, official_params = _params(values), _params(values)
    options = GROUP_OPTIONS[info.cls.__name__]

    def groups(params):
        return [{"params": [p], **option} for p, option in zip(params, options)]

    ours = info.cls(groups(ours_params[:3]), foreach=foreach, **info.kwargs)
    official = info.official(groups(official_params[:3]), **info.kwargs)
    for seed in range(2):
        _step_both([(ours, ours_params[:3]), (official, official_params[:3])], seed)
    ours.add_param_group({"params": ours_params[3:], "wd_ratio": 0.7})
    official.add_param_group({"params": official_params[3:], "wd_ratio": 0.7})
    assert ours.param_groups[3]["lr"] == official.param_groups[3]["lr"] == info.kwargs["lr"]
    for seed in range(2, 5):
        _step_both([(ours, ours_params), (official, official_params)], seed)
    for a, b in zip(ours_params, official_params):
        if foreach is False:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_named_parameters_and_a_tensor_lr_as_the_official_class_takes_them(info) -> None:
    ours_net, official_net = nn.Linear(4, 3), nn.Linear(4, 3)
    official_net.load_state_dict(ours_net.state_dict())
    kwargs = {**info.kwargs, "lr": torch.tensor(info.kwargs["lr"])}
    ours = info.cls(ours_net.named_parameters(), **kwargs)
    official = info.official(official_net.named_parameters(), **kwargs)
    assert ours.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    for seed in range(3):
        _step_both([(ours, list(ours_net.parameters())), (official, list(official_net.parameters()))], seed)
    for a, b in zip(ours_net.parameters(), official_net.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert isinstance(ours.param_groups[0]["lr"], torch.Tensor)  # left as the user set it


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["reference", "fused", "fast"])
@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_tensor_hyper_parameters_give_the_float_numbers(info, form, device) -> None:
    """A one-element tensor lr / weight_decay / betas (a CPU tensor, as torch's own optimizers take it for
    CUDA weights too) is read as the Python float it holds: the same weights, bit for bit, as the float run
    (float64 tensors hold the floats exactly)."""
    device = _device(device)

    def exact(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.float64)

    tensors = {"lr": exact(info.kwargs["lr"]), "weight_decay": exact(info.kwargs["weight_decay"])}
    if info.cls is AdamP:
        tensors["betas"] = (exact(0.9), exact(0.999))
    float_params, tensor_params = _params(_weights(device)), _params(_weights(device))
    as_floats = info.cls(float_params, **{**info.kwargs, **FORMS[form]})
    as_tensors = info.cls(tensor_params, **{**info.kwargs, **FORMS[form], **tensors})
    for seed in range(3):
        _step_both([(as_floats, float_params), (as_tensors, tensor_params)], seed)
    assert all(torch.equal(a, b) for a, b in zip(float_params, tensor_params))


# --- values refused although the official code takes them -----------------------------------------------

NAMES = {
    "lr": "learning rate",
    "eps": "epsilon value",
    "weight_decay": "weight_decay value",
    "delta": "delta",
    "wd_ratio": "wd_ratio",
    "momentum": "momentum value",
    "dampening": "dampening",
}
NUMERIC_KEYS = {
    "AdamP": ["lr", "eps", "weight_decay", "delta", "wd_ratio", "betas0", "betas1"],
    "SGDP": ["lr", "eps", "weight_decay", "delta", "wd_ratio", "momentum", "dampening"],
}
NON_FINITE = [
    pytest.param(info, key, value, id=f"{info.cls.__name__}-{key}={value}")
    for info in OPTIM_INFOS
    for key in NUMERIC_KEYS[info.cls.__name__]
    for value in (math.nan, math.inf, -math.inf)
]


def _with(info, key: str, value) -> tuple[dict, str]:
    """Constructor kwargs with ``key`` set to ``value``, and the name the error must give."""
    if key.startswith("betas"):
        betas = [0.9, 0.999]
        betas[int(key[-1])] = value
        return {**info.kwargs, "betas": tuple(betas)}, f"beta parameter at index {key[-1]}"
    return {**info.kwargs, key: value}, NAMES[key]


@pytest.mark.parametrize(("info", "key", "value"), NON_FINITE)
def test_non_finite_values_are_refused_in_torchs_words(info, key, value) -> None:
    kwargs, name = _with(info, key, value)
    info.official(_params(_weights()), **kwargs)  # the official class takes it without a word
    with pytest.raises(ValueError, match=rf"^Invalid {re.escape(name)}: {re.escape(repr(value))}; expected "):
        info.cls(_params(_weights()), **kwargs)
    optimizer = info.cls(_params(_weights()), **info.kwargs)
    group_key = "betas" if key.startswith("betas") else key
    with pytest.raises(ValueError, match=re.escape(f"Invalid {name}: {value!r}")):
        optimizer.add_param_group({"params": [nn.Parameter(torch.randn(3))], group_key: kwargs[group_key]})
    assert len(optimizer.param_groups) == 1


def test_official_adamp_with_eps_zero_makes_nan_and_ours_refuses_it() -> None:
    """AdamP divides by sqrt(v)/sqrt(bc2) + eps: with eps = 0 an entry whose gradient has been 0 at every step
    so far is 0/0. eps too small for float32 (1e-50) is the same zero in every form."""
    weight = nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3)
    weight.grad[0, 0] = 0.0
    adamp.AdamP([weight], eps=0.0).step()
    assert torch.isnan(weight).any()
    for eps in (0.0, 0, 1e-50):
        with pytest.raises(
            ValueError, match=re.escape(f"Invalid epsilon value: {eps!r}; AdamP needs eps > 0")
        ):
            AdamP([nn.Parameter(torch.randn(4, 3))], eps=eps)
    AdamP([nn.Parameter(torch.randn(4, 3))], eps=1e-45)  # the smallest float32 subnormal is still > 0


@pytest.mark.parametrize("foreach", [False, None, True])
def test_sgdp_with_eps_zero_matches_the_official_class_without_nan(foreach) -> None:
    """SGDP uses eps only in the test and the row norm: a zero weight row or zero gradient row makes that
    row's cosine NaN, which fails the test, so no zero norm is divided by. eps = 0 is therefore taken, and the
    projected branch (delta large, so weights pass) still agrees with the official class."""

    def values():
        weight, linear, bias = _weights()
        weight[2] = 0.0  # a dead output channel
        return [weight, linear, bias, torch.zeros(5, 7)]

    kwargs = dict(lr=0.1, momentum=0.9, eps=0.0, delta=10.0)
    ours_params, official_params = _params(values()), _params(values())
    ours, official = SGDP(ours_params, foreach=foreach, **kwargs), adamp.SGDP(official_params, **kwargs)
    for seed in range(4):
        grads = _grads(ours_params, seed)
        grads[0][4] = 0.0  # a zero gradient row
        if seed % 2:
            grads[1].zero_()
        for params, optimizer in ((ours_params, ours), (official_params, official)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            optimizer.step()
    assert all(torch.isfinite(p).all() for p in official_params + ours_params)
    tolerance = dict(rtol=0, atol=0) if foreach is False else {}
    for a, b in zip(ours_params, official_params):
        torch.testing.assert_close(a, b, **tolerance)


@pytest.mark.parametrize(
    ("info", "key", "value"),
    [
        (SGDP_INFO, "nesterov", "no"),
        (SGDP_INFO, "project_buffer", "False"),
        (ADAMP_INFO, "nesterov", "yes"),
        (ADAMP_INFO, "compile", 2),
        (ADAMP_INFO, "lr", True),
        (SGDP_INFO, "momentum", "0.9"),
        (ADAMP_INFO, "lr", torch.tensor([1e-3, 1e-3])),
    ],
    ids=[
        "sgdp-nesterov-str",
        "sgdp-project_buffer-str",
        "adamp-nesterov-str",
        "adamp-compile-2",
        "adamp-lr-bool",
        "sgdp-momentum-str",
        "adamp-lr-2-element-tensor",
    ],
)
def test_wrong_types_are_refused_naming_the_value(info, key, value) -> None:
    """A string where a bool belongs would be truthy in the official code; a bool is not a learning rate."""
    with pytest.raises(ValueError, match=rf"^Invalid {re.escape(NAMES.get(key, key))}: .*; expected"):
        info.cls(_params(_weights()), **{**info.kwargs, key: value})


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_a_saved_state_with_a_nan_lr_is_refused_and_nothing_changes(info) -> None:
    params = _params(_weights())
    optimizer = info.cls(params, **info.kwargs)
    _step_both([(optimizer, params)], 0)
    before = copy.deepcopy(optimizer.state_dict())
    bad = copy.deepcopy(before)
    bad["param_groups"][0]["lr"] = math.nan
    bad["state"] = {}
    with pytest.raises(ValueError, match="Invalid learning rate: nan"):
        optimizer.load_state_dict(bad)
    after = optimizer.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(
        torch.equal(after["state"][i][k], v)
        for i, s in before["state"].items()
        for k, v in s.items()
        if k != "step"
    )


# --- fp16 / bf16: fp32 state in every form ----------------------------------------------------------------


def _twin_step(
    info, form: dict, params, optimizer, grads
) -> tuple[list[nn.Parameter], torch.optim.Optimizer]:
    """What an fp32 optimizer of the same form makes of the same weights, state and gradients (upcast)."""
    twin_params = [nn.Parameter(p.detach().float()) for p in params]
    twin = info.cls(twin_params, **info.kwargs, **form)
    twin.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for q, g in zip(twin_params, grads):
        q.grad = g.float()
    twin.step()
    return twin_params, twin


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_low_precision_step_is_the_fp32_step_rounded_once(
    info, form, dtype, device, eager_kernels, fused_calls
) -> None:
    """Every form: from the same fp16/bf16 weights, fp32 state and gradients, our step equals an fp32
    optimizer's step rounded once to the weight dtype, bit for bit, and the state stays fp32 and equal to the
    twin's."""
    device = _device(device)
    if device.type == "cuda" and form in ("fused", "compiled"):
        pytest.skip("fused C++ and compiled forms are CPU forms")
    params = [nn.Parameter(v.to(dtype)) for v in _weights(device)]
    optimizer = info.cls(params, **info.kwargs, **FORMS[form])
    for seed in range(3):
        grads = _grads(params, seed, scale=1e-3)
        twin_params, twin = _twin_step(info, FORMS[form], params, optimizer, grads)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        for p, q in zip(params, twin_params):
            assert p.dtype == dtype and torch.equal(p, q.detach().to(dtype))
        for p, q in zip(params, twin_params):
            for key, value in optimizer.state[p].items():
                if isinstance(value, torch.Tensor):
                    assert value.dtype == torch.float32 and torch.equal(value, twin.state[q][key]), key
    if form == "fused" and fused_cpu.load(warn=False) is not None:
        assert fused_calls  # the fp32 working copies went through the C++ kernels


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("form", ["reference", "fused", "fast"])
@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_low_precision_run_follows_the_fp32_run(info, form, dtype) -> None:
    """30 steps with |g| ~ 1e-3 from the same rounded start on the same rounded gradients: every weight of the
    fp16/bf16 run is within 30 half-ulps (one rounding per step, at |w| of the fp32 run) of the fp32 run. The
    official class keeps fp16 moments: v underflows to 0, and its run leaves that bound (NaN or far)."""
    steps, kwargs = 30, {**info.kwargs, **FORMS[form]}
    start = [v.to(dtype).float() for v in _weights()]
    grads = [[g.to(dtype) for g in _grads(start, seed, scale=1e-3)] for seed in range(steps)]

    def run(cls, weight_dtype, **options):
        params = [nn.Parameter(v.to(weight_dtype).clone()) for v in start]
        optimizer = cls(params, **options)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.to(weight_dtype)
            optimizer.step()
        return [p.detach().float() for p in params]

    exact = run(info.cls, torch.float32, **kwargs)

    def within_bound(low: list[torch.Tensor]) -> bool:
        for a, b, first in zip(low, exact, start):
            magnitude = torch.maximum(b.abs(), first.abs()).clamp_min(torch.finfo(dtype).tiny)
            half_ulp = torch.finfo(dtype).eps / 2 * torch.exp2(torch.floor(torch.log2(magnitude)))
            if not bool(((a - b).abs() <= steps * half_ulp).all()):
                return False
        return True

    assert within_bound(run(info.cls, dtype, **kwargs))
    if info.cls is AdamP and dtype == torch.float16:
        assert not within_bound(run(info.official, dtype, **info.kwargs))


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_low_precision_state_dicts_travel_between_official_and_ours(info, dtype) -> None:
    """official (fp16/bf16 state) -> ours: upcast exactly to fp32; ours -> official: torch rounds it to the
    weight dtype; ours -> file -> ours: fp32 kept (torch's load would round it) and the run continues bit for
    bit as if never saved."""
    official_params = [nn.Parameter(v.to(dtype)) for v in _weights()]
    official = info.official(official_params, **info.kwargs)
    _step_both([(official, official_params)], 0)
    ours_params = _params(official_params)
    ours = info.cls(ours_params, **info.kwargs)
    ours.load_state_dict(copy.deepcopy(official.state_dict()))
    for p, q in zip(ours_params, official_params):
        for key, value in official.state[q].items():
            if isinstance(value, torch.Tensor):
                assert ours.state[p][key].dtype == torch.float32
                assert torch.equal(ours.state[p][key], value.float())
    _step_both([(ours, ours_params)], 1)
    back_params = _params(ours_params)
    back = info.official(back_params, **info.kwargs)
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    for p, q in zip(ours_params, back_params):
        for key, value in ours.state[p].items():
            if isinstance(value, torch.Tensor):
                assert back.state[q][key].dtype == dtype and torch.equal(back.state[q][key], value.to(dtype))
    # It loads and steps. (In fp16 the official AdamP step is NaN by itself on 2-D weights: an entry with
    # |g| < 5e-3 gets v = 0, eps = 1e-8 rounds to 0, and the inf of m / 0 spreads through the projection.)
    _step_both([(back, back_params)], 2)

    buffer = io.BytesIO()
    torch.save({"optimizer": ours.state_dict(), "params": [p.detach() for p in ours_params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [nn.Parameter(t) for t in saved["params"]]
    resumed = info.cls(resumed_params, **info.kwargs)
    resumed.load_state_dict(saved["optimizer"])
    for p, q in zip(ours_params, resumed_params):
        for key, value in ours.state[p].items():
            if isinstance(value, torch.Tensor):
                assert resumed.state[q][key].dtype == torch.float32 and torch.equal(
                    resumed.state[q][key], value
                )
    for seed in range(3, 6):
        _step_both([(ours, ours_params), (resumed, resumed_params)], seed)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, resumed_params))


@pytest.mark.parametrize("form", ["fused", "fast"])
@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_mixed_fp32_and_fp16_group_steps_each_as_if_alone(info, form) -> None:
    """One group holding fp32 and fp16 weights: each dtype's result is what an optimizer of that dtype alone
    gives (the fp16 bucket's working copies and layout never touch the fp32 bucket's)."""
    fp32_values, fp16_values = _weights(), [v * 0.5 for v in _weights()]
    mixed = _params(fp32_values) + [nn.Parameter(v.half()) for v in fp16_values]
    alone = [_params(fp32_values), [nn.Parameter(v.half()) for v in fp16_values]]
    options = {**info.kwargs, **FORMS[form]}
    pairs = [(info.cls(mixed, **options), mixed)] + [(info.cls(ps, **options), ps) for ps in alone]
    for seed in range(3):
        grads = _grads(fp32_values, seed, scale=1e-2)
        for optimizer, params in pairs:
            for p, g in zip(params, grads + grads if len(params) == 6 else grads):
                p.grad = g.to(p.dtype)
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(mixed, alone[0] + alone[1]))


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_state_of_another_dtype_set_by_hand_takes_the_reference_form(info, fused_calls) -> None:
    """fp16 moments put in the state by hand (not by our load_state_dict, which upcasts) never reach the C++
    kernels, which would read them as fp32: the default form then steps as the reference form does."""
    runs = []
    for foreach in (None, False):
        params = [nn.Parameter(v.half()) for v in _weights()]
        optimizer = info.cls(params, **info.kwargs, foreach=foreach)
        _step_both([(optimizer, params)], 0)
        for p in params:
            state = optimizer.state[p]
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.half()
        fused_calls.clear()
        _step_both([(optimizer, params)], 1)
        assert not fused_calls
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
