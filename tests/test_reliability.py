"""What happens when things go wrong, run as a user would: real training processes of scripts/train.py, real
signals (SIGSTOP, SIGTERM, SIGHUP, SIGKILL, submitit's SIGUSR2), real damaged files. See docs/reliability.md."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adamp_repro.errors import UsageError
from adamp_repro.tracking.records import read_csv_rows, read_provenance_segments, read_summary
from adamp_repro.tracking.run_lock import LOCK_FILE, RunFolderBusy, RunLock
from adamp_repro.train import run, run_dir_for
from adamp_repro.train.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    UNREADABLE_CHECKPOINT_NAME,
    CheckpointError,
)
from adamp_repro.train.runner import config_hash

from .conftest import PROJECT_ROOT, compose_config

TRAIN = str(PROJECT_ROOT / "scripts" / "train.py")
# Small enough for seconds per epoch on one thread, long enough to signal a run between its epochs. The
# code-change check has its own test; here an edit of the checkout during a long test must not refuse a resume.
ARGS = [
    "scale=smoke",
    "dataset=cifar10_mini",
    "logger=none",
    "scale.epochs=3",
    "scale.max_steps_per_epoch=4",
    "dataset.batch_size=32",
    "device=cpu",
    "progress=false",
    "threads=1",
    "optimizer=adamp",
    "allow_code_change=true",
]
COMPARED = ("final_eval_top1", "final_eval_loss", "final_train_loss", "final_mean_weight_norm")


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}


def _train(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, TRAIN, *ARGS, *extra, f"output_root={root}"],
        env=_env(),
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
    )


def _default_stop_signals() -> None:
    """In the child: SIGTERM and SIGHUP at their defaults, as in a terminal's session. A test run started under
    ``nohup`` inherits SIGHUP ignored, and a run rightly leaves an ignored signal ignored (``train.stopping``)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _start(root: Path, *extra: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, TRAIN, *prefix, *ARGS, *extra, f"output_root={root}"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        preexec_fn=_default_stop_signals,
    )


def _wait_for(root: Path, *names: str, timeout: float = 180.0) -> Path:
    """The run folder under ``root`` once it holds every file in ``names`` (the lock with its holder)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for lock in root.rglob(LOCK_FILE):
            run_dir = lock.parent
            holder = lock.read_text() if lock.exists() else ""
            if holder.startswith("pid ") and all((run_dir / n).exists() for n in names):
                return run_dir
        time.sleep(0.05)
    raise AssertionError(f"no run folder with {names} under {root} within {timeout}s")


def _holder_pid(run_dir: Path) -> int:
    return int((run_dir / LOCK_FILE).read_text().split()[1])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The summary of the same run, uninterrupted (in this process: on one thread the numbers are the same)."""
    threads = torch.get_num_threads()
    try:
        summary = run(compose_config([*ARGS, f"output_root={tmp_path_factory.mktemp('reference')}"]))
    finally:
        torch.set_num_threads(threads)
    assert summary["status"] == "completed"
    return summary


# ------------------------------------------------------------------------------------------------ the lock
def test_second_process_is_refused_then_sigterm_records_the_stop_and_the_rerun_resumes_exactly(
    tmp_path, reference
):
    root = tmp_path / "runs"
    first = _start(root)
    run_dir = _wait_for(root, CHECKPOINT_NAME)
    assert _holder_pid(run_dir) == first.pid
    os.kill(first.pid, signal.SIGSTOP)  # paused after its first checkpoint, still holding the folder
    try:
        second = _train(root)
        rows_before = read_csv_rows(run_dir / "metrics.csv")
    finally:
        os.kill(first.pid, signal.SIGTERM)
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"error: run folder {run_dir} is in use by pid {first.pid} on host " in second.stderr
    assert "Traceback" not in second.stderr
    assert "epoch 1:" not in second.stderr  # refused before any work
    first.wait(timeout=120)
    # SIGTERM: the run stops at a step boundary, records why, and ends as the signal would have ended it.
    assert first.returncode == -signal.SIGTERM, first.stderr[-3000:]
    stopped = read_summary(run_dir)
    assert stopped["status"] == "interrupted" and "SIGTERM" in stopped["error"]
    assert len(rows_before) >= 1 and not (run_dir / LOCK_FILE).exists()
    again = _train(root)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = read_summary(run_dir)
    assert resumed["status"] == "completed" and resumed["epochs"] == 3 and resumed["segments"] == 2
    for key in COMPARED:
        assert resumed[key] == reference[key], key
    assert [int(r["epoch"]) for r in read_csv_rows(run_dir / "metrics.csv")] == [0, 1, 2]
    segments = read_provenance_segments(run_dir)
    assert len(segments) == 2 and segments[1]["resumed_after_epoch"] >= 1
    assert segments[0]["src_hash"] and segments[0]["started_at"] <= segments[1]["started_at"]


