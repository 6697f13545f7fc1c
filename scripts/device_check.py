"""The CUDA path checked in one command: parity with the official adamp, host syncs, CUDA graphs, speed, the
trainer, the ImageFolder pipeline and a slice of the default table, in about four minutes on one GPU.

    python scripts/device_check.py                     # on a CUDA machine; writes results/bench/device_<gpu>.md/.csv
    python scripts/device_check.py --only host_sync cuda_graph --out /tmp/bench
    python scripts/device_check.py --allow-cpu         # the plumbing on CPU, tiny sizes, CUDA-only checks skipped
    python scripts/device_check.py --list              # the checks, in the order they run

Needs python, torch, timm and numpy (PyYAML for the two checks that read config files), nothing else: no hydra,
omegaconf or wandb is imported, and the official ``adamp`` 0.3.0 (the parity oracle) is taken from
scripts/wheels/ when it is not installed. Each check ends as pass, fail, xfail (a known limitation, stated),
skip or error, and both files are rewritten as soon as a check ends, so a run cut short keeps what it measured.
The exit status is 1 when a check failed or raised, 2 for bad options or no CUDA device. docs/device-check.md
says what each check measures and how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import hashlib
import math
import os
import platform
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamp_repro.errors import UsageError
from adamp_repro.optim import SGDP, AdamP
from adamp_repro.tracking.provenance import device_description, git_state
from adamp_repro.tracking.records import atomic_write_text, read_csv_rows, rows_to_csv

STARTED = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]
WHEEL = ROOT / "scripts" / "wheels" / "adamp-0.3.0-py3-none-any.whl"
MINI_RECORDS = ROOT / "results" / "runs" / "mini_cifar10_resnet20" / "mini"
FP32_TOLERANCE = 1e-5  # max |ours - official| / max |official| per tensor (tests/test_optim_parity.py)
# Low-precision runs against fp32, as ||update_lp - update_fp32|| / ||update_fp32|| over the whole network.
# bf16 keeps 8 significant bits: a weight |w| is stored to +-|w| 2^-9 and one Adam step (lr 1e-3) is a few
# ulp of a typical ResNet weight, so each step's update is rounded by up to tens of percent, which averages
# to a few percent of the summed update (measured on CPU, ResNet-18, 20 steps: <= 0.07). fp16 has 3 more
# bits but gradients below 6e-5 are subnormal, and Adam scales every gradient to its own size, so small ones
# weigh fully (measured: <= 0.035). The limits leave about 2x headroom. AMP keeps fp32 weights: only the
# forward and the gradients are rounded, and the losses of the first steps agree to < 1% (limits 5x that).
UPDATE_TOLERANCE = {torch.bfloat16: 0.15, torch.float16: 0.08}
AMP_LOSS_TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.02}
TRAINER_TARGET = 0.95  # trainer images/s over the bare loop's
MINI_TOLERANCE = 5.0  # eval top-1 points between the GPU slice and the CPU record (seed noise here: 1-2)
STATUSES = ("pass", "fail", "xfail", "skip", "error")


# --------------------------------------------------------------------------------------------- sizes, results
@dataclass(frozen=True)
class Sizes:
    """Work done by each check. The defaults fit the whole run in about four minutes on one H200."""

    parity_network: str = "resnet18"  # timm name; gradients of this network are replayed
    parity_steps: int = 20
    parity_batch: int = 16
    parity_image: int = 64
    amp_steps: int = 10
    bench_models: tuple[str, ...] = ("resnet50", "vit_small_patch16_224")
    bench_repeats: int = 20
    overhead_model: str = "resnet50"
    overhead_batch: int = 256
    overhead_image: int = 224
    overhead_steps: int = 15
    # (timm name, image size, batch, amp) per trainer workload: a paper-scale one and the default table's
    trainer_workloads: tuple[tuple[str, int, int, str], ...] = (
        ("resnet50", 224, 128, "bf16"),
        ("cifar_resnet20", 32, 128, "none"),
    )
    trainer_steps: int = 30
    trainer_repeats: int = 3
    folder_images: int = 8192
    folder_batch: int = 128
    folder_size: tuple[int, int] = (500, 375)  # JPEG width, height (ImageNet train images average ~400x350)
    folder_crop: int = 224
    workers: int | None = None  # DataLoader workers; None = the cores this process may use
    mini_epochs: int | None = None  # None = the epochs of the committed records
    mini_optimizers: tuple[str, ...] = ("sgd", "sgdp", "adamw", "adamp")
    mini_quick: bool = False  # tiny subsets: the slice only proves the plumbing
    compile_steps: int = 10
    budget_s: float = 280.0


QUICK = Sizes(
    parity_network="cifar_resnet20",
    parity_steps=3,
    parity_batch=4,
    parity_image=32,
    amp_steps=2,
    bench_models=("cifar_resnet20",),
    bench_repeats=2,
    overhead_model="cifar_resnet20",
    overhead_batch=8,
    overhead_image=32,
    overhead_steps=2,
    trainer_workloads=(("cifar_resnet20", 32, 8, "none"),),
    trainer_steps=3,
    trainer_repeats=1,
    folder_images=48,
    folder_batch=8,
    folder_size=(64, 48),
    folder_crop=32,
    workers=0,
    mini_epochs=1,
    mini_optimizers=("adamp",),
    mini_quick=True,
    compile_steps=3,
    budget_s=240.0,
)


@dataclass
class Metric:
    name: str
    value: float | int | str
    unit: str = ""
    note: str = ""


@dataclass
class Outcome:
    status: str  # one of STATUSES
    verdict: str  # one line
    metrics: list[Metric] = field(default_factory=list)
    seconds: float = 0.0


class Skip(Exception):
    """Raised by a check that cannot run here; the message is the reason recorded."""


class CheckTimeout(BaseException):
    """Raised when a check runs past its limit; a BaseException so no check's own ``except Exception`` eats it."""


def judged(ok: bool, verdict: str, metrics: list[Metric]) -> Outcome:
    return Outcome("pass" if ok else "fail", verdict, metrics)


@dataclass
class Context:
    device: torch.device
    sizes: Sizes
    quick: bool
    compile_backend: str
    oracle: Any = None  # the official adamp module, None when it cannot be imported
    oracle_source: str = ""
    shared: dict[str, Any] = field(default_factory=dict)  # what one check measured that a later one reuses

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def official(self) -> Any:
        if self.oracle is None:
            raise Skip(f"the official adamp 0.3.0 is neither installed nor readable from {rel(WHEEL)}")
        return self.oracle


def rel(path: Path) -> str:
    """A path inside the repository as written in outputs (never this machine's absolute path)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def load_official() -> tuple[Any, str]:
    """The official adamp package: installed, else the pure-Python wheel in scripts/wheels (zipimport)."""
    from importlib import metadata

    try:
        import adamp

        source = "installed package"
    except ImportError:
        if not WHEEL.is_file():
            return None, f"not available (not installed, no {rel(WHEEL)})"
        sys.path.insert(0, str(WHEEL))
        try:
            import adamp
        except ImportError as error:
            return None, f"not available ({rel(WHEEL)}: {error})"
        source = f"wheel {rel(WHEEL)}"
    try:
        version = metadata.version("adamp")
    except metadata.PackageNotFoundError:
        version = "unknown version"
    return adamp, f"adamp {version}, {source}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for ``fn()`` including the device work it queued."""
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def create_network(name: str, num_classes: int, device: torch.device, seed: int = 0) -> nn.Module:
    """A timm network (our CIFAR networks included) with seeded initial weights, on ``device``."""
    import timm

    import adamp_repro.models  # noqa: F401 - registers the CIFAR networks with timm

    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=num_classes).to(device)


# ------------------------------------------------------------------------------ parity on replayed gradients
@dataclass(frozen=True)
class ParityCase:
    optimizer: str  # "AdamP" | "SGDP": the class name in both packages
    kwargs: dict[str, Any]
    path: str  # which kernels the multi-tensor form runs on CUDA

    @property
    def label(self) -> str:
        return f"{self.optimizer}(" + ", ".join(f"{k}={v}" for k, v in self.kwargs.items()) + ")"


