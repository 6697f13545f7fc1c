"""Images/s of the shared trainer against a minimal hand-written PyTorch loop on the same model, data and batch
size, measured in one run (interleaved repeats), plus the data pipeline alone, and the trainer with the weight
diagnostics sampling every ``--diagnostics-every`` steps, with and without their angular updates (the
diagnostics' cost). Writes results/bench/trainer.csv and trainer.md. Not a test: timings depend on the machine.

    python scripts/bench_trainer.py [--model cifar_resnet20] [--steps 30] [--repeats 3] [--optimizer sgd]
        [--diagnostics-every 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adamp_repro.data import build_data
from adamp_repro.models import build_model
from adamp_repro.optim import build_optimizer
from adamp_repro.tracking.provenance import device_description
from adamp_repro.tracking.records import atomic_write_text, rows_to_csv
from adamp_repro.train.diagnostics import WeightDiagnostics
from adamp_repro.train.distributed import DistContext, resolve_device
from adamp_repro.train.tasks import ClassificationTask
from adamp_repro.train.trainer import Trainer, TrainerSettings

ROOT = Path(__file__).resolve().parents[1]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def bare_loop(model, optimizer, data, steps: int) -> float:
    """The minimal loop: forward, cross-entropy, backward, step. Returns images/s."""
    model.train()
    seen, started = 0, time.perf_counter()
    for i, (x, y) in enumerate(data.train_batches(0)):
        if i >= steps:
            break
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += y.numel()
    if x.is_cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def trainer_epoch(model, optimizer, data, steps: int, device, diagnostics=None) -> float:
    settings = TrainerSettings(epochs=1, max_steps_per_epoch=steps, checkpoint=False, progress=False)
    trainer = Trainer(
        model=model,
        optimizer=optimizer,
        task=ClassificationTask(),
        data=data,
        lr_factor=lambda step: 1.0,
        settings=settings,
        device=device,
        ctx=DistContext(),
        run_dir=None,
        seed=0,
        diagnostics=diagnostics,
    )
    return trainer._train_epoch(0)["images_per_s"]


def data_only(data, steps: int) -> float:
    seen, started = 0, time.perf_counter()
    for i, (_, y) in enumerate(data.train_batches(0)):
        if i >= steps:
            break
        seen += y.numel()
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="cifar_resnet20")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--diagnostics-every", type=int, default=50, help="the diagnostics' sampling cadence")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = compose(
        [f"model={args.model}", f"optimizer={args.optimizer}", f"dataset.batch_size={args.batch_size}"]
    )
    data = build_data(cfg.dataset, seed=0, device=device)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.num_classes, data.mean, data.std).to(device)
    optimizer = build_optimizer(cfg.optimizer, model)
    bare_loop(model, optimizer, data, 3)  # warm-up
    every = args.diagnostics_every
    watched = {
        f"trainer+diagnostics/{every}": True,
        f"trainer+diagnostics/{every} without angles": False,
    }
    results: dict[str, list[float]] = {"bare_loop": [], "trainer": [], **{k: [] for k in watched}}
    results["data_only"] = []
    for _ in range(args.repeats):  # interleaved so drift hits every variant alike
        results["bare_loop"].append(bare_loop(model, optimizer, data, args.steps))
        results["trainer"].append(trainer_epoch(model, optimizer, data, args.steps, device))
        for name, angles in watched.items():
            diag = WeightDiagnostics(model, optimizer, every_n_steps=every, angles=angles)
            results[name].append(trainer_epoch(model, optimizer, data, args.steps, device, diag))
        results["data_only"].append(data_only(data, args.steps))
    anchor = statistics.median(results["bare_loop"])
    rows = [
        {
            "variant": name,
            "model": args.model,
            "optimizer": args.optimizer,
            "batch_size": args.batch_size,
            "device": device_description(device),
            "images_per_s_median": statistics.median(vals),
            "ratio_vs_bare_loop": statistics.median(vals) / anchor,
            "repeats": args.repeats,
            "steps": args.steps,
        }
        for name, vals in results.items()
    ]
    out = Path(args.out)
    atomic_write_text(out / "trainer.csv", rows_to_csv(rows))
    lines = [
        "# Trainer throughput vs a bare PyTorch loop",
        "",
        f"{args.model}, {args.optimizer}, batch {args.batch_size}, {rows[0]['device']}; median of "
        f"{args.repeats} interleaved repeats of {args.steps} steps; trainer+diagnostics/N samples the weight "
        "diagnostics every N steps (and on the first step), with or without the angular updates.",
        "",
        "| variant | images/s | ratio vs bare loop |",
        "|---|---|---|",
    ]
    lines += [
        f"| {r['variant']} | {r['images_per_s_median']:.1f} | {r['ratio_vs_bare_loop']:.3f} |" for r in rows
    ]
    atomic_write_text(out / "trainer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
