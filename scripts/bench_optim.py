"""Time one optimizer step on the parameters of real networks: ours (fused, foreach, reference, compiled), the official
``adamp`` 0.3.0, timm's AdamP/SGDP, and torch's AdamW/SGD (fused, foreach, for-loop) as anchors.

Gradients are random and fixed; every optimizer steps the same parameters. Each repeat times one step of
every optimizer in turn (interleaved), so load from other processes hits all of them alike; the table reports
medians and the ratio to the fused torch anchor of the same family measured in the same run.

    python scripts/bench_optim.py                      # resnet50 and vit_small_patch16_224, 20 repeats
    python scripts/bench_optim.py --quick              # resnet18 only, 5 repeats (a smoke run)
    python scripts/bench_optim.py --models resnet50 --repeats 30 --no-compiled

Writes results/bench/optim_step.csv (atomically) and results/bench/optim_step.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import adamp
import timm
import timm.optim
import torch

from adamp_repro.optim import SGDP, AdamP, fused_cpu

ADAMP_ARGS = dict(lr=1e-3, weight_decay=1e-2)  # official README usage
SGDP_ARGS = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
COLUMNS = [
    "model",
    "device",
    "family",
    "optimizer",
    "median_ms",
    "min_ms",
    "p25_ms",
    "p75_ms",
    "ratio_vs_fused",
    "speedup_vs_official",
    "first_step_s",
    "repeats",
    "n_tensors",
    "n_elements",
    "torch",
    "threads",
]


@dataclass
class Candidate:
    family: str  # "adam" or "sgd": which fused anchor it is compared with
    name: str
    make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]


def candidates(device: torch.device, with_compiled: bool, only: str | None = None) -> list[Candidate]:
    fused_ok = device.type in ("cpu", "cuda")
    adamw = dict(lr=1e-3, weight_decay=1e-2)
    sgd = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    out = [
        Candidate("adam", "torch AdamW fused", lambda p: torch.optim.AdamW(p, fused=True, **adamw)),
        Candidate("adam", "torch AdamW foreach", lambda p: torch.optim.AdamW(p, foreach=True, **adamw)),
        Candidate("adam", "torch AdamW for-loop", lambda p: torch.optim.AdamW(p, foreach=False, **adamw)),
        Candidate("adam", "ours AdamP fused", lambda p: AdamP(p, **ADAMP_ARGS)),
        Candidate("adam", "ours AdamP foreach", lambda p: AdamP(p, foreach=True, **ADAMP_ARGS)),
        Candidate("adam", "ours AdamP reference", lambda p: AdamP(p, foreach=False, **ADAMP_ARGS)),
        Candidate("adam", "official adamp.AdamP", lambda p: adamp.AdamP(p, **ADAMP_ARGS)),
        Candidate("adam", "timm AdamP", lambda p: timm.optim.AdamP(p, **ADAMP_ARGS)),
        Candidate("sgd", "torch SGD fused", lambda p: torch.optim.SGD(p, fused=True, **sgd)),
        Candidate("sgd", "torch SGD foreach", lambda p: torch.optim.SGD(p, foreach=True, **sgd)),
        Candidate("sgd", "torch SGD for-loop", lambda p: torch.optim.SGD(p, foreach=False, **sgd)),
        Candidate("sgd", "ours SGDP fused", lambda p: SGDP(p, **SGDP_ARGS)),
        Candidate("sgd", "ours SGDP foreach", lambda p: SGDP(p, foreach=True, **SGDP_ARGS)),
        Candidate("sgd", "ours SGDP reference", lambda p: SGDP(p, foreach=False, **SGDP_ARGS)),
        Candidate("sgd", "official adamp.SGDP", lambda p: adamp.SGDP(p, **SGDP_ARGS)),
        Candidate("sgd", "timm SGDP", lambda p: timm.optim.SGDP(p, **SGDP_ARGS)),
    ]
    if with_compiled and device.type == "cpu":
        out.insert(
            5, Candidate("adam", "ours AdamP compiled", lambda p: AdamP(p, compile=True, **ADAMP_ARGS))
        )
        out.insert(14, Candidate("sgd", "ours SGDP compiled", lambda p: SGDP(p, compile=True, **SGDP_ARGS)))
    if not fused_ok:
        out = [c for c in out if "torch" not in c.name or "fused" not in c.name]
    if device.type != "cpu" or fused_cpu.load() is None:  # "ours fused" would time the foreach form again
        out = [c for c in out if not (c.name.startswith("ours") and "fused" in c.name)]
    if only:  # keep the anchors and officials: ratios need them
        keep = ("fused", "official", only)
        out = [c for c in out if any(key in c.name for key in keep)]
    return out


def timed_step(optimizer: torch.optim.Optimizer, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_model(
    model_name: str, device: torch.device, repeats: int, with_compiled: bool, only: str | None = None
) -> list[dict]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    optimizers, first_step = {}, {}
    for candidate in candidates(device, with_compiled, only):
        optimizer = candidate.make(params)
        first_step[candidate.name] = timed_step(optimizer, device)  # includes state allocation / compiling
        timed_step(optimizer, device)
        optimizers[candidate.name] = (candidate, optimizer)
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, (_, optimizer) in optimizers.items():
            times[name].append(timed_step(optimizer, device) * 1e3)
    medians = {name: statistics.median(values) for name, values in times.items()}
    anchors = {"adam": medians.get("torch AdamW fused"), "sgd": medians.get("torch SGD fused")}
    officials = {"adam": medians["official adamp.AdamP"], "sgd": medians["official adamp.SGDP"]}
    rows = []
    for name, (candidate, _) in optimizers.items():
        quartiles = statistics.quantiles(times[name], n=4) if repeats > 1 else [medians[name]] * 3
        anchor = anchors[candidate.family]
        rows.append(
            {
                "model": model_name,
                "device": device.type,
                "family": candidate.family,
                "optimizer": name,
                "median_ms": medians[name],
                "min_ms": min(times[name]),
                "p25_ms": quartiles[0],
                "p75_ms": quartiles[2],
                "ratio_vs_fused": medians[name] / anchor if anchor else float("nan"),
                "speedup_vs_official": officials[candidate.family] / medians[name],
                "first_step_s": first_step[name],
                "repeats": repeats,
                "n_tensors": len(params),
                "n_elements": sum(p.numel() for p in params),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.chmod(temp, 0o644)  # mkstemp creates 0600; the results are meant to be read by others
    os.replace(temp, path)


def render_markdown(rows: list[dict], build_note: str = "") -> str:
    cpu = platform.processor() or platform.machine()
    lines = [
        "# One optimizer step: ours vs official adamp 0.3.0, timm and torch",
        "",
        f"Written by `scripts/bench_optim.py`; torch {torch.__version__}, {cpu}, "
        f"{torch.get_num_threads()} threads. Random fixed gradients; every repeat times one step of each "
        "optimizer in turn. `ratio` = median / median of the fused torch anchor of the same family "
        "(AdamW for Adam-type, SGD for SGD-type) in the same run; `vs official` = official median / this "
        "median; `min` is the least disturbed repeat on a shared machine. `first step` includes state "
        "allocation and, for the compiled form, compiling (Inductor's cache makes later runs faster).",
        "`ours fused` is the default form on fp32 CPU parameters (foreach=None: the C++ kernels of "
        "`adamp_repro.optim.fused_cpu`); `ours foreach` is the torch multi-tensor form (foreach=True). "
        + build_note,
        "",
    ]
    for model in dict.fromkeys(row["model"] for row in rows):
        subset = [row for row in rows if row["model"] == model]
        head = subset[0]
        lines += [
            f"## {model} ({head['device']}, {head['n_tensors']} tensors, {head['n_elements'] / 1e6:.1f}M "
            f"elements, {head['repeats']} repeats)",
            "",
            "| optimizer | median ms | min ms | p25-p75 ms | ratio vs fused | vs official | first step s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in subset:
            lines.append(
                f"| {row['optimizer']} | {row['median_ms']:.1f} | {row['min_ms']:.1f} "
                f"| {row['p25_ms']:.1f}-{row['p75_ms']:.1f} | {row['ratio_vs_fused']:.2f} "
                f"| {row['speedup_vs_official']:.1f}x | {row['first_step_s']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_small_patch16_224"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="resnet18 only, 5 repeats, no compiled form")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile form")
    parser.add_argument("--only", help="time only optimizers whose name contains this (plus the anchors)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/optim_step.csv"))
    parser.add_argument(
        "--cached-fused",
        action="store_true",
        help="reuse a cached fused-kernel build instead of timing a fresh one",
    )
    args = parser.parse_args()
    build_note = ""
    if fused_cpu.enabled():
        try:
            seconds = fused_cpu.build(force=not args.cached_fused)
            build_note = (
                f"Fused kernels compiled from scratch in {seconds:.1f} s before the run (first use only; "
                "cached on disk afterwards, loading then takes milliseconds)."
                if seconds
                else "Fused kernels loaded from the on-disk cache (no compile in this run)."
            )
        except Exception as error:  # noqa: BLE001 - reported, and the fused rows are dropped
            build_note = f"Fused kernels unavailable: {error}."
        fused_cpu.load()
    models, repeats, with_compiled = args.models, args.repeats, not args.no_compiled
    if args.quick:
        models, repeats, with_compiled = ["resnet18"], 5, False
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for model in models:
            rows += bench_model(model, device, repeats, with_compiled, args.only)
    write_csv(rows, args.out)
    markdown = render_markdown(rows, build_note)
    args.out.with_suffix(".md").write_text(markdown + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