PARITY_CASES = (
    ParityCase(
        "AdamP", {"lr": 1e-3, "weight_decay": 5e-2}, "torch._fused_adamw_ / _fused_adam_ + projection"
    ),
    ParityCase("AdamP", {"lr": 1e-3, "weight_decay": 1e-2, "nesterov": True}, "foreach moments + projection"),
    ParityCase(
        "SGDP",
        {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
        "torch._fused_sgd_ + projection",
    ),
    ParityCase("SGDP", {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}, "fused SGD + projected buffer"),
    ParityCase("SGDP", {"lr": 0.05, "weight_decay": 1e-4}, "momentum 0: foreach, no fused kernel"),
)
OURS = {"AdamP": AdamP, "SGDP": SGDP}


@dataclass
class Recording:
    """One closed-loop run of the official optimizer: initial weights, the gradient of every step, final weights."""

    case: ParityCase
    names: list[str]
    initial: list[Tensor]
    grads: list[list[Tensor]]
    official: list[Tensor]


def record_official(ctx: Context, case: ParityCase, model: nn.Module, steps: int, batch: int, image: int):
    """Train ``model`` with the official optimizer on seeded random data, keeping every step's gradients."""
    named = list(model.named_parameters())
    params = [p for _, p in named]
    initial = [p.detach().clone() for p in params]
    optimizer = getattr(ctx.official(), case.optimizer)(params, **case.kwargs)
    generator = torch.Generator(device=ctx.device).manual_seed(1)
    grads = []
    for _ in range(steps):
        x = torch.randn(batch, 3, image, image, device=ctx.device, generator=generator)
        y = torch.randint(0, 10, (batch,), device=ctx.device, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad.detach().clone() for p in params])
        optimizer.step()
    return Recording(case, [n for n, _ in named], initial, grads, [p.detach().clone() for p in params])


def recording(ctx: Context, case: ParityCase) -> Recording:
    """The official run of ``case`` on the parity network (made once, shared by the checks)."""
    cache = ctx.shared.setdefault("recordings", {})
    if case.label not in cache:
        s = ctx.sizes
        network = create_network(s.parity_network, 10, ctx.device)
        cache[case.label] = record_official(
            ctx, case, network, s.parity_steps, s.parity_batch, s.parity_image
        )
    return cache[case.label]


def memory_format(t: Tensor, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last and t.dim() == 4 else torch.preserve_format


def replay(
    rec: Recording,
    *,
    foreach: bool | None,
    dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_backend: str | None = None,
) -> tuple[list[Tensor], torch.optim.Optimizer]:
    """Our optimizer stepped on the recorded gradients from the recorded initial weights."""
    params = [
        nn.Parameter(t.to(dtype=dtype or t.dtype, memory_format=memory_format(t, channels_last), copy=True))
        for t in rec.initial
    ]
    optimizer = OURS[rec.case.optimizer](params, foreach=foreach, **rec.case.kwargs)
    step = optimizer.step
    if compile_backend is not None:
        step = torch.compile(optimizer.step, fullgraph=True, backend=compile_backend)
    for grads in rec.grads:
        for p, g in zip(params, grads):
            p.grad = g.to(dtype=p.dtype, memory_format=memory_format(g, channels_last), copy=True)
        step()
    return [p.detach() for p in params], optimizer


def worst_error(
    ours: Sequence[Tensor], reference: Sequence[Tensor], names: Sequence[str]
) -> tuple[float, str]:
    """The largest per-tensor max |a - b| / max |b| and the name of that tensor."""
    worst, where = 0.0, names[0]
    for a, b, name in zip(ours, reference, names):
        b = b.float()
        error = float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30))
        if not math.isfinite(error) or error > worst:
            worst, where = (math.inf if not math.isfinite(error) else error), name
    return worst, where


def forms(ctx: Context) -> list[tuple[str, bool | None]]:
    """The update forms the optimizers take on this device (base.py): on CUDA the default is the multi-tensor one."""
    if ctx.cuda:
        return [("reference", False), ("multi-tensor", True), ("default", None)]
    return [("reference", False), ("multi-tensor", True)]  # the CPU default (fused C++) is not a CUDA path


def check_parity_fp32(ctx: Context) -> Outcome:
    metrics, worst, exact = [], 0.0, True
    for rec in (recording(ctx, case) for case in PARITY_CASES):
        for form, foreach in forms(ctx):
            final, _ = replay(rec, foreach=foreach)
            error, where = worst_error(final, rec.official, rec.names)
            worst = max(worst, error)
            exact &= form != "reference" or error == 0.0
            note = f"worst tensor {where}" + (f"; {rec.case.path}" if form == "multi-tensor" else "")
            metrics.append(Metric(f"{rec.case.label} {form}", error, "max rel err", note))
    s = ctx.sizes
    verdict = (
        f"{len(PARITY_CASES)} settings x {len(forms(ctx))} forms, {s.parity_network} gradients of {s.parity_steps} "
        f"official steps replayed: worst {worst:.2g} (limit {FP32_TOLERANCE:g}); reference form "
        + ("bit-exact" if exact else "not bit-exact")
    )
    return judged(worst <= FP32_TOLERANCE, verdict, metrics)


def check_parity_channels_last(ctx: Context) -> Outcome:
    """channels_last weights and gradients (what autograd gives a channels_last model) against the official run
    on contiguous weights (the official code calls .view, which channels_last weights refuse)."""
    metrics, worst, kept = [], 0.0, True
    for rec in (recording(ctx, case) for case in PARITY_CASES):
        for form, foreach in forms(ctx):
            final, optimizer = replay(rec, foreach=foreach, channels_last=True)
            error, where = worst_error(final, rec.official, rec.names)
            worst = max(worst, error)
            tensors = final + [
                t for state in optimizer.state.values() for t in state.values() if isinstance(t, Tensor)
            ]
            layout_kept = all(
                t.is_contiguous(memory_format=torch.channels_last) for t in tensors if t.dim() == 4
            )
            kept &= layout_kept
            note = f"worst tensor {where}; " + ("layout kept" if layout_kept else "LAYOUT LOST")
            metrics.append(Metric(f"{rec.case.label} {form}", error, "max rel err", note))
    verdict = (
        f"channels_last weights, every setting and form: worst {worst:.2g} (limit {FP32_TOLERANCE:g}); weights and "
        + ("state stay channels_last" if kept else "some weight or state lost channels_last")
    )
    return judged(worst <= FP32_TOLERANCE and kept, verdict, metrics)


def update_error(final: Sequence[Tensor], reference: Sequence[Tensor], initial: Sequence[Tensor]) -> float:
    """||(w - w0) - (w_ref - w0_ref)|| / ||w_ref - w0_ref|| over all tensors, w0 rounded to w's dtype."""
    num = den = 0.0
    for w, w_ref, w0 in zip(final, reference, initial):
        delta = w.float() - w0.to(w.dtype).float()
        delta_ref = w_ref.float() - w0.float()
        num += float((delta - delta_ref).square().sum())
        den += float(delta_ref.square().sum())
    return math.sqrt(num / max(den, 1e-300))


def check_low_precision_params(ctx: Context) -> Outcome:
    """bf16/fp16 weights and gradients, against our own fp32 run of the same form on the same gradients."""
    metrics, ok = [], True
    for rec in (recording(ctx, case) for case in (PARITY_CASES[0], PARITY_CASES[2])):
        for form, foreach in forms(ctx)[:2]:  # on CUDA "default" is the multi-tensor form again
            fp32, _ = replay(rec, foreach=foreach)
            for dtype in (torch.bfloat16, torch.float16):
                final, optimizer = replay(rec, foreach=foreach, dtype=dtype)
                error = update_error(final, fp32, rec.initial)
                finite = all(bool(torch.isfinite(p).all()) for p in final)
                held = [p for group in optimizer.param_groups for p in group["params"]]
                for p in held:  # one more step on an all-zero gradient: fp16 eps must not make it 0/0
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                finite &= all(bool(torch.isfinite(p).all()) for p in held)
                limit = UPDATE_TOLERANCE[dtype]
                ok &= finite and error <= limit
                name = str(dtype).removeprefix("torch.")
                note = f"limit {limit:g}; " + (
                    "finite, also after a zero-gradient step" if finite else "NOT FINITE"
                )
                metrics.append(Metric(f"{rec.case.label} {form} {name}", error, "rel update err", note))
    worst = max(m.value for m in metrics)
    verdict = (
        f"bf16/fp16 weights: worst update error vs fp32 {worst:.2g} (limits bf16 {UPDATE_TOLERANCE[torch.bfloat16]:g}, "
        f"fp16 {UPDATE_TOLERANCE[torch.float16]:g}); " + ("all finite" if ok else "see the rows")
    )
    return judged(ok, verdict, metrics)


