"""Records name the code that ran: the optimizer counts which form stepped its parameters (and every fallback),
the fused kernels say what was built, and a run's provenance segments and summary carry both."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from torch import nn

from adamp_repro.optim import SGDP, AdamP, fused_cpu
from adamp_repro.optim.forms import describe_optimizer
from adamp_repro.tracking.records import RunRecord, read_provenance_segments, read_summary
from adamp_repro.tracking.schema import (
    FUSED_CPU_BUILD,
    OPTIMIZER_FORMS,
    OPTIMIZER_FORMS_MIXED,
    forms_mixed,
    run_forms_signature,
)
from adamp_repro.train import run, run_dir_for
from adamp_repro.train.life import RunLife

pytestmark = pytest.mark.usefixtures("one_thread")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))


def _steps(optimizer: torch.optim.Optimizer, model: nn.Module, n: int = 2) -> None:
    for _ in range(n):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()


@pytest.fixture
def fresh_fused(monkeypatch):
    """A fused-kernel state of its own, so a test's failure or switch does not leak into the next."""
    monkeypatch.setattr(
        fused_cpu,
        "_state",
        {"lib": None, "tried": False, "error": None, "build_seconds": None, "compiler_version": None},
    )


@pytest.mark.parametrize("cls", [SGDP, AdamP], ids=["sgdp", "adamp"])
@pytest.mark.parametrize(
    ("kwargs", "form"),
    [({"foreach": True}, "fast"), ({"foreach": False}, "reference")],
    ids=["fast", "reference"],
)
def test_each_torch_form_is_counted(cls, kwargs, form) -> None:
    model = _model()
    optimizer = cls(model.parameters(), lr=0.1, **kwargs)
    assert optimizer.forms_used() == {}  # nothing stepped yet
    _steps(optimizer, model, 3)
    n_params = len(list(model.parameters()))
    assert optimizer.forms_used() == {form: 3 * n_params}
    assert optimizer.form_fallbacks() == []
    described = describe_optimizer(optimizer)
    assert described["class"] == f"{cls.__module__}.{cls.__name__}"
    assert (described["source"], described["unit"]) == ("counted", "parameter_steps")
    assert described["forms"] == {form: 3 * n_params}


@pytest.mark.parametrize("cls", [SGDP, AdamP], ids=["sgdp", "adamp"])
def test_default_form_on_fp32_cpu_is_the_fused_kernels(cls, monkeypatch) -> None:
    monkeypatch.delenv(fused_cpu.ENV_DISABLE, raising=False)
    if shutil.which(fused_cpu._compiler()) is None or fused_cpu.load(warn=False) is None:
        pytest.skip(f"fused CPU kernels cannot be built here: {fused_cpu.unavailable_reason()}")
    model = _model()
    optimizer = cls(model.parameters(), lr=0.1)
    _steps(optimizer, model, 2)
    assert optimizer.forms_used() == {"fused_cpu": 2 * len(list(model.parameters()))}
    info = fused_cpu.build_info()
    assert info["status"] == "loaded" and info["reason"] is None
    assert "-march=native" in info["flags"] and info["library"] == fused_cpu.library_path().name
    assert info["compiler_path"] == shutil.which(fused_cpu._compiler())
    assert info["compiler_version"] and "\n" not in info["compiler_version"]
    assert info["torch"] == torch.__version__ and info["compiled_s"] is not None
    json.dumps(info)  # goes into a record as it is


def test_a_disabled_fused_form_is_a_recorded_fallback(monkeypatch, fresh_fused) -> None:
    monkeypatch.setenv(fused_cpu.ENV_DISABLE, "0")
    model = _model()
    optimizer = SGDP(model.parameters(), lr=0.1, momentum=0.9)
    _steps(optimizer, model, 3)
    assert optimizer.forms_used() == {"fast": 3 * len(list(model.parameters()))}
    assert optimizer.form_fallbacks() == [  # once, at the first step, not once per step
        {"from": "fused_cpu", "to": "fast", "reason": "disabled by ADAMP_REPRO_FUSED_CPU=0", "step": 1}
    ]
    info = fused_cpu.build_info()
    assert (info["status"], info["reason"]) == ("disabled", "disabled by ADAMP_REPRO_FUSED_CPU=0")


