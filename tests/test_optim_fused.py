"""The fused C++ CPU form of SGDP/AdamP (``foreach=None`` on fp32 CPU, ``adamp_repro.optim.fused_cpu``).

Mirrors the parity tests (official adamp 0.3.0 trajectories with replayed gradients, 1e-5 relative after 100
steps) and the fast-vs-reference behaviour checks, with a spy that proves the fused kernels ran; then covers
what the small networks do not reach: the layer view, channel rows longer than a work chunk (two sweeps),
batches, channels_last, thread counts, the disable switch and the build-failure fallback.

The library is plain C++ without torch headers and compiles in about 2 s, so the module builds it once
(module fixture) instead of marking the tests slow; without a C++ compiler the tests skip.
"""

from __future__ import annotations

import shutil
import time
import warnings

import pytest
import torch
from torch import nn

from adamp_repro.optim import SGDP, AdamP, fused_cpu
from tests.test_optim_behaviour import OPTION_IDS, OPTION_SETS, _run
from tests.test_optim_parity import (
    CASES,
    Case,
    _max_relative_error,
    _replay,
    _trajectory,
    trajectories,  # noqa: F401 - module fixture: the official trajectories, computed once
)

pytestmark = pytest.mark.usefixtures("one_thread")  # as in the parity module


@pytest.fixture(scope="module", autouse=True)
def library():
    """Build (or load from the cache) once per session; record the compile time for the report."""
    if not fused_cpu.enabled():
        pytest.skip("fused CPU kernels disabled by ADAMP_REPRO_FUSED_CPU")
    if shutil.which(fused_cpu._compiler()) is None and not fused_cpu.is_built():
        pytest.skip("no C++ compiler for the fused CPU kernels")
    start = time.perf_counter()
    lib = fused_cpu.load(warn=False)
    assert lib is not None, fused_cpu._state["error"]
    return time.perf_counter() - start


@pytest.fixture
def calls(monkeypatch) -> list[int]:
    """Spy on fused_cpu.step: one entry (number of tensors) per call."""
    seen: list[int] = []
    real = fused_cpu.step

    def spy(kind, tensors, *args, **kwargs):
        seen.append(len(tensors))
        return real(kind, tensors, *args, **kwargs)

    monkeypatch.setattr(fused_cpu, "step", spy)
    return seen


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_fused_form_matches_official(case: Case, trajectories, calls) -> None:  # noqa: F811
    trajectory = _trajectory(trajectories, case)
    ours = _replay(case, trajectory, foreach=None)
    assert len(calls) == len(trajectory.grads)  # every step went through the kernels
    assert _max_relative_error(ours, trajectory.final) <= 1e-5


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_foreach_form_matches_official(case: Case, trajectories, calls) -> None:  # noqa: F811
    """foreach=True keeps the torch multi-tensor form (what foreach=None ran before the fused kernels)."""
    trajectory = _trajectory(trajectories, case)
    assert _max_relative_error(_replay(case, trajectory, foreach=True), trajectory.final) <= 1e-5
    assert not calls