def check_amp_steps(ctx: Context) -> Outcome:
    """Closed-loop AMP training (fp32 weights; bf16 autocast, fp16 autocast + GradScaler) against fp32."""
    s = ctx.sizes
    generator = torch.Generator(device=ctx.device).manual_seed(2)
    batches = [
        (
            torch.randn(
                s.parity_batch, 3, s.parity_image, s.parity_image, device=ctx.device, generator=generator
            ),
            torch.randint(0, 10, (s.parity_batch,), device=ctx.device, generator=generator),
        )
        for _ in range(s.amp_steps)
    ]

    def train(
        dtype: torch.dtype | None, skip: frozenset[int] = frozenset()
    ) -> tuple[list[float], list[Tensor], frozenset[int]]:
        """Losses, final weights and the steps GradScaler skipped; fp16 goes through GradScaler as in the Trainer; steps in ``skip`` (the
        ones an fp16 run's GradScaler skipped for inf gradients) take no optimizer step."""
        model = create_network(s.parity_network, 10, ctx.device)
        optimizer = AdamP(model.parameters(), **PARITY_CASES[0].kwargs)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype == torch.float16)
        losses, skipped = [], set()
        for index, (x, y) in enumerate(batches):
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scale = scaler.get_scale() if scaler.is_enabled() else 1.0
            if index not in skip:
                scaler.step(optimizer)
            scaler.update()
            if scaler.is_enabled() and scaler.get_scale() < scale:  # inf gradients: the step was skipped
                skipped.add(index)
            losses.append(float(loss.detach()))
        return losses, [p.detach() for p in model.parameters()], frozenset(skipped)

    initial = [p.detach().clone() for p in create_network(s.parity_network, 10, ctx.device).parameters()]
    runs = {dtype: train(dtype) for dtype in (torch.bfloat16, torch.float16)}
    skipped = runs[torch.float16][2]
    references = {frozenset(): train(None)}
    if skipped:
        references[skipped] = train(None, skipped)  # fp32 with the same steps left out
    metrics, ok = [], True
    for dtype, (losses, final, _) in runs.items():
        reference_losses, reference_final, _ = references[skipped if dtype == torch.float16 else frozenset()]
        finite = all(math.isfinite(v) for v in losses) and all(bool(torch.isfinite(p).all()) for p in final)
        loss_gap = max(abs(a - b) / abs(b) for a, b in zip(losses, reference_losses))
        limit = AMP_LOSS_TOLERANCE[dtype]
        ok &= finite and loss_gap <= limit
        name = str(dtype).removeprefix("torch.")
        note = f"limit {limit:g}; " + ("finite" if finite else "NOT FINITE")
        if dtype == torch.float16:
            note += f"; GradScaler skipped step(s) {sorted(skipped)}, left out of the fp32 run too"
        metrics.append(Metric(f"AdamP AMP {name}: max rel loss gap", loss_gap, "", note))
        metrics.append(
            Metric(f"AdamP AMP {name}: update vs fp32", update_error(final, reference_final, initial), "rel")
        )
    verdict = (
        f"{s.amp_steps} AMP steps of {s.parity_network} with AdamP: "
        + ("finite, losses within " if ok else "outside ")
        + f"{AMP_LOSS_TOLERANCE[torch.bfloat16]:g} (bf16) / {AMP_LOSS_TOLERANCE[torch.float16]:g} (fp16) of fp32"
    )
    return judged(ok, verdict, metrics)


def check_parity_compiled(ctx: Context) -> Outcome:
    """``torch.compile(optimizer.step, fullgraph=True)`` on CUDA against the official run (a small conv net:
    compile time grows with the number of tensors)."""
    metrics, worst = [], 0.0
    for case in (PARITY_CASES[0], PARITY_CASES[2]):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        ).to(ctx.device)
        rec = record_official(ctx, case, model, ctx.sizes.compile_steps, 8, 16)
        started = time.perf_counter()
        final, _ = replay(rec, foreach=None, compile_backend=ctx.compile_backend)
        sync(ctx.device)
        error, where = worst_error(final, rec.official, rec.names)
        worst = max(worst, error)
        note = f"worst tensor {where}; {len(rec.grads)} steps incl. compiling in {time.perf_counter() - started:.1f} s"
        metrics.append(Metric(f"{case.label} compiled ({ctx.compile_backend})", error, "max rel err", note))
    verdict = f"torch.compile(step, fullgraph=True, backend={ctx.compile_backend!r}): worst {worst:.2g} (limit {FP32_TOLERANCE:g})"
    return judged(worst <= FP32_TOLERANCE, verdict, metrics)


# ------------------------------------------------------------------------------------ host syncs, CUDA graphs
def random_grads(params: Sequence[Tensor], seed: int) -> list[Tensor]:
    generator = torch.Generator(device=params[0].device).manual_seed(seed)
    return [torch.randn(p.shape, device=p.device, generator=generator).mul_(1e-2) for p in params]


def step_optimizers(ctx: Context) -> list[tuple[str, Callable[[list[Tensor]], torch.optim.Optimizer], bool]]:
    """(name, constructor, expected to sync) for the sync check: ours in every CUDA form, and two controls."""
    adamp_kwargs, sgdp_kwargs = PARITY_CASES[0].kwargs, PARITY_CASES[2].kwargs
    return [
        ("ours AdamP default", lambda ps: AdamP(ps, **adamp_kwargs), False),
        ("ours AdamP nesterov", lambda ps: AdamP(ps, **PARITY_CASES[1].kwargs), False),
        ("ours AdamP reference", lambda ps: AdamP(ps, foreach=False, **adamp_kwargs), False),
        ("ours SGDP default", lambda ps: SGDP(ps, **sgdp_kwargs), False),
        ("ours SGDP heavy ball", lambda ps: SGDP(ps, **PARITY_CASES[3].kwargs), False),
        ("ours SGDP reference", lambda ps: SGDP(ps, foreach=False, **sgdp_kwargs), False),
        ("torch AdamW fused (control)", lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True), False),
        ("official adamp.AdamP (control)", lambda ps: ctx.official().AdamP(ps, **adamp_kwargs), True),
    ]


