"""Behaviour checklist for SGDP and AdamP (torch's optim_db habit): one info entry per optimizer drives every
test, so a new projected optimizer is covered by adding one ``OptimInfo``.

Checks: fast form == reference form; state_dict round trip through torch.load(weights_only=True); zero
gradients and zero weights give no NaN; empty and 0-dim parameters; param groups with their own lr / wd;
deepcopy; channels_last == contiguous; fp16/bf16 with a zero-gradient row; bad hyper-parameters; sparse and
complex rejected; torch.compile(opt.step) (fullgraph, so no host sync or Python branch on tensor data);
GradScaler on CPU; the SGDP decay factor and AdamP denominator as unit tests; compile=True fallback.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from dataclasses import dataclass, field

import adamp
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adamp_repro.optim import SGDP, AdamP, fused_cpu
from adamp_repro.optim import adamp as adamp_module

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class OptimInfo:
    cls: type
    official: type
    kwargs: dict  # a typical configuration (weight decay on, so ratio and decay are exercised)
    variants: list[dict]  # further option sets every generic test also runs
    bad_inputs: list[tuple[dict, str]] = field(default_factory=list)  # (kwargs, text the ValueError names)


OPTIM_INFOS = [
    OptimInfo(
        AdamP,
        adamp.AdamP,
        dict(lr=1e-2, weight_decay=5e-2),
        [dict(nesterov=True), dict(weight_decay=0.0, delta=0.5, wd_ratio=0.3)],
        [
            (dict(lr=-1e-3), "-0.001"),
            (dict(eps=-1.0), "-1.0"),
            (dict(betas=(1.0, 0.999)), "1.0"),
            (dict(betas=(0.9, -0.1)), "-0.1"),
            (dict(delta=0.0), "delta: 0.0"),
            (dict(wd_ratio=-0.5), "-0.5"),
            (dict(weight_decay=-1e-2), "-0.01"),
            (dict(betas=(0.9,)), "(0.9,)"),
            (dict(foreach="yes"), "'yes'"),
            (dict(lr=math.nan), "Invalid learning rate: nan"),
            (dict(weight_decay=math.inf), "Invalid weight_decay value: inf"),
            (dict(eps=0.0), "Invalid epsilon value: 0.0"),
            (dict(nesterov="no"), "Invalid nesterov: 'no'"),
        ],
    ),
    OptimInfo(
        SGDP,
        adamp.SGDP,
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
        [
            dict(nesterov=False),
            dict(nesterov=False, project_buffer=False),
            dict(nesterov=False, momentum=0.0),
            dict(nesterov=False, dampening=0.2, delta=0.3, wd_ratio=0.5),
        ],
        [
            (dict(lr=-0.1), "-0.1"),
            (dict(momentum=1.0), "1.0"),
            (dict(momentum=-0.5), "-0.5"),
            (dict(dampening=1.5), "1.5"),
            (dict(weight_decay=-1.0), "-1.0"),
            (dict(delta=-0.1), "-0.1"),
            (dict(wd_ratio=-1.0), "wd_ratio"),
            (dict(eps=-1e-8), "-1e-08"),
            (dict(nesterov=True, momentum=0.0), "momentum=0.0"),
            (dict(nesterov=True, dampening=0.1), "dampening=0.1"),
            (dict(lr=math.inf), "Invalid learning rate: inf"),
            (dict(delta=math.nan), "Invalid delta: nan"),
            (dict(project_buffer="no"), "Invalid project_buffer: 'no'"),
        ],
    ),
]
INFO_IDS = [info.cls.__name__ for info in OPTIM_INFOS]
OPTION_SETS = [(info, {**info.kwargs, **variant}) for info in OPTIM_INFOS for variant in [{}, *info.variants]]
OPTION_IDS = [
    f"{info.cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for info, kw in OPTION_SETS
]


def _net(channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 1),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 4),
    )
    return net.to(memory_format=torch.channels_last) if channels_last else net


def _run(optimizer_factory, steps: int = 8, channels_last: bool = False, seed: int = 1) -> list[torch.Tensor]:
    net = _net(channels_last)
    optimizer = optimizer_factory(net.parameters())
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(6, 3, 6, 6, generator=generator)
    if channels_last:
        data = data.to(memory_format=torch.channels_last)
    for _ in range(steps):
        optimizer.zero_grad()
        net(data).square().mean().backward()
        optimizer.step()
    return [p.detach().contiguous() for p in net.parameters()]


def _random_grad_steps(optimizer, params, steps: int, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).to(p.dtype)
        optimizer.step()


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
def test_fast_form_equals_reference_form(info, kwargs) -> None:
    reference = _run(lambda ps: info.cls(ps, foreach=False, **kwargs))
    fast = _run(lambda ps: info.cls(ps, foreach=None, **kwargs))
    for a, b in zip(fast, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_state_dict_round_trip_continues_exactly(info, kwargs, foreach) -> None:
    net = _net()
    params = list(net.parameters())
    optimizer = info.cls(params, foreach=foreach, **kwargs)
    _random_grad_steps(optimizer, params, 3, seed=0)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "params": [p.detach().clone() for p in params]}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_params = [nn.Parameter(t) for t in saved["params"]]
    resumed = info.cls(resumed_params, foreach=foreach, **kwargs)
    resumed.load_state_dict(saved["optimizer"])
    _random_grad_steps(optimizer, params, 3, seed=1)
    _random_grad_steps(resumed, resumed_params, 3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_state_dict_interoperates_with_official(info) -> None:
    """Same state keys as adamp 0.3.0: an official checkpoint resumes in ours with the same next step."""
    ours_params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))]
    official_params = [nn.Parameter(p.detach().clone()) for p in ours_params]
    official = info.official(official_params, **info.kwargs)
    _random_grad_steps(official, official_params, 2)
    ours = info.cls(ours_params, foreach=False, **info.kwargs)
    with torch.no_grad():
        for a, b in zip(ours_params, official_params):
            a.copy_(b)
    ours.load_state_dict(copy.deepcopy(official.state_dict()))  # as from a file: no tensors shared
    assert ours.param_groups[0]["foreach"] is None  # keys the official groups lack get our defaults
    ours.param_groups[0]["foreach"] = False
    _random_grad_steps(official, official_params, 1, seed=5)
    _random_grad_steps(ours, ours_params, 1, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, official_params))


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_zero_gradients_and_zero_weights_give_no_nan(info, kwargs, foreach) -> None:
    zero_weight = nn.Parameter(torch.zeros(4, 3, 3, 3))
    weight = nn.Parameter(torch.randn(4, 3, 3, 3))
    bias = nn.Parameter(torch.zeros(4))
    optimizer = info.cls([zero_weight, weight, bias], foreach=foreach, **kwargs)
    for _ in range(3):
        zero_weight.grad = torch.randn_like(zero_weight)
        weight.grad = torch.zeros_like(weight)
        bias.grad = torch.zeros_like(bias)
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in (zero_weight, weight, bias))


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_empty_and_zero_dim_parameters(info, kwargs, foreach) -> None:
    shapes = [(0, 5), (5, 0), (), (0,), (3, 2)]
    params = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    optimizer = info.cls(params, foreach=foreach, **kwargs)
    _random_grad_steps(optimizer, params, 2)
    assert all(torch.isfinite(p).all() for p in params)
    assert params[2].shape == () and params[0].shape == (0, 5)


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_param_groups_with_own_lr_and_weight_decay(info, foreach) -> None:
    first = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))]
    second = [nn.Parameter(torch.randn(2, 6))]
    copies = [nn.Parameter(p.detach().clone()) for p in first + second]
    group_options = dict(lr=info.kwargs["lr"] * 3, weight_decay=0.2, wd_ratio=0.5)
    grouped = info.cls(
        [{"params": first}, {"params": second, **group_options}], foreach=foreach, **info.kwargs
    )
    separate = [
        info.cls(copies[:2], foreach=foreach, **info.kwargs),
        info.cls(copies[2:], foreach=foreach, **{**info.kwargs, **group_options}),
    ]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(first + second, copies):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        grouped.step()
        for optimizer in separate:
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(first + second, copies))


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_deepcopy_is_independent_and_equal(info) -> None:
    params = [nn.Parameter(torch.randn(4, 3))]
    optimizer = info.cls(params, **info.kwargs)
    _random_grad_steps(optimizer, params, 2)
    clone = copy.deepcopy(optimizer)
    assert clone.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for key, value in optimizer.state[params[0]].items():
        copied = clone.state[clone.param_groups[0]["params"][0]][key]
        assert torch.equal(copied, value) if isinstance(value, torch.Tensor) else copied == value
    clone.param_groups[0]["lr"] = 123.0
    assert optimizer.param_groups[0]["lr"] == info.kwargs["lr"]


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_channels_last_step_equals_contiguous_step(info, kwargs, foreach) -> None:
    contiguous = _run(lambda ps: info.cls(ps, foreach=foreach, **kwargs), steps=3)
    channels_last = _run(lambda ps: info.cls(ps, foreach=foreach, **kwargs), steps=3, channels_last=True)
    for a, b in zip(channels_last, contiguous):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_official_package_fails_on_channels_last_and_ours_does_not(info) -> None:
    """Why reshape: adamp 0.3.0 uses .view, which raises on a channels_last conv weight."""
    weight = nn.Parameter(torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last))
    weight.grad = torch.randn_like(weight)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        info.official([weight], **info.kwargs).step()
    info.cls([weight], **info.kwargs).step()
    assert torch.isfinite(weight).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_low_precision_zero_gradient_row_gives_no_nan(info, kwargs, dtype, foreach) -> None:
    weight = nn.Parameter(torch.randn(4, 6, dtype=dtype))
    bias = nn.Parameter(torch.randn(4, dtype=dtype))
    optimizer = info.cls([weight, bias], foreach=foreach, **kwargs)
    for _ in range(3):
        weight.grad = torch.randn_like(weight)
        weight.grad[1] = 0  # the official fp16 code divides 0 by 0 here (eps=1e-8 is 0 in fp16)
        bias.grad = torch.zeros_like(bias)
        optimizer.step()
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()


BAD_INPUTS = [
    pytest.param(info, bad, text, id=f"{info.cls.__name__}-{bad}")
    for info in OPTIM_INFOS
    for bad, text in info.bad_inputs
]


@pytest.mark.parametrize(("info", "bad", "text"), BAD_INPUTS)
def test_bad_hyper_parameters_raise_naming_the_value(info, bad, text) -> None:
    with pytest.raises(ValueError, match=re.escape(text)):
        info.cls([nn.Parameter(torch.randn(2, 2))], **{**info.kwargs, **bad})


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_bad_param_group_is_rejected_and_not_added(info) -> None:
    optimizer = info.cls([nn.Parameter(torch.randn(2, 2))], **info.kwargs)
    with pytest.raises(ValueError, match="-5"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.randn(2))], "lr": -5})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
@pytest.mark.parametrize("foreach", [False, None])
def test_sparse_gradients_and_complex_parameters_are_rejected(info, foreach) -> None:
    weight = nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        info.cls([weight], foreach=foreach, **info.kwargs).step()
    with pytest.raises(ValueError, match="complex"):
        info.cls([nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))], **info.kwargs)


@pytest.mark.parametrize(
    ("info", "kwargs"), OPTION_SETS[:1] + OPTION_SETS[3:5], ids=OPTION_IDS[:1] + OPTION_IDS[3:5]
)
@pytest.mark.parametrize("foreach", [False, None])
def test_compiled_step_is_one_graph_and_equals_eager(info, kwargs, foreach, monkeypatch) -> None:
    """fullgraph=True fails on any graph break, so a step that reads a tensor on the host (.item(),
    `if t < x`) cannot pass: this is the CPU-only check that the step makes no host-device sync.

    A traced step runs the torch-ops form (the C++ kernels of ``fused_cpu`` cannot be traced), so the
    eager reference runs that form too: like with like, to float32 rounding. That the fused kernels
    agree with the torch-ops form is tests/test_optim_fused.py's check, at its own tolerance (the
    two forms round differently, by CPU type)."""
    monkeypatch.setenv(fused_cpu.ENV_DISABLE, "0")
    torch._dynamo.reset()
    eager_params = [nn.Parameter(torch.randn(6, 2, 3, 3)), nn.Parameter(torch.randn(6))]
    compiled_params = [nn.Parameter(p.detach().clone()) for p in eager_params]
    eager = info.cls(eager_params, foreach=foreach, **kwargs)
    compiled = info.cls(compiled_params, foreach=foreach, **kwargs)
    step = torch.compile(compiled.step, fullgraph=True, backend="eager")
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(eager_params, compiled_params):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        eager.step()
        step()
    assert "fused_cpu" not in eager.forms_used()
    for p, q in zip(eager_params, compiled_params):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
    torch._dynamo.reset()


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
def test_grad_scaler_on_cpu(info) -> None:
    """scaler.scale(loss).backward(); scaler.step(opt); scaler.update() gives the unscaled training run."""
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (AttributeError, RuntimeError, TypeError) as error:
        pytest.skip(f"torch.amp.GradScaler('cpu') unavailable: {error}")
    results = []
    for use_scaler in (True, False):
        net = _net()
        optimizer = info.cls(net.parameters(), **info.kwargs)
        data = torch.randn(6, 3, 6, 6, generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            optimizer.zero_grad()
            loss = net(data).square().mean()
            if use_scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        results.append([p.detach() for p in net.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgdp_decay_factor(foreach, momentum) -> None:
    """With a zero gradient the step is decay only: 1 - lr*wd*wd_ratio/(1-momentum) on a weight (a zero
    gradient passes the test), 1 - lr*wd/(1-momentum) on a bias."""
    lr, wd, ratio = 0.1, 0.05, 0.25
    weight = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    bias = nn.Parameter(torch.randn(3, dtype=torch.float64))
    before = (weight.detach().clone(), bias.detach().clone())
    weight.grad, bias.grad = torch.zeros_like(weight), torch.zeros_like(bias)
    SGDP([weight, bias], lr=lr, momentum=momentum, weight_decay=wd, wd_ratio=ratio, foreach=foreach).step()
    torch.testing.assert_close(weight.detach(), before[0] * (1 - lr * wd * ratio / (1 - momentum)))
    torch.testing.assert_close(bias.detach(), before[1] * (1 - lr * wd / (1 - momentum)))


@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("step_count", [1, 3])
def test_adamp_denominator(foreach, step_count) -> None:
    """1-D parameter, constant gradient: w -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps), no projection."""
    lr, (beta1, beta2), eps = 0.01, (0.9, 0.99), 1e-3  # a large eps makes the denominator form visible
    grad = torch.tensor([0.5, -2.0, 0.0, 1e-4], dtype=torch.float64)
    param = nn.Parameter(torch.ones(4, dtype=torch.float64))
    optimizer = AdamP([param], lr=lr, betas=(beta1, beta2), eps=eps, foreach=foreach)
    expected = torch.ones(4, dtype=torch.float64)
    m = torch.zeros(4, dtype=torch.float64)
    v = torch.zeros(4, dtype=torch.float64)
    for t in range(1, step_count + 1):
        param.grad = grad.clone()
        optimizer.step()
        m, v = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad * grad
        expected -= lr / (1 - beta1**t) * m / (v.sqrt() / math.sqrt(1 - beta2**t) + eps)
    torch.testing.assert_close(param.detach(), expected)
    assert optimizer.state[param]["step"] == step_count


@pytest.mark.parametrize("info", OPTIM_INFOS, ids=INFO_IDS)
@pytest.mark.parametrize("foreach", [False, None])
@pytest.mark.parametrize("delta", [0.1, 1e-20])
def test_projection_removes_the_radial_part(info, foreach, delta) -> None:
    """Step 1 fills the momentum with a radial part; step 2's gradient is orthogonal to every channel, so
    the test passes (unless delta is ~0) and the whole step, momentum included, must then be tangential."""
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(4, 8, dtype=torch.float64))
    optimizer = info.cls([weight], foreach=foreach, **{**info.kwargs, "weight_decay": 0.0, "delta": delta})
    weight.grad = weight.detach() + 0.1 * torch.randn(4, 8, dtype=torch.float64)  # fails the test
    optimizer.step()
    w = weight.detach().clone()
    grad = torch.randn(4, 8, dtype=torch.float64)
    weight.grad = grad - w * (grad * w).sum(1, keepdim=True) / w.square().sum(1, keepdim=True)
    optimizer.step()
    change = weight.detach() - w
    radial = ((change * w).sum(1) / (change.norm(dim=1) * w.norm(dim=1))).abs().max().item()
    if delta > 1e-10:
        assert radial < 1e-6
    else:
        assert radial > 1e-3


def test_compile_option_falls_back_when_the_compiler_fails(monkeypatch) -> None:
    """compile=True must never break training: a compiler error warns once and the step still happens."""

    def broken(kernel_fn, rows):
        def kernel(*args, **kwargs):
            raise RuntimeError("no C++ compiler")

        return kernel

    monkeypatch.setattr(adamp_module, "compiled_kernel", broken)
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))]
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    optimizer = AdamP(params, lr=1e-2, weight_decay=1e-2, compile=True)
    reference = AdamP(copies, lr=1e-2, weight_decay=1e-2, foreach=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _random_grad_steps(optimizer, params, 2)
    _random_grad_steps(reference, copies, 2)
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("info", "kwargs"), OPTION_SETS[:2] + OPTION_SETS[3:5], ids=OPTION_IDS[:2] + OPTION_IDS[3:5]
)
def test_compiled_kernels_match_reference(info, kwargs) -> None:
    """compile=True (Inductor C++ kernels, tens of seconds to compile): same weights as the reference form."""
    reference = _run(lambda ps: info.cls(ps, foreach=False, **kwargs), steps=4)
    compiled = _run(lambda ps: info.cls(ps, compile=True, **kwargs), steps=4)
    for a, b in zip(compiled, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scale_invariant_weights_pass_and_head_fails() -> None:
    """On conv + BN the conv weight passes the official test and the linear head does not: the parity cases
    exercise both branches (see also test_optim_parity)."""
    net = _net()
    net(torch.randn(6, 3, 6, 6)).square().mean().backward()
    conv, head = net[0].weight, net[5].weight
    for p, expected in ((conv, True), (head, False)):
        cos = F.cosine_similarity(p.grad.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1), dim=1)
        assert bool(cos.abs().max() < 0.1 / math.sqrt(p[0].numel())) is expected