@pytest.mark.parametrize(("info", "kwargs"), OPTION_SETS, ids=OPTION_IDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_fused_form_equals_reference_form(info, kwargs, channels_last, calls) -> None:
    reference = _run(lambda ps: info.cls(ps, foreach=False, **kwargs), channels_last=channels_last)
    fused = _run(lambda ps: info.cls(ps, foreach=None, **kwargs), channels_last=channels_last)
    assert calls
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --- the branches the small networks do not reach ----------------------------------------------------


def _grads(weights: list[torch.Tensor], kind: str, generator: torch.Generator) -> list[torch.Tensor]:
    """'channel': orthogonal to every row; 'layer': orthogonal to the whole tensor only (rows are not);
    'none': random, so both views fail. Gradients get their weight's strides (channels_last included)."""
    grads = []
    for w in weights:
        g = torch.randn(w.shape, generator=generator)
        if w.dim() > 1:
            rows, flat = w.reshape(w.shape[0], -1), g.reshape(w.shape[0], -1)
            if kind == "channel":
                flat = flat - rows * (flat * rows).sum(1, keepdim=True) / (rows * rows).sum(1, keepdim=True)
            elif kind == "layer":
                flat = flat + 3.0 * rows * torch.linspace(-1, 1, w.shape[0]).unsqueeze(1)
                flat = flat - rows * (flat * rows).sum() / (rows * rows).sum()
            g = flat.reshape(w.shape)
        grads.append(torch.empty_like(w).copy_(g))
    return grads


def _weights(channels_last: bool) -> list[torch.Tensor]:
    torch.manual_seed(3)
    shapes = [(6, 5, 3, 3), (1, 40), (7, 300), (3, 2, 1, 1), (6,), ()]
    weights = [torch.randn(shape) for shape in shapes]
    if channels_last:
        weights[0] = weights[0].contiguous(memory_format=torch.channels_last)
    return weights


def _compare(make, kinds: list[str], channels_last: bool = False, threads: int = 1) -> None:
    results = []
    for foreach in (False, None):
        params = [nn.Parameter(w.clone(memory_format=torch.preserve_format)) for w in _weights(channels_last)]
        optimizer = make(params, foreach)
        generator = torch.Generator().manual_seed(0)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for kind in kinds:
                for p, g in zip(params, _grads([p.detach() for p in params], kind, generator)):
                    p.grad = g
                optimizer.step()
        finally:
            torch.set_num_threads(previous)
        results.append(([p.detach().clone() for p in params], optimizer.state_dict()["state"]))
    (reference, ref_state), (fused, fused_state) = results
    for a, b in zip(fused, reference):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for index, state in ref_state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(fused_state[index][key], value, rtol=1e-5, atol=1e-6)
            else:
                assert fused_state[index][key] == value


MAKERS = {
    "adamp": lambda ps, foreach: AdamP(ps, lr=1e-2, weight_decay=5e-2, foreach=foreach),
    "adamp-nesterov": lambda ps, foreach: AdamP(
        ps, lr=1e-2, weight_decay=5e-2, nesterov=True, foreach=foreach
    ),
    "sgdp-nesterov": lambda ps, foreach: SGDP(
        ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, foreach=foreach
    ),
    "sgdp-buffer": lambda ps, foreach: SGDP(ps, lr=0.1, momentum=0.9, weight_decay=1e-3, foreach=foreach),
    "sgdp-copy": lambda ps, foreach: SGDP(
        ps, lr=0.1, momentum=0.9, dampening=0.2, weight_decay=1e-3, project_buffer=False, foreach=foreach
    ),
}
SCHEDULE = ["none", "channel", "layer", "channel", "none", "layer"]


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_all_branches_equal_reference(name, channels_last, calls) -> None:
    """Channel view, layer view and no projection, in whole-row chunks (one sweep per row)."""
    _compare(MAKERS[name], SCHEDULE, channels_last)
    assert calls


@pytest.mark.parametrize("name", list(MAKERS))
def test_long_rows_and_small_batches_equal_reference(name, monkeypatch, calls) -> None:
    """Work chunks of 64 elements: rows of 300 and 45 elements are split (two sweeps with summed pieces),
    and batches of 100 elements put almost every tensor in its own batch."""
    monkeypatch.setattr(fused_cpu, "CHUNK", 64)
    monkeypatch.setattr(fused_cpu, "BATCH", 100)
    _compare(MAKERS[name], SCHEDULE)
    assert calls


@pytest.mark.parametrize("name", ["adamp", "sgdp-buffer"])
def test_two_threads_equal_reference(name, monkeypatch) -> None:
    monkeypatch.setattr(fused_cpu, "CHUNK", 64)
    _compare(MAKERS[name], SCHEDULE, threads=2)


def test_rows_longer_than_a_chunk_pass_the_channel_view(monkeypatch) -> None:
    """A (2, 5000) weight with chunks of 1000: the channel-view projection runs as two sweeps per row and
    still removes the radial part exactly as the reference does."""
    monkeypatch.setattr(fused_cpu, "CHUNK", 1000)
    torch.manual_seed(0)
    w = torch.randn(2, 5000)
    g = torch.randn(2, 5000)
    g -= w * (g * w).sum(1, keepdim=True) / (w * w).sum(1, keepdim=True)
    out = []
    for foreach in (False, None):
        p = nn.Parameter(w.clone())
        optimizer = AdamP([p], lr=1e-2, weight_decay=1e-2, foreach=foreach)
        for _ in range(3):
            p.grad = g.clone()
            optimizer.step()
        out.append(p.detach())
    torch.testing.assert_close(out[1], out[0], rtol=1e-6, atol=1e-7)


def test_non_row_block_weights_take_the_torch_form(calls) -> None:
    """A transposed (dense, dim 0 not outermost) weight is left to the multi-tensor form; the rest is fused."""
    torch.manual_seed(0)
    ours = [nn.Parameter(torch.randn(5, 4).t()), nn.Parameter(torch.randn(4, 5))]
    copies = [nn.Parameter(p.detach().clone(memory_format=torch.preserve_format)) for p in ours]
    for params, foreach in ((ours, None), (copies, False)):
        optimizer = AdamP(params, lr=1e-2, weight_decay=1e-2, foreach=foreach)
        generator = torch.Generator().manual_seed(1)
        for _ in range(2):
            for p in params:
                p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=generator))
            optimizer.step()
    assert calls == [1, 1]
    for a, b in zip(ours, copies):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_disable_switch_and_compile_option_skip_the_kernels(monkeypatch, calls) -> None:
    params = [nn.Parameter(torch.randn(4, 3))]
    params[0].grad = torch.randn(4, 3)
    monkeypatch.setenv(fused_cpu.ENV_DISABLE, "0")
    AdamP(params, lr=1e-2).step()
    assert not calls
    monkeypatch.delenv(fused_cpu.ENV_DISABLE)
    SGDP(params, lr=0.1, foreach=True).step()
    assert not calls
    SGDP(params, lr=0.1).step()
    assert calls == [1]


def test_build_failure_warns_once_and_falls_back(monkeypatch, calls) -> None:
    def broken(force: bool = False) -> float:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(fused_cpu, "build", broken)
    monkeypatch.setattr(
        fused_cpu, "_state", {"lib": None, "tried": False, "error": None, "build_seconds": None}
    )
    params = [nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))]
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    optimizer = SGDP(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
    reference = SGDP(copies, lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for opt, ps in ((optimizer, params), (optimizer, params), (reference, copies), (reference, copies)):
            for p in ps:
                p.grad = torch.ones_like(p)
            opt.step()
    assert sum("fused CPU kernels unavailable" in str(w.message) for w in caught) == 1
    assert not calls
    for p, q in zip(params, copies):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