def count_syncs(fn: Callable[[], Any]) -> int:
    """Synchronizing CUDA calls made by ``fn`` (sync debug mode "warn" turns each into a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def check_host_sync(ctx: Context) -> Outcome:
    metrics, clean, control_seen = [], True, True
    model = create_network(ctx.sizes.parity_network, 10, ctx.device)
    for name, make, expect_sync in step_optimizers(ctx):
        params = [nn.Parameter(p.detach().clone()) for p in model.parameters()]
        for p, g in zip(params, random_grads(params, 3)):
            p.grad = g
        optimizer = make(params)
        first = count_syncs(optimizer.step)  # state allocation and the cached row layout happen here
        optimizer.step()
        steady = count_syncs(optimizer.step)
        torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.step()
            raised = ""
        except RuntimeError as error:
            raised = str(error).strip().splitlines()[0][:160]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if expect_sync:
            control_seen &= steady > 0 and bool(raised)
        else:
            clean &= steady == 0 and not raised
        note = f"first step {first}; " + (
            f'"error" mode raised: {raised}' if raised else '"error" mode: no sync'
        )
        metrics.append(Metric(f"{name}: syncs per step", steady, "count", note))
    if not control_seen:
        return Outcome(
            "error",
            "the official optimizer (which reads tensors in Python) showed no sync: the "
            "sync debug mode does not report here, so the check cannot judge",
            metrics,
        )
    verdict = (
        "no host sync in a steady-state step of any form (the official control syncs, as expected)"
        if clean
        else "a form of ours synchronizes with the host in step(): see the rows"
    )
    return judged(clean, verdict, metrics)


def graph_against_eager(
    make: Callable[[list[Tensor]], torch.optim.Optimizer],
    set_lr: Callable[[torch.optim.Optimizer, float], None],
    initial: Sequence[Tensor],
    lrs: Sequence[float],
) -> tuple[str, float, str]:
    """Steps with lr ``lrs[i]`` run eagerly and as replays of one captured step: (why it cannot be captured,
    max relative error of the replays, note). A step that synchronizes is not captured at all: a sync inside
    a capture invalidates it, and a failed capture may leave the device unusable for the checks after it."""
    warm = 3
    grads = [random_grads(initial, 10 + i) for i in range(warm + len(lrs))]
    eager = [nn.Parameter(t.clone()) for t in initial]
    graphed = [nn.Parameter(t.clone()) for t in initial]
    for p in eager + graphed:
        p.grad = torch.zeros_like(p)  # static gradient tensors, refilled before each step
    eager_opt, graph_opt = make(eager), make(graphed)

    def load(params: list[Tensor], index: int) -> None:
        for p, g in zip(params, grads[index]):
            p.grad.copy_(g)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as torch.cuda.graphs asks
        for i in range(warm):
            load(graphed, i)
            syncs = count_syncs(graph_opt.step)
    torch.cuda.current_stream().wait_stream(side)
    if syncs:
        return f"step() synchronizes with the host {syncs} time(s) (a sync cannot be captured)", math.nan, ""
    for i in range(warm):
        load(eager, i)
        eager_opt.step()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            graph_opt.step()
    except Exception as error:  # noqa: BLE001 - the reason is the result
        return (
            f"capture raised {type(error).__name__}: {str(error).strip().splitlines()[0][:160]}",
            math.nan,
            "",
        )
    for i, lr in enumerate(lrs):
        set_lr(eager_opt, lr)
        set_lr(graph_opt, lr)
        load(eager, warm + i)
        load(graphed, warm + i)
        eager_opt.step()
        graph.replay()
    sync(initial[0].device)
    step = next(iter(graph_opt.state.values())).get("step")
    if step is None:
        note, baked = "no step count in the state", "lr (a Python float) is"
    else:
        note = (
            f"state step after {warm} warm-up steps, a capture and {len(lrs)} replays: {float(step):g} "
            f"({type(step).__name__}; eager: {warm + len(lrs)})"
        )
        baked = f"the step count ({type(step).__name__}) and lr (a Python float) are"
    error = worst_error(
        [p.detach() for p in graphed], [p.detach() for p in eager], [str(i) for i in range(len(eager))]
    )[0]
    if error <= FP32_TOLERANCE:
        return "", error, note
    reason = f"replays differ from eager by {error:.2g}"
    if not isinstance(step, Tensor):
        reason += f": {baked} baked into the graph, so every replay repeats the captured step"
    return reason, error, note


def check_cuda_graph(ctx: Context) -> Outcome:
    model = create_network(ctx.sizes.parity_network, 10, ctx.device)
    initial = [p.detach().clone() for p in model.parameters()]
    lrs = [1e-3 * (1.0 - 0.15 * i) for i in range(5)]

    def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr if not isinstance(group["lr"], Tensor) else group["lr"].fill_(lr)

    adamp_kwargs, sgdp_kwargs = PARITY_CASES[0].kwargs, {**PARITY_CASES[2].kwargs, "lr": 1e-3}
    candidates = [
        (
            "torch AdamW capturable=True, tensor lr (control)",
            lambda ps: torch.optim.AdamW(
                ps, lr=torch.tensor(1e-3, device=ctx.device), weight_decay=5e-2, capturable=True, foreach=True
            ),
        ),
        ("ours AdamP default", lambda ps: AdamP(ps, **adamp_kwargs)),
        ("ours AdamP reference", lambda ps: AdamP(ps, foreach=False, **adamp_kwargs)),
        ("ours SGDP default", lambda ps: SGDP(ps, **sgdp_kwargs)),
    ]
    metrics, reasons = [], {}
    for name, make in candidates:
        reason, error, note = graph_against_eager(make, set_lr, initial, lrs)
        reasons[name] = reason
        value = error if math.isfinite(error) else "not captured"
        metrics.append(
            Metric(f"{name}: replays vs eager", value, "max rel err", "; ".join(filter(None, (reason, note))))
        )
    control = candidates[0][0]
    if reasons[control]:
        verdict = f"torch's own capturable AdamW failed ({reasons[control]}): the check cannot judge"
        return Outcome("error", verdict, metrics)
    failing = {name: reason for name, reason in reasons.items() if reason and name != control}
    if not failing:
        return judged(True, "capturable: replays with a changing lr match eager steps", metrics)
    verdict = "not capturable: " + "; ".join(f"{name}: {reason}" for name, reason in failing.items())
    return Outcome("xfail", verdict, metrics)


# ---------------------------------------------------------------------------------------------------- speed
def speed_candidates(ctx: Context) -> list[tuple[str, str, Callable[[list[Tensor]], torch.optim.Optimizer]]]:
    """(family, name, constructor); the first of each family is the anchor its ratios are taken against."""
    adamw, sgd = (
        dict(lr=1e-3, weight_decay=1e-2),
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    )
    candidates = [
        ("adam", "torch AdamW fused", lambda ps: torch.optim.AdamW(ps, fused=True, **adamw)),
        ("adam", "torch AdamW foreach", lambda ps: torch.optim.AdamW(ps, foreach=True, **adamw)),
        ("adam", "ours AdamP default", lambda ps: AdamP(ps, **adamw)),
        ("adam", "ours AdamP reference", lambda ps: AdamP(ps, foreach=False, **adamw)),
        ("adam", "official adamp.AdamP", lambda ps: ctx.official().AdamP(ps, **adamw)),
        ("sgd", "torch SGD fused", lambda ps: torch.optim.SGD(ps, fused=True, **sgd)),
        ("sgd", "torch SGD foreach", lambda ps: torch.optim.SGD(ps, foreach=True, **sgd)),
        ("sgd", "ours SGDP default", lambda ps: SGDP(ps, **sgd)),
        ("sgd", "ours SGDP reference", lambda ps: SGDP(ps, foreach=False, **sgd)),
        ("sgd", "official adamp.SGDP", lambda ps: ctx.official().SGDP(ps, **sgd)),
    ]
    return [c for c in candidates if ctx.oracle is not None or not c[1].startswith("official")]


def check_step_speed(ctx: Context) -> Outcome:
    """One optimizer step on the parameters of real networks (random fixed gradients), interleaved repeats."""
    metrics, headline = [], []
    for model_name in ctx.sizes.bench_models:
        model = create_network(model_name, 1000, ctx.device)
        params = [p for p in model.parameters() if p.requires_grad]
        for p, g in zip(params, random_grads(params, 4)):
            p.grad = g
        optimizers = {}
        for family, name, make in speed_candidates(ctx):
            optimizer = make(params)
            optimizer.step()  # state allocation
            optimizer.step()
            optimizers[name] = (family, optimizer)
        times: dict[str, list[float]] = {name: [] for name in optimizers}
        for _ in range(ctx.sizes.bench_repeats):
            for name, (_, optimizer) in optimizers.items():
                times[name].append(timed(optimizer.step, ctx.device) * 1e3)
        medians = {name: statistics.median(values) for name, values in times.items()}
        anchors = {}
        for name, (family, _) in optimizers.items():
            anchor = anchors.setdefault(family, name)
            ratio = medians[name] / medians[anchor]
            metrics.append(
                Metric(f"{model_name} {name}", medians[name], "ms", f"median of {len(times[name])}")
            )
            metrics.append(Metric(f"{model_name} {name} / {anchor}", ratio, "x"))
            if name.startswith("ours") and name.endswith("default"):
                headline.append(f"{model_name} {name.removeprefix('ours ')} {ratio:.2f}x {anchor}")
        for family, official in (("adam", "official adamp.AdamP"), ("sgd", "official adamp.SGDP")):
            ours = "ours AdamP default" if family == "adam" else "ours SGDP default"
            if official not in medians:
                continue
            metrics.append(
                Metric(f"{model_name} {official} / {ours}", medians[official] / medians[ours], "x")
            )
        del optimizers, params, model
    return Outcome("pass", "measured: " + "; ".join(headline), metrics)


def training_step_time(
    ctx: Context,
    model: nn.Module,
    optimizers: dict[str, torch.optim.Optimizer],
    x: Tensor,
    y: Tensor,
    amp: torch.dtype | None,
    steps: int,
    rounds: int = 3,
) -> dict[str, float]:
    """Median seconds of one whole training step (forward, backward, step) per optimizer, interleaved rounds."""

    def train_step(optimizer: torch.optim.Optimizer) -> None:
        with torch.autocast(ctx.device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def train_steps(optimizer: torch.optim.Optimizer, count: int) -> None:
        for _ in range(count):
            train_step(optimizer)

    for optimizer in optimizers.values():  # warm-up: state, cuDNN algorithm search
        timed(functools.partial(train_steps, optimizer, 2), ctx.device)
    per_round = max(1, steps // rounds)
    samples: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(rounds):
        for name, optimizer in optimizers.items():
            seconds = timed(functools.partial(train_steps, optimizer, per_round), ctx.device)
            samples[name].append(seconds / per_round)
    return {name: statistics.median(values) for name, values in samples.items()}


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def check_train_step_overhead(ctx: Context) -> Outcome:
    """AdamP/SGDP against AdamW/SGD in a whole bf16 training step, the authors' +8% claim: channels_last for
    ours and torch's; the official code (which calls .view, refused by channels_last weights) on a contiguous
    copy of the same model, with its own AdamW anchor."""
    s = ctx.sizes
    generator = torch.Generator(device=ctx.device).manual_seed(5)
    image = s.overhead_image
    x = torch.rand(s.overhead_batch, 3, image, image, device=ctx.device, generator=generator)
    y = torch.randint(0, 1000, (s.overhead_batch,), device=ctx.device, generator=generator)
    adam = dict(lr=1e-3, weight_decay=1e-2)
    sgd = dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-4)
    seconds: dict[str, float] = {}
    for layout in ("channels_last", "contiguous") if ctx.oracle is not None else ("channels_last",):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = create_network(s.overhead_model, 1000, ctx.device).to(memory_format=fmt)
        params = list(model.parameters())
        optimizers = {"torch AdamW (default)": torch.optim.AdamW(params, **adam)}
        if layout == "channels_last":
            optimizers |= {
                "torch AdamW fused": torch.optim.AdamW(params, fused=True, **adam),
                "ours AdamP default": AdamP(params, **adam),
                "torch SGD (default)": torch.optim.SGD(params, **sgd),
                "ours SGDP default": SGDP(params, **sgd),
            }
        else:
            optimizers |= {"official adamp.AdamP": ctx.official().AdamP(params, **adam)}
        with cudnn_benchmark(True):
            measured = training_step_time(
                ctx, model, optimizers, x.contiguous(memory_format=fmt), y, torch.bfloat16, s.overhead_steps
            )
        seconds |= {f"{name}, {layout}": value for name, value in measured.items()}
        del model, params, optimizers
    ctx.shared["train_images_per_s"] = (
        s.overhead_batch / seconds["ours AdamP default, channels_last"],
        s.overhead_model,
    )
    metrics = [Metric(f"{name}: step", value * 1e3, "ms") for name, value in seconds.items()]
    overhead = {}
    for anchor, name in (
        ("torch AdamW (default), channels_last", "torch AdamW fused, channels_last"),
        ("torch AdamW (default), channels_last", "ours AdamP default, channels_last"),
        ("torch SGD (default), channels_last", "ours SGDP default, channels_last"),
        ("torch AdamW (default), contiguous", "official adamp.AdamP, contiguous"),
    ):
        if name not in seconds:
            continue
        overhead[name] = 100.0 * (seconds[name] / seconds[anchor] - 1.0)
        metrics.append(Metric(f"{name} vs {anchor}", overhead[name], "% time"))
    official = overhead.get("official adamp.AdamP, contiguous")
    verdict = (
        f"{s.overhead_model}, batch {s.overhead_batch}, bf16: AdamP "
        f"{overhead['ours AdamP default, channels_last']:+.1f}% over AdamW (channels_last"
        + ("" if official is None else f"; the official code {official:+.1f}%, contiguous")
        + f"), SGDP {overhead['ours SGDP default, channels_last']:+.1f}% over SGD; the authors report +8%"
    )
    return Outcome("pass", verdict, metrics)


# ------------------------------------------------------------------------------ the suite: trainer, data, table
class SyntheticBatches:
    """The same device-resident batch ``steps`` times: data costs nothing, so only the loops are compared."""

    def __init__(self, x: Tensor, y: Tensor, steps: int) -> None:
        self.x, self.y, self.steps_per_epoch = x, y, steps

    def train_batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        for _ in range(self.steps_per_epoch):
            yield self.x, self.y

    def eval_batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(())


def bare_loop(model: nn.Module, optimizer: torch.optim.Optimizer, data: SyntheticBatches, amp: str) -> None:
    """The minimal loop: forward under autocast, cross-entropy, backward, step."""
    dtype = {"none": None, "bf16": torch.bfloat16}[amp]
    model.train()
    for x, y in data.train_batches(0):
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def trainer_epoch(
    ctx: Context,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: SyntheticBatches,
    amp: str,
    own_rates: list[float],
) -> None:
    """One ``Trainer.fit`` epoch (no evaluation data, no checkpoint); keeps the trainer's own images/s."""
    from adamp_repro.train.distributed import DistContext
    from adamp_repro.train.tasks import ClassificationTask
    from adamp_repro.train.trainer import Trainer, TrainerSettings

    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        task=ClassificationTask(),
        data=data,
        lr_factor=lambda step: 1.0,
        settings=TrainerSettings(epochs=1, amp=amp, checkpoint=False, progress=False),
        device=ctx.device,
        ctx=DistContext(),
        run_dir=None,
        seed=0,
    )
    own_rates.append(trainer.fit().history[-1]["images_per_s"])