def test_a_failed_fused_build_is_a_recorded_fallback(monkeypatch, fresh_fused) -> None:
    monkeypatch.delenv(fused_cpu.ENV_DISABLE, raising=False)

    def broken(force: bool = False) -> float:
        raise RuntimeError("g++ failed (1): adamp_fused.cpp:1: error: no omp.h\nmore lines")

    monkeypatch.setattr(fused_cpu, "build", broken)
    model = _model()
    optimizer = AdamP(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _steps(optimizer, model, 2)
    reason = "RuntimeError: g++ failed (1): adamp_fused.cpp:1: error: no omp.h"  # the error's first line
    assert optimizer.forms_used() == {"fast": 2 * len(list(model.parameters()))}
    assert optimizer.form_fallbacks() == [{"from": "fused_cpu", "to": "fast", "reason": reason, "step": 1}]
    info = fused_cpu.build_info()
    assert (info["status"], info["reason"]) == ("failed", reason)


def test_a_failed_compile_is_counted_and_recorded(monkeypatch) -> None:
    def refuse(self, group, p, g):
        raise RuntimeError("inductor: no C++ compiler")

    monkeypatch.setattr(AdamP, "_compiled_update", refuse)
    model = _model()
    optimizer = AdamP(model.parameters(), lr=0.1, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _steps(optimizer, model, 2)
    # Step 1: the projection candidates (conv and linear weights) fall back to the reference form, the others
    # take the fast form; step 2: everything takes the fast form.
    n_params = len(list(model.parameters()))
    assert optimizer.forms_used() == {"reference": 2, "fast": 2 * n_params - 2}
    events = optimizer.form_fallbacks()
    assert [(e["from"], e["to"], e["step"]) for e in events] == [
        ("compiled", "reference", 1),
        ("compiled", "fast", 1),
    ]
    assert all(
        "torch.compile failed (RuntimeError: inductor: no C++ compiler)" in e["reason"] for e in events
    )


def test_torch_optimizers_name_the_implementation_torch_picks() -> None:
    params = list(_model().parameters())
    n = len(params)
    cases = [
        (torch.optim.SGD(params, lr=0.1), "torch_for_loop"),  # foreach needs a device with foreach kernels
        (torch.optim.SGD(params, lr=0.1, foreach=True), "torch_foreach"),
        (torch.optim.Adam(params, lr=0.1, fused=True), "torch_fused"),
        (torch.optim.AdamW(params, lr=0.1, foreach=False), "torch_for_loop"),
    ]
    for optimizer, form in cases:
        described = describe_optimizer(optimizer)
        assert (described["source"], described["unit"], described["forms"]) == (
            "torch rules",
            "parameters",
            {form: n},
        )
    external = describe_optimizer(torch.optim.RMSprop(params, lr=0.1))
    assert external == {
        "class": "torch.optim.rmsprop.RMSprop",
        "source": "class only",
        "unit": None,
        "forms": {},
        "fallbacks": [],
    }
    assert run_forms_signature([external]) == "torch.optim.rmsprop.RMSprop"


def test_smoke_run_records_the_forms_and_the_build(smoke_cfg) -> None:
    cfg = smoke_cfg(
        "optimizer=sgdp",
        "optimizer.foreach=true",
        "threads=1",
        "diagnostics.enabled=false",
        "train.checkpoint=false",
        "scale.epochs=1",
        "scale.max_steps_per_epoch=2",
        "scale.train_subset=64",
        "dataset.batch_size=32",
        "scale.eval_subset=50",
    )
    summary = run(cfg)
    run_dir = run_dir_for(cfg)
    (segment,) = read_provenance_segments(run_dir)
    forms = segment[OPTIMIZER_FORMS]
    assert forms["class"] == "adamp_repro.optim.sgdp.SGDP" and forms["fallbacks"] == []
    assert forms["forms"] == {"fast": 2 * len(_resnet_params(cfg))}  # two steps of every parameter
    assert segment[FUSED_CPU_BUILD]["flags"] == list(fused_cpu._FLAGS)
    on_disk = read_summary(run_dir)
    assert on_disk[OPTIMIZER_FORMS] == [forms] and on_disk[FUSED_CPU_BUILD] == [segment[FUSED_CPU_BUILD]]
    assert on_disk[OPTIMIZER_FORMS_MIXED] is False and summary[OPTIMIZER_FORMS_MIXED] is False


def _resnet_params(cfg):
    from adamp_repro.models import build_model

    return [p for p in build_model(cfg.model, 10, (0.5,) * 3, (0.25,) * 3).parameters() if p.requires_grad]


def _life(tmp_path, earlier, forms) -> dict:
    record = RunRecord(tmp_path / "run")
    code = {OPTIMIZER_FORMS: forms, FUSED_CPU_BUILD: {"status": "not_loaded"}}
    life = RunLife(record, {"seed": 0}, "top1", tmp_path / "run", code_that_ran=lambda: code)
    record.start("seed: 0\n", {"src_hash": "b"}, {"seed": 0}, earlier_segments=earlier)
    return life.finish("completed", None, 1.0)


def test_a_resumed_run_whose_segments_ran_different_forms_says_so(tmp_path) -> None:
    fused = {"class": "SGDP", "source": "counted", "unit": "parameter_steps", "forms": {"fused_cpu": 10}}
    fast = {**fused, "forms": {"fast": 10}}
    summary = _life(tmp_path, [{"src_hash": "a", OPTIMIZER_FORMS: fast}], fused)
    assert summary[OPTIMIZER_FORMS] == [fast, fused] and summary[OPTIMIZER_FORMS_MIXED] is True
    assert summary[FUSED_CPU_BUILD] == [None, {"status": "not_loaded"}]
    segments = read_provenance_segments(tmp_path / "run")
    assert [s.get(OPTIMIZER_FORMS) for s in segments] == [fast, fused]  # this segment's entry is kept
    assert read_summary(tmp_path / "run")[OPTIMIZER_FORMS_MIXED] is True


def test_a_segment_that_did_not_record_its_forms_is_unknown_not_mixed(tmp_path) -> None:
    fused = {"class": "SGDP", "forms": {"fused_cpu": 10}}
    summary = _life(tmp_path, [{"src_hash": "a"}], fused)  # written before the keys existed
    assert summary[OPTIMIZER_FORMS] == [None, fused] and summary[OPTIMIZER_FORMS_MIXED] is None
    assert forms_mixed([fused, {"forms": {"fused_cpu": 3}}]) is False  # the counts differ, the forms do not
    assert (
        run_forms_signature([None, fused, {"forms": {"fast": 1, "fused_cpu": 2}}])
        == "fused_cpu; fast+fused_cpu"
    )