def test_sighup_is_recorded_with_its_exit_status(tmp_path):
    root = tmp_path / "runs"
    proc = _start(root, "scale.epochs=20")
    run_dir = _wait_for(root)
    os.kill(proc.pid, signal.SIGHUP)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGHUP, proc.stderr.read()[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGHUP" in summary["error"]


def test_a_lock_dies_with_its_process(tmp_path):
    """The holder is named while alive; once SIGKILLed, its leftover lock file is simply taken over."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from adamp_repro.tracking.run_lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunFolderBusy, match=f"run folder {run_dir} is in use by pid {holder.pid} on host"
        ):
            RunLock(run_dir).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / LOCK_FILE).exists()  # SIGKILL left the file behind, but not the lock
    with RunLock(run_dir) as lock:
        assert lock.status == "held" and _holder_pid(run_dir) == os.getpid()
        with pytest.raises(RunFolderBusy):  # a second open file in the same process conflicts too
            RunLock(run_dir).acquire()
    assert not (run_dir / LOCK_FILE).exists()


def test_a_file_system_without_locks_is_said_loudly(smoke_cfg, monkeypatch, caplog):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    cfg = smoke_cfg(
        "optimizer=sgd", "scale.epochs=1", "diagnostics.enabled=false", "dataset.batch_size=32", "threads=1"
    )
    with caplog.at_level("WARNING", logger="adamp_repro"):
        summary = run(cfg)
    assert summary["status"] == "completed"
    assert read_summary(run_dir_for(cfg))["run_lock"].startswith("unavailable: ")
    assert any("NOT protected" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------- submitit requeue
def test_submitit_requeue_on_a_time_limit_resumes_from_the_checkpoint(tmp_path, reference):
    """Hydra's submitit_local launcher (a submitit LocalExecutor): SIGUSR2 to the job, as the local controller
    (or SLURM) sends it before a time limit, makes submitit's own handler requeue the job; the requeued job
    resumes from the run's checkpoint and ends with the uninterrupted run's numbers."""
    root, folder = tmp_path / "runs", tmp_path / "submitit"
    sweep = _start(
        root,
        "hydra/launcher=submitit_local",
        f"hydra.launcher.submitit_folder={folder}",
        "hydra.launcher.timeout_min=10",
        prefix=("-m",),
    )
    run_dir = _wait_for(root, CHECKPOINT_NAME)
    os.kill(_holder_pid(run_dir), signal.SIGUSR2)
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, err[-3000:]
    logs = "".join(p.read_text() for p in folder.rglob("*_log.*"))
    assert "Requeued job" in logs and "timed-out" in logs, logs[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["segments"] == 2
    assert read_provenance_segments(run_dir)[1]["resumed_after_epoch"] >= 1
    for key in COMPARED:
        assert summary[key] == reference[key], key


# ----------------------------------------------------------------------------- resume, in one process each
@pytest.fixture
def small_cfg(smoke_cfg):
    """``smoke_cfg`` on one thread with small batches (one thread is the fastest on a busy CPU)."""
    threads = torch.get_num_threads()
    yield lambda *overrides: smoke_cfg(
        "threads=1", "dataset.batch_size=32", "scale.eval_subset=64", *overrides
    )
    torch.set_num_threads(threads)


def _stop_after(monkeypatch, epochs: int) -> None:
    """Make the next run stop with Ctrl-C after ``epochs`` epochs (their checkpoints written)."""
    from adamp_repro.train import runner

    original = runner.Trainer.fit

    def fit_then_stop(self):
        planned, self.settings.epochs = self.settings.epochs, epochs
        try:
            original(self)
        finally:
            self.settings.epochs = planned
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Trainer, "fit", fit_then_stop)


def _interrupted_run(cfg, monkeypatch, epochs: int = 1) -> Path:
    with monkeypatch.context() as patch:
        _stop_after(patch, epochs)
        with pytest.raises(KeyboardInterrupt):
            run(cfg)
    run_dir = run_dir_for(cfg)
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and "SIGINT" in summary["error"]
    return run_dir


def test_resume_on_changed_code_is_refused_unless_allowed(small_cfg, monkeypatch):
    cfg = small_cfg("optimizer=sgdp")
    run_dir = _interrupted_run(cfg, monkeypatch)
    provenance = json.loads((run_dir / "provenance.json").read_text())
    provenance["segments"][-1]["src_hash"] = "0" * 16  # the first epoch ran other code
    (run_dir / "provenance.json").write_text(json.dumps(provenance))
    with pytest.raises(UsageError, match=r"refusing to resume .*allow_code_change=true.*resume=never") as err:
        run(cfg)
    assert "\n" not in str(err.value) and str(run_dir) in str(err.value)
    assert read_summary(run_dir)["status"] == "interrupted"  # refused before anything was written
    summary = run(small_cfg("optimizer=sgdp", "allow_code_change=true"))
    assert summary["status"] == "completed" and summary["code_changed_on_resume"] is True
    assert (
        summary["segments"] == 2
        and run_dir_for(small_cfg("optimizer=sgdp", "allow_code_change=true")) == run_dir
    )
    segments = read_provenance_segments(run_dir)
    assert [s["src_hash"] == "0" * 16 for s in segments] == [True, False]


def test_a_run_started_with_an_old_family_spelling_resumes_under_the_new(small_cfg, monkeypatch):
    """``dataset.family: cifar`` (before the rename to ``in_memory``): the same run folder, resumed."""
    old = small_cfg("optimizer=sgd", "dataset.family=cifar")
    run_dir = _interrupted_run(old, monkeypatch)
    assert "family: cifar" in (run_dir / "config.yaml").read_text()
    new = small_cfg("optimizer=sgd")
    assert new.dataset.family == "in_memory" and run_dir_for(new) == run_dir
    summary = run(new)
    assert summary["status"] == "completed" and summary["segments"] == 2
    assert summary["code_changed_on_resume"] is False


def test_old_single_dict_provenance_is_read_and_extended(small_cfg, monkeypatch):
    cfg = small_cfg("optimizer=sgd", "diagnostics.enabled=false", "allow_code_change=true")
    run_dir = _interrupted_run(cfg, monkeypatch)
    old = {"git_commit": "0" * 40, "git_dirty": False, "packages": {"torch": "2.4.0"}, "seed": 0}
    (run_dir / "provenance.json").write_text(json.dumps(old))
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["segments"] == 2
    segments = read_provenance_segments(run_dir)
    assert segments[0] == old and segments[1]["src_hash"]
    assert summary["code_changed_on_resume"] in (
        True,
        None,
    )  # other commit, or unknown where the tree is dirty


def test_unreadable_checkpoint_falls_back_to_the_previous_one_with_the_same_numbers(
    small_cfg, monkeypatch, tmp_path
):
    full = run(small_cfg("optimizer=sgdp", "scale.epochs=3", f"output_root={tmp_path}/full"))
    cfg = small_cfg("optimizer=sgdp", "scale.epochs=3", "allow_code_change=true")
    run_dir = _interrupted_run(cfg, monkeypatch, epochs=2)
    assert (run_dir / PREVIOUS_CHECKPOINT_NAME).is_file()
    (run_dir / CHECKPOINT_NAME).write_bytes(np.random.default_rng(0).bytes(4096))
    resumed = run(cfg)
    assert resumed["status"] == "completed"
    for key in (*COMPARED, "final_mean_filter_norm"):
        assert resumed[key] == full[key], key
    assert (run_dir / UNREADABLE_CHECKPOINT_NAME).is_file()
    assert read_provenance_segments(run_dir)[-1]["resumed_from"] == PREVIOUS_CHECKPOINT_NAME
    assert [int(r["epoch"]) for r in read_csv_rows(run_dir / "metrics.csv")] == [0, 1, 2]


def test_unreadable_checkpoint_without_a_previous_one_fails_in_one_line(small_cfg, monkeypatch):
    cfg = small_cfg("optimizer=sgd", "diagnostics.enabled=false", "allow_code_change=true")
    run_dir = _interrupted_run(cfg, monkeypatch)
    ckpt = run_dir / CHECKPOINT_NAME
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # truncated
    with pytest.raises(CheckpointError) as err:
        run(cfg)
    message = str(err.value)
    assert "\n" not in message and str(ckpt) in message and "resume=never" in message
    assert PREVIOUS_CHECKPOINT_NAME in message
    summary = read_summary(run_dir)
    assert summary["status"] == "failed" and summary["error"] == message
    again = run(small_cfg("optimizer=sgd", "diagnostics.enabled=false", "resume=never"))
    assert again["status"] == "completed" and again["segments"] == 1


def test_a_code_executing_checkpoint_is_refused_unexecuted(small_cfg, tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cfg = small_cfg("optimizer=sgd")
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True)
    torch.save({"epoch": 1, "model": Payload()}, run_dir / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*last.ckpt: UnpicklingError"):
        run(cfg)
    assert not marker.exists()
    assert read_summary(run_dir)["status"] == "failed"


def test_missing_or_short_csv_files_are_rebuilt_from_the_checkpoint(small_cfg, monkeypatch):
    cfg = small_cfg("optimizer=adamp", "scale.epochs=3", "allow_code_change=true")
    run_dir = _interrupted_run(cfg, monkeypatch, epochs=2)
    metrics = (run_dir / "metrics.csv").read_text()
    diagnostics = read_csv_rows(run_dir / "diagnostics.csv")
    (run_dir / "metrics.csv").unlink()
    lines = (run_dir / "diagnostics.csv").read_text().splitlines(keepends=True)
    (run_dir / "diagnostics.csv").write_text("".join(lines[: len(lines) // 3]))  # short
    assert run(cfg)["status"] == "completed"
    rebuilt = (run_dir / "metrics.csv").read_text().splitlines()
    assert rebuilt[: len(metrics.splitlines())] == metrics.splitlines() and len(rebuilt) == 4
    rows = read_csv_rows(run_dir / "diagnostics.csv")
    assert rows[: len(diagnostics)] == diagnostics
    assert {int(r["epoch"]) for r in rows} == {0, 1, 2}


# ---------------------------------------------------------------------------------------- data and config
def _image_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bad = root / "train" / "a" / "3.jpg"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[:600])  # a truncated JPEG
    return bad


def _tree_cfg(root: Path, **extra) -> dict:
    return {
        "name": "tiny",
        "family": "imagenet",
        "root": str(root),
        "num_classes": 2,
        "batch_size": 7,
        "eval_batch_size": 6,
        "crop_size": 8,
        "resize_size": 8,
        "rrc_scale": [0.5, 1.0],
        "rrc_ratio": [0.75, 1.33],
        "hflip": True,
        "interpolation": "bilinear",
        "num_workers": 0,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "label": "tiny",
        **extra,
    }


def test_an_unreadable_image_names_its_path_or_is_skipped_and_counted(tmp_path):
    from adamp_repro.data.image_folder import UnreadableImageError, build_loader_data

    bad = _image_tree(tmp_path)
    shard = dict(
        seed=0, train_subset=None, eval_subset=None, rank=0, world_size=1, device=torch.device("cpu")
    )
    data = build_loader_data(_tree_cfg(tmp_path), **shard)
    with pytest.raises(UnreadableImageError, match=f"cannot read image {bad}: .*skip_unreadable_images=true"):
        list(data.train_batches(0))
    workers = build_loader_data(_tree_cfg(tmp_path, num_workers=1), **shard)
    with pytest.raises(UnreadableImageError) as err:  # raised in a worker process: still one line
        list(workers.train_batches(0))
    assert str(err.value).startswith(f"cannot read image {bad}: ") and "\n" not in str(err.value)
    data = build_loader_data(_tree_cfg(tmp_path, skip_unreadable_images=True), **shard)
    (x, y), *rest = list(data.train_batches(0))
    assert not rest and x.shape[0] == len(y) == 6  # 7 drawn, the unreadable one left out
    assert data.take_skipped_images() == 1 and data.take_skipped_images() == 0
    assert sum(len(y) for _, y in data.eval_batches()) == 6 and data.take_skipped_images() == 0
    with pytest.raises(ValueError, match="skip_unreadable_images must be true or false"):
        build_loader_data(_tree_cfg(tmp_path, skip_unreadable_images="yes"), **shard)


def test_new_options_at_their_defaults_leave_the_run_hash_alone():
    # The dataset files now carry the option at its default; a record made before it existed (no such key)
    # must keep its folder, and only a value that changes the numbers may move it.
    base = compose_config(["dataset=imagenette"])
    assert base.dataset.skip_unreadable_images is False
    before = compose_config(["dataset=imagenette", "~dataset.skip_unreadable_images"])
    assert config_hash(before) == config_hash(base)
    assert config_hash(compose_config(["dataset=imagenette", "dataset.skip_unreadable_images=true"])) != (
        config_hash(base)
    )
    assert config_hash(compose_config(["allow_code_change=true"])) == config_hash(compose_config([]))