def check_trainer_vs_bare(ctx: Context) -> Outcome:
    """``Trainer.fit`` (one epoch of synthetic batches) against the bare loop, same model, optimizer and batch."""
    s = ctx.sizes
    metrics, ratios = [], []
    for name, image, batch, amp in s.trainer_workloads:
        model = create_network(name, 1000 if image >= 128 else 10, ctx.device)
        if ctx.cuda:
            model = model.to(memory_format=torch.channels_last)  # as the runner does on CUDA
        optimizer = AdamP(model.parameters(), lr=1e-3, weight_decay=5e-2)
        generator = torch.Generator(device=ctx.device).manual_seed(6)
        x = torch.rand(batch, 3, image, image, device=ctx.device, generator=generator)
        x = x.contiguous(memory_format=torch.channels_last) if ctx.cuda else x
        y = torch.randint(0, 10, (batch,), device=ctx.device, generator=generator)
        data = SyntheticBatches(x, y, s.trainer_steps)
        run_bare = functools.partial(bare_loop, model, optimizer, data, amp)
        run_trainer = functools.partial(trainer_epoch, ctx, model, optimizer, data, amp)
        with cudnn_benchmark(ctx.cuda):
            bare_loop(model, optimizer, SyntheticBatches(x, y, 3), amp)  # warm-up
            bare, fit, own = [], [], []
            for _ in range(s.trainer_repeats):  # interleaved, so drift hits both alike
                bare.append(batch * s.trainer_steps / timed(run_bare, ctx.device))
                fit.append(batch * s.trainer_steps / timed(functools.partial(run_trainer, own), ctx.device))
        ratio = statistics.median(fit) / statistics.median(bare)
        ratios.append((f"{name} {amp}", ratio))
        label = f"{name} {image}px batch {batch} amp {amp}"
        metrics += [
            Metric(f"{label}: bare loop", statistics.median(bare), "images/s"),
            Metric(f"{label}: Trainer.fit", statistics.median(fit), "images/s"),
            Metric(f"{label}: Trainer / bare", ratio, "x", f"target >= {TRAINER_TARGET:g}"),
            Metric(
                f"{label}: Trainer's own images_per_s",
                statistics.median(own),
                "images/s",
                "its clock stops before the queued device work ends" if ctx.cuda else "",
            ),
        ]
    ok = all(ratio >= TRAINER_TARGET for _, ratio in ratios)
    verdict = "Trainer / bare loop: " + ", ".join(f"{w} {r:.3f}x" for w, r in ratios)
    if ctx.quick:  # a few steps on a shared CPU say nothing about speed
        return Outcome("pass", verdict + " (quick sizes: not judged)", metrics)
    verdict += f" (target >= {TRAINER_TARGET:g})"
    return judged(ok, verdict, metrics)


def read_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise Skip(f"PyYAML is not installed: this check reads {rel(path)}") from None
    return yaml.safe_load(path.read_text())


def write_jpeg_tree(
    root: Path, count: int, size: tuple[int, int], classes: int = 10, unique: int = 32
) -> float:
    """``root/{train,val}/class_k/*.jpg``: ``count`` train images (hard links to ``unique`` distinct JPEGs of
    smooth noise, quality 90) and one val image per class; returns the mean file size in KiB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    sources = []
    (root / "sources").mkdir(parents=True)
    for index in range(unique):
        coarse = rng.integers(0, 256, (size[1] // 16 + 2, size[0] // 16 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0.0, 12.0, smooth.shape), 0, 255).astype(np.uint8)
        path = root / "sources" / f"{index}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        sources.append(path)
    for split, n in (("train", count), ("val", classes)):
        for index in range(n):
            target = root / split / f"class_{index % classes:02d}" / f"{index:06d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(sources[index % unique], target)
            except OSError:
                target.write_bytes(sources[index % unique].read_bytes())
    return sum(p.stat().st_size for p in sources) / len(sources) / 1024


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_images_per_s(ctx: Context, batch: int, image: int) -> tuple[float, str]:
    """Training images/s of the model the pipeline would feed: the overhead check's figure when it ran."""
    if "train_images_per_s" in ctx.shared:
        return ctx.shared["train_images_per_s"]
    s = ctx.sizes
    model = create_network(s.overhead_model, 1000, ctx.device).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, image, image, device=ctx.device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=ctx.device)
    optimizer = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
    with cudnn_benchmark(ctx.cuda):
        seconds = training_step_time(ctx, model, {"ours": optimizer}, x, y, torch.bfloat16, 6)["ours"]
    return batch / seconds, s.overhead_model


def loader_rate(data: Any, epoch: int, device: torch.device) -> float:
    """Images/s of one epoch of ``data.train_batches`` (batches moved to the device, nothing computed)."""
    seen = 0
    sync(device)
    started = time.perf_counter()
    for _, y in data.train_batches(epoch):
        seen += y.numel()
    sync(device)
    return seen / (time.perf_counter() - started)


def check_imagefolder_pipeline(ctx: Context) -> Outcome:
    """The ImageFolder loader alone (decode, RandomResizedCrop, flip, to the device) on a JPEG tree made here."""
    from adamp_repro.data import build_data

    s = ctx.sizes
    workers = cores() if s.workers is None else s.workers
    cfg = read_yaml(ROOT / "configs" / "dataset" / "imagenet.yaml")
    with tempfile.TemporaryDirectory(prefix="device-check-") as folder:
        kib = write_jpeg_tree(Path(folder), s.folder_images, s.folder_size)
        cfg.update(
            root=folder, num_classes=10, batch_size=s.folder_batch, num_workers=workers,
            crop_size=s.folder_crop, resize_size=round(s.folder_crop / 0.875),
        )  # fmt: skip
        data = build_data(cfg, seed=0, device=ctx.device)
        try:  # epoch 0 starts the (persistent) workers; epoch 1 is the steady state
            first, steady = (loader_rate(data, epoch, ctx.device) for epoch in (0, 1))
        finally:
            del data  # stops the workers
            gc.collect()
    model_rate, model_name = model_images_per_s(ctx, s.folder_batch, s.folder_crop)
    per_worker = steady / max(workers, 1)
    where = f"{steady:.0f} images/s " + (
        f"with {workers} workers ({per_worker:.0f} per worker)" if workers else "in the main process"
    )
    if steady < model_rate:
        needed = math.ceil(model_rate / per_worker) if workers else "more than 0"
        verdict = (
            f"the data pipeline is the bottleneck: {where} against the {model_rate:.0f} images/s {model_name} "
            f"trains (bf16, channels_last); about {needed} workers would keep up"
        )
    else:
        verdict = f"the model is the bottleneck: {where}, {model_name} trains {model_rate:.0f} images/s"
    metrics = [
        Metric("loader, first epoch (workers starting)", first, "images/s"),
        Metric(
            "loader, steady epoch", steady, "images/s", f"{s.folder_images} JPEGs, batch {s.folder_batch}"
        ),
        Metric("loader per worker", per_worker, "images/s", f"{workers} workers, {cores()} cores"),
        Metric(f"{model_name} training (bf16, channels_last)", model_rate, "images/s"),
        Metric("loader / model", steady / model_rate, "x"),
        Metric("JPEG size", kib, "KiB", f"{s.folder_size[0]}x{s.folder_size[1]}, quality 90, smooth noise"),
    ]
    return Outcome("pass", verdict, metrics)


def mini_records(optimizers: Sequence[str]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The committed seed-0 record (folder, resolved config) of each optimizer of the default table."""
    found: dict[str, tuple[Path, dict[str, Any]]] = {}
    for config in sorted(MINI_RECORDS.glob("*/config.yaml")):
        cfg = read_yaml(config)
        name = cfg.get("optimizer", {}).get("name")
        if cfg.get("seed") == 0 and name in optimizers and (config.parent / "metrics.csv").is_file():
            found.setdefault(name, (config.parent, cfg))
    return found


def train_slice(ctx: Context, cfg: dict[str, Any], epochs: int) -> list[dict[str, Any]]:
    """The record's run rebuilt from its resolved config in the runner's order (seed, data, model, optimizer,
    task), trained for the first ``epochs`` epochs of its own schedule; returns the epoch rows."""
    import numpy as np

    from adamp_repro.data import build_data
    from adamp_repro.models import build_model
    from adamp_repro.optim import build_optimizer
    from adamp_repro.train.diagnostics import WeightDiagnostics
    from adamp_repro.train.distributed import DistContext
    from adamp_repro.train.schedule import build_lr_factor
    from adamp_repro.train.tasks import build_task
    from adamp_repro.train.trainer import Trainer, TrainerSettings

    seed, scale, train = int(cfg["seed"]), cfg["scale"], cfg["train"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    quick = ctx.sizes.mini_quick
    data = build_data(
        cfg["dataset"],
        seed=seed,
        train_subset=128 if quick else scale["train_subset"],
        eval_subset=100 if quick else scale["eval_subset"],
        device=ctx.device,
    )
    model = build_model(cfg["model"], data.num_classes, data.mean, data.std).to(ctx.device)
    if train["channels_last"] is True or (train["channels_last"] == "auto" and ctx.cuda):
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg["optimizer"], model)
    diagnostics = None
    if cfg["diagnostics"]["enabled"]:
        every = int(cfg["diagnostics"]["every_n_steps"])
        diagnostics = WeightDiagnostics(model, optimizer, every, float(cfg["optimizer"].get("delta", 0.1)))
    settings = TrainerSettings(
        epochs=epochs,
        max_steps_per_epoch=2 if quick else scale["max_steps_per_epoch"],
        grad_clip_norm=train["grad_clip_norm"],
        amp=str(train["amp"]),
        ema_decay=train["ema_decay"],
        log_every_n_steps=int(train["log_every_n_steps"]),
        eval_every=int(train["eval_every"]),
        checkpoint=False,
        progress=False,
    )
    steps = settings.epoch_steps(data.steps_per_epoch)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        task=build_task(cfg["task"]),
        data=data,
        lr_factor=build_lr_factor(cfg["scheduler"], int(scale["epochs"]) * steps, steps),
        settings=settings,
        device=ctx.device,
        ctx=DistContext(),
        run_dir=None,
        seed=seed,
        diagnostics=diagnostics,
    )
    return trainer.fit().history


def check_mini_table_slice(ctx: Context) -> Outcome:
    """The default table (configs/experiment/mini_cifar10_resnet20.yaml, as resolved in the committed records)
    trained on this device and set beside the CPU records; nothing is written under results/runs."""
    s = ctx.sizes
    records = mini_records(s.mini_optimizers)
    if not records:
        raise Skip(f"no committed seed-0 records of {list(s.mini_optimizers)} under {rel(MINI_RECORDS)}")
    metrics, ok, parts, top1 = [], True, [], {}
    for name in s.mini_optimizers:
        if name not in records:
            metrics.append(Metric(f"{name}: no committed record", "", "", "not run"))
            continue
        folder, cfg = records[name]
        planned = int(cfg["scale"]["epochs"])
        epochs = min(s.mini_epochs or planned, planned)
        started = time.perf_counter()
        last = train_slice(ctx, cfg, epochs)[-1]
        seconds = time.perf_counter() - started
        cpu = next(row for row in read_csv_rows(folder / "metrics.csv") if int(row["epoch"]) == epochs - 1)
        gpu_top1, cpu_top1 = float(last["eval_top1"]), float(cpu["eval_top1"])
        top1[name] = (gpu_top1, cpu_top1)
        finite = math.isfinite(float(last["train_loss"]))
        close = s.mini_quick or abs(gpu_top1 - cpu_top1) <= MINI_TOLERANCE
        ok &= finite and close
        parts.append(f"{name} {gpu_top1:.1f} ({cpu_top1:.1f})")
        metrics += [
            Metric(f"{name}: eval top-1 after epoch {epochs}", gpu_top1, "%", f"CPU record {cpu_top1:.1f}"),
            Metric(
                f"{name}: top-1 here - CPU record",
                gpu_top1 - cpu_top1,
                "points",
                f"limit +-{MINI_TOLERANCE:g}",
            ),
            Metric(
                f"{name}: mean weight norm",
                float(last.get("mean_weight_norm", math.nan)),
                "",
                f"CPU record {float(cpu.get('mean_weight_norm') or 'nan'):.4g}",
            ),
            Metric(
                f"{name}: run time",
                seconds,
                "s",
                f"{float(last['images_per_s']):.0f} images/s (trainer's clock)",
            ),
        ]
    for ours, baseline in (("sgdp", "sgd"), ("adamp", "adamw")):
        if ours in top1 and baseline in top1:
            here, cpu = (top1[ours][i] - top1[baseline][i] for i in (0, 1))
            metrics.append(Metric(f"{ours} - {baseline} top-1", here, "points", f"CPU records {cpu:+.1f}"))
    if s.mini_quick:
        return judged(
            ok,
            "plumbing only (quick sizes: 2 steps on 128 images, not compared): " + ", ".join(parts),
            metrics,
        )
    verdict = (
        f"default table, seed 0, {epochs} epochs each: eval top-1 here (CPU record) "
        + ", ".join(parts)
        + f"; limit +-{MINI_TOLERANCE:g} points"
    )
    return judged(ok, verdict, metrics)


# ------------------------------------------------------------------------------------------- registry, runner
@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], Outcome]
    summary: str
    timeout_s: float
    cuda_only: bool = False


# In run order. cuda_graph comes late: a failed capture can leave the device unusable for what follows.
CHECKS = (
    Check("parity_fp32", check_parity_fp32, "SGDP/AdamP, every CUDA form, vs official adamp", 90),
    Check("parity_channels_last", check_parity_channels_last, "the same with channels_last weights", 60),
    Check("low_precision_params", check_low_precision_params, "bf16/fp16 weights vs fp32, finite", 60),
    Check("amp_steps", check_amp_steps, "bf16 and fp16 (GradScaler) autocast training vs fp32", 60),
    Check("host_sync", check_host_sync, 'syncs per step; sync debug mode "error" around step()', 45, True),
    Check("step_speed", check_step_speed, "one step on ResNet-50/ViT-S parameters vs torch, official", 60),
    Check("train_step_overhead", check_train_step_overhead, "AdamP vs AdamW whole step (the +8% claim)", 60),
    Check("trainer_vs_bare", check_trainer_vs_bare, "Trainer.fit vs a bare loop (target >= 0.95x)", 60),
    Check("imagefolder_pipeline", check_imagefolder_pipeline, "ImageFolder loader vs model images/s", 75),
    Check("mini_table_slice", check_mini_table_slice, "the default table's runs here vs CPU records", 90),
    Check("cuda_graph", check_cuda_graph, "whether a step can be captured and replayed", 45, True),
    Check("parity_compiled", check_parity_compiled, "torch.compile(step) on CUDA vs official", 120, True),
)
START_MARGIN_S = 15.0  # a check is not started with less budget left than this


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise CheckTimeout in the main thread after ``seconds`` (where SIGALRM exists)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CheckTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_check(check: Check, ctx: Context, limit: float) -> Outcome:
    """One check, whatever it does: a raise or an overrun becomes an "error" outcome, never a stopped run."""
    started = time.perf_counter()
    try:
        with time_limit(limit):
            outcome = check.run(ctx)
    except Skip as reason:
        outcome = Outcome("skip", str(reason))
    except CheckTimeout:
        outcome = Outcome("error", f"stopped at its time limit of {limit:.0f} s")
    except Exception as error:  # noqa: BLE001 - recorded; the next check still runs
        lines = str(error).strip().splitlines() or [""]
        outcome = Outcome("error", f"{type(error).__name__}: {lines[0][:300]}")
    finally:
        if ctx.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.set_sync_debug_mode("default")
                torch.cuda.synchronize()
        gc.collect()
        if ctx.cuda:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
    outcome.seconds = time.perf_counter() - started
    return outcome


def run_checks(ctx: Context, checks: Sequence[Check], report: Report) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    report.write(outcomes)
    deadline = STARTED + ctx.sizes.budget_s
    for number, check in enumerate(checks, 1):
        remaining = deadline - time.monotonic()
        if check.cuda_only and not ctx.cuda:
            outcome = Outcome("skip", "needs a CUDA device")
        elif remaining < START_MARGIN_S:
            outcome = Outcome(
                "skip", f"not started: the {ctx.sizes.budget_s:.0f} s budget of the run was spent"
            )
        else:
            print(f"[{number}/{len(checks)}] {check.name} ...", flush=True)
            outcome = run_check(check, ctx, min(check.timeout_s, remaining))
        outcomes[check.name] = outcome
        print(
            f"[{number}/{len(checks)}] {check.name}: {outcome.status} ({outcome.seconds:.1f} s) {outcome.verdict}",
            flush=True,
        )
        report.write(outcomes)
    return outcomes


# ------------------------------------------------------------------------------------------------- reporting
def source_hash(root: Path) -> str:
    """sha256 of the files under src/ (paths and bytes; caches and build metadata left out)."""
    digest = hashlib.sha256()
    for path in sorted((root / "src").rglob("*")):
        skipped = any(part == "__pycache__" or part.endswith(".egg-info") for part in path.parts)
        if path.is_file() and not skipped and path.suffix not in (".pyc", ".so"):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def code_identity(given_commit: str | None = None) -> dict[str, str]:
    """The commit measured (and whether the tree differed from it), plus the content hash of src/. Where the
    tree is no git checkout (a copy on a GPU machine), the commit given with --commit is recorded as such."""
    state = git_state(ROOT)
    commit = state["git_commit"]
    if commit is None:
        written = (
            f"{given_commit} (as given: no git checkout here)"
            if given_commit
            else "unknown (no git checkout)"
        )
        return {"commit": written, "dirty": "unknown", "src_sha256": source_hash(ROOT)}
    return {"commit": commit, "dirty": "yes" if state["git_dirty"] else "no", "src_sha256": source_hash(ROOT)}


def format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.4g}"


def gpu_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "device"


@dataclass
class Report:
    """The two output files, rewritten (atomically) after every check."""

    ctx: Context
    checks: Sequence[Check]
    identity: dict[str, str]
    environment: list[tuple[str, str]]
    md_path: Path
    csv_path: Path

    def write(self, outcomes: dict[str, Outcome]) -> None:
        atomic_write_text(self.csv_path, rows_to_csv(self.rows(outcomes)))
        atomic_write_text(self.md_path, self.markdown(outcomes))

    def rows(self, outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
        base = {
            "commit": self.identity["commit"],
            "src_sha256": self.identity["src_sha256"],
            "device": device_description(self.ctx.device),
        }
        rows = []
        for check in self.checks:
            outcome = outcomes.get(check.name)
            if outcome is None:
                continue
            head = base | {
                "check": check.name,
                "status": outcome.status,
                "seconds": round(outcome.seconds, 2),
            }
            tail = {"verdict": outcome.verdict}
            for metric in outcome.metrics or [Metric("", "")]:
                rows.append(
                    head
                    | {"metric": metric.name, "value": metric.value, "unit": metric.unit, "note": metric.note}
                    | tail
                )
        return rows

    def markdown(self, outcomes: dict[str, Outcome]) -> str:
        ctx, ident = self.ctx, self.identity
        done = len(outcomes) == len(self.checks)
        counts = ", ".join(f"{sum(o.status == s for o in outcomes.values())} {s}" for s in STATUSES)
        lines = [
            f"# Device check: {device_description(ctx.device)}",
            "",
            f"Commit `{ident['commit']}` (tree differs from it: {ident['dirty']}), src/ sha256 "
            f"`{ident['src_sha256']}`. Written by `scripts/device_check.py`"
            + (" with `--quick` sizes" if ctx.quick else "")
            + f"; {'finished' if done else 'in progress'} after {time.monotonic() - STARTED:.0f} s: {counts}. "
            "Statuses: pass, fail (criterion missed), xfail (a known limitation, stated), skip (with the "
            "reason), error (the check raised). What each check measures: docs/device-check.md.",
            "",
            "| | |",
            "|---|---|",
            *(f"| {key} | {value} |" for key, value in self.environment),
            "",
            "| check | status | s | result |",
            "|---|---|---:|---|",
        ]
        for check in self.checks:
            outcome = outcomes.get(check.name)
            if outcome is None:
                lines.append(f"| {check.name} | pending | | {check.summary} |")
            else:
                lines.append(
                    f"| {check.name} | {outcome.status} | {outcome.seconds:.1f} | {outcome.verdict} |"
                )
        for check in self.checks:
            outcome = outcomes.get(check.name)
            if outcome is None or not outcome.metrics:
                continue
            lines += [
                "",
                f"## {check.name}: {outcome.status}",
                "",
                outcome.verdict,
                "",
                "| metric | value | unit | note |",
                "|---|---:|---|---|",
            ]
            lines += [
                f"| {m.name} | {format_value(m.value)} | {m.unit} | {m.note} |" for m in outcome.metrics
            ]
        return "\n".join(lines) + "\n"


def environment(ctx: Context) -> list[tuple[str, str]]:
    from importlib import metadata

    rows = [("device", device_description(ctx.device))]
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        rows += [
            (
                "GPU memory",
                f"{props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}",
            ),
            ("CUDA / cuDNN", f"{torch.version.cuda} / {torch.backends.cudnn.version()}"),
        ]
    versions = []
    for name in ("timm", "torchvision", "numpy", "PyYAML"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    rows += [
        ("torch / python", f"{torch.__version__} / {platform.python_version()}"),
        ("packages", ", ".join(versions)),
        ("CPU cores / torch threads", f"{cores()} / {torch.get_num_threads()}"),
        ("parity oracle", ctx.oracle_source),
        ("time budget", f"{ctx.sizes.budget_s:.0f} s"),
    ]
    return rows


# ------------------------------------------------------------------------------------------------ command line
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every other bad input
        raise UsageError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add(
        "--out",
        type=Path,
        default=ROOT / "results" / "bench",
        help="folder of device_<gpu>.md/.csv (results/bench)",
    )
    add("--only", nargs="+", metavar="CHECK", help="run only these checks (see --list)")
    add("--skip", nargs="+", metavar="CHECK", default=[], help="leave these checks out")
    add("--list", action="store_true", help="print the checks and exit")
    add("--quick", action="store_true", help="tiny sizes: proves the plumbing in seconds, measures nothing")
    add("--allow-cpu", action="store_true", help="without a CUDA device, run on CPU with --quick sizes")
    add("--threads", type=int, help="torch.set_num_threads (default: torch's own)")
    add("--budget-s", type=float, help="no check starts after this many seconds of the run (default 280)")
    add("--parity-network", help="timm network whose gradients are replayed (default resnet18)")
    add("--parity-steps", type=int, help="official steps recorded and replayed (default 20)")
    add(
        "--bench-models",
        nargs="+",
        help="timm networks of the step benchmark (default resnet50 vit_small_patch16_224)",
    )
    add("--bench-repeats", type=int, help="interleaved repeats of the step benchmark (default 20)")
    add("--overhead-batch", type=int, help="batch of the whole-step comparison (default 256)")
    add("--overhead-steps", type=int, help="timed training steps per optimizer (default 15)")
    add("--trainer-steps", type=int, help="steps per repeat of the trainer comparison (default 30)")
    add("--folder-images", type=int, help="JPEGs in the ImageFolder tree (default 8192)")
    add("--workers", type=int, help="DataLoader workers of the ImageFolder check (default: the usable cores)")
    add("--mini-epochs", type=int, help="epochs of each default-table run (default: the records' own, 6)")
    add(
        "--mini-optimizers",
        nargs="+",
        help="optimizers of the default table to run (default sgd sgdp adamw adamp)",
    )
    add("--commit", help="the commit to record where the tree is no git checkout (git's own answer wins)")
    add(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend of parity_compiled (default inductor)",
    )
    return parser.parse_args(argv)


def selected_checks(args: argparse.Namespace) -> list[Check]:
    names = [check.name for check in CHECKS]
    for option, given in (("--only", args.only or []), ("--skip", args.skip)):
        unknown = [name for name in given if name not in names]
        if unknown:
            raise UsageError(f"{option}: unknown check(s) {unknown}; expected names from {names}")
    return [c for c in CHECKS if (args.only is None or c.name in args.only) and c.name not in args.skip]


def sizes_from(args: argparse.Namespace, quick: bool) -> Sizes:
    overrides = {
        "parity_network": args.parity_network,
        "parity_steps": args.parity_steps,
        "bench_models": tuple(args.bench_models) if args.bench_models else None,
        "bench_repeats": args.bench_repeats,
        "overhead_batch": args.overhead_batch,
        "overhead_steps": args.overhead_steps,
        "trainer_steps": args.trainer_steps,
        "folder_images": args.folder_images,
        "workers": args.workers,
        "mini_epochs": args.mini_epochs,
        "mini_optimizers": tuple(args.mini_optimizers) if args.mini_optimizers else None,
        "budget_s": args.budget_s,
    }
    for key, value in overrides.items():
        lowest = 0 if key == "workers" else 1
        if isinstance(value, (int, float)) and value < lowest:
            raise UsageError(f"--{key.replace('_', '-')}={value}: expected a number >= {lowest}")
    sizes = dataclasses.replace(
        QUICK if quick else Sizes(), **{k: v for k, v in overrides.items() if v is not None}
    )
    allowed = ("sgd", "sgdp", "adam", "adamw", "adamp")
    unknown = [name for name in sizes.mini_optimizers if name not in allowed]
    if unknown:
        raise UsageError(
            f"--mini-optimizers: unknown optimizer(s) {unknown}; expected names from {list(allowed)}"
        )
    return sizes


def check_model_names(sizes: Sizes) -> None:
    import timm

    import adamp_repro.models  # noqa: F401 - registers the CIFAR networks with timm

    names = [
        sizes.parity_network,
        *sizes.bench_models,
        sizes.overhead_model,
        *(w[0] for w in sizes.trainer_workloads),
    ]
    unknown = sorted({name for name in names if not timm.is_model(name)})
    if unknown:
        raise UsageError(f"unknown timm model name(s) {unknown}; expected names from timm.list_models()")


def choose_device(allow_cpu: bool) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if not allow_cpu:
        raise UsageError(
            f"no CUDA device: torch {torch.__version__} sees none; run this on a GPU machine, or pass --allow-cpu "
            "to run the plumbing on CPU with tiny sizes"
        )
    return torch.device("cpu")


def run(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    checks = selected_checks(args)
    if args.list:
        for check in CHECKS:
            print(f"{check.name:22s} {check.summary}" + (" (CUDA only)" if check.cuda_only else ""))
        return 0
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads={args.threads}: expected an integer >= 1")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out={args.out}: exists and is not a folder")
    device = choose_device(args.allow_cpu)
    quick = args.quick or device.type == "cpu"
    sizes = sizes_from(args, quick)
    check_model_names(sizes)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":  # the C++ CPU kernels are no CUDA path: keep the plumbing run free of a compile
        os.environ.setdefault("ADAMP_REPRO_FUSED_CPU", "0")
    oracle, oracle_source = load_official()
    ctx = Context(device, sizes, quick, args.compile_backend, oracle, oracle_source)
    stem = f"device_{gpu_slug(device)}" + ("_quick" if quick else "")
    report = Report(
        ctx,
        checks,
        code_identity(args.commit),
        environment(ctx),
        args.out / f"{stem}.md",
        args.out / f"{stem}.csv",
    )
    print(f"device check of commit {report.identity['commit']} on {device_description(device)}", flush=True)
    outcomes = run_checks(ctx, checks, report)
    counts = ", ".join(f"{sum(o.status == s for o in outcomes.values())} {s}" for s in STATUSES)
    print(f"wrote {report.md_path} and {report.csv_path.name}: {counts}", flush=True)
    return 1 if any(o.status in ("fail", "error") for o in outcomes.values()) else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status


if __name__ == "__main__":
    sys.exit(main())
