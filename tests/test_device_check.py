"""scripts/device_check.py without a GPU: the one-line refusal, the plumbing on CPU (run in a fresh interpreter in
which hydra, omegaconf, wandb and the installed adamp cannot be imported, as on the bare GPU machine), a check
that raises or overruns its time limit not stopping the others, and files rewritten after every check.

The CUDA checks themselves run only on a GPU (`make device-check`); here they must skip cleanly.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_check.py"
# One worker builds this module's fixtures (make test runs pytest-xdist).
pytestmark = pytest.mark.xdist_group("device_check")

CUDA_ONLY = {"host_sync", "cuda_graph", "parity_compiled"}

# Run as `python -c GUARD scripts/device_check.py ARGS...`: hydra, omegaconf and wandb do not exist, and adamp
# exists only inside the wheel of scripts/wheels, so the run proves the script needs none of them installed.
GUARD = """
import importlib.abc, importlib.machinery, runpy, sys


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ("hydra", "omegaconf", "wandb", "adamp"):
            return None
        if top == "adamp":
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and ".whl" in (spec.origin or ""):
                return spec
        raise ImportError(f"{name} is blocked: the device check must run without it")

sys.meta_path.insert(0, Blocked())
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""


def load_script(monkeypatch):
    """The script as a module (it is an entry point, not part of the package)."""
    spec = importlib.util.spec_from_file_location("device_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def head_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git checkout)"


def system_python() -> str:
    """``python3`` from PATH outside .venv when it has torch and timm (as on the GPU machine), else ours."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    found = shutil.which("python3", path=path)
    if found:
        probe = subprocess.run([found, "-c", "import torch, timm, numpy"], capture_output=True, timeout=120)
        if probe.returncode == 0:
            return found
    return sys.executable


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def plumbing(tmp_path_factory):
    """One guarded CPU run of every check at --quick sizes: (completed process, md text, csv rows)."""
    out = tmp_path_factory.mktemp("bench")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    )
    env |= {"WANDB_MODE": "offline", "CUDA_VISIBLE_DEVICES": ""}  # CPU even on a GPU machine
    command = [system_python(), "-c", GUARD, str(SCRIPT), "--allow-cpu", "--threads", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    md, csv_path = out / "device_cpu_quick.md", out / "device_cpu_quick.csv"
    assert md.is_file() and csv_path.is_file(), done.stdout + done.stderr
    return done, md.read_text(), read_rows(csv_path)


def test_plumbing_runs_every_check_without_hydra_omegaconf_wandb_or_installed_adamp(
    plumbing, monkeypatch
) -> None:
    done, md, rows = plumbing
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = {row["check"]: row["status"] for row in rows}
    assert list(status) == [check.name for check in load_script(monkeypatch).CHECKS]
    assert {name for name, s in status.items() if s == "skip"} == CUDA_ONLY
    assert all(s == "pass" for name, s in status.items() if name not in CUDA_ONLY), status
    assert "wheel scripts/wheels/adamp-0.3.0-py3-none-any.whl" in md  # the oracle came from the wheel
    assert "needs a CUDA device" in md


def test_every_output_names_the_commit_and_carries_numbers(plumbing) -> None:
    _, md, rows = plumbing
    commit = head_commit()
    assert f"Commit `{commit}`" in md
    assert rows and {row["commit"] for row in rows} == {commit}
    assert all(len(row["src_sha256"]) == 16 for row in rows)
    parity = [row for row in rows if row["check"] == "parity_fp32"]
    assert len(parity) == 10  # 5 settings x the 2 CPU forms
    assert all(0.0 <= float(row["value"]) <= 1e-5 for row in parity)
    assert any(float(row["value"]) == 0.0 for row in parity if row["metric"].endswith("reference"))


def test_without_a_device_it_says_so_in_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys) -> None:
    module = load_script(monkeypatch)
    monkeypatch.setattr(module.torch.cuda, "is_available", lambda: False)
    assert module.main(["--out", str(tmp_path / "bench")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: no CUDA device") and captured.err.count("\n") == 1
    assert "--allow-cpu" in captured.err
    assert not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "parity_fp32", "nonsense"], "--only: unknown check(s) ['nonsense']"),
        (["--allow-cpu", "--parity-steps", "0"], "--parity-steps=0: expected a number >= 1"),
        (["--allow-cpu", "--parity-steps", "many"], "argument --parity-steps: invalid int value: 'many'"),
        (["--allow-cpu", "--bench-models", "resnet_typo"], "unknown timm model name(s) ['resnet_typo']"),
        (["--allow-cpu", "--mini-optimizers", "lion"], "--mini-optimizers: unknown optimizer(s) ['lion']"),
    ],
)
def test_bad_options_get_one_line(monkeypatch, tmp_path, capsys, argv, message) -> None:
    module = load_script(monkeypatch)
    assert module.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failing_or_overrunning_check_does_not_stop_the_others(monkeypatch, tmp_path) -> None:
    module = load_script(monkeypatch)
    monkeypatch.setenv("ADAMP_REPRO_FUSED_CPU", "0")  # what the CPU run sets, restored afterwards
    seen_during_run = {}

    def broken(ctx):
        raise RuntimeError("injected failure")

    def overrunning(ctx):
        md = next(tmp_path.glob("device_*.md"))  # written as soon as the first check ended
        seen_during_run["md"] = md.read_text()
        time.sleep(30)

    def fine(ctx):
        return module.Outcome("pass", "still ran", [module.Metric("answer", 42, "count")])

    replaced = {
        "parity_fp32": (broken, 60),
        "parity_channels_last": (overrunning, 0.5),
        "step_speed": (fine, 60),
    }
    checks = tuple(
        dataclasses.replace(c, run=replaced[c.name][0], timeout_s=replaced[c.name][1])
        if c.name in replaced
        else c
        for c in module.CHECKS
    )
    monkeypatch.setattr(module, "CHECKS", checks)
    started = time.monotonic()
    status = module.main(["--allow-cpu", "--out", str(tmp_path), "--only", *replaced])
    assert status == 1
    assert time.monotonic() - started < 25  # the sleeping check was stopped at its limit
    rows = {row["check"]: row for row in read_rows(next(tmp_path.glob("device_*.csv")))}
    assert rows["parity_fp32"]["status"] == "error"
    assert "RuntimeError: injected failure" in rows["parity_fp32"]["verdict"]
    assert rows["parity_channels_last"]["status"] == "error"
    assert "time limit" in rows["parity_channels_last"]["verdict"]
    assert rows["step_speed"]["status"] == "pass" and rows["step_speed"]["value"] == "42"
    assert "| parity_fp32 | error |" in seen_during_run["md"]
    assert "| step_speed | pending |" in seen_during_run["md"]
    md = next(tmp_path.glob("device_*.md")).read_text()
    assert "| step_speed | pass |" in md and "pending" not in md
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left behind


def test_the_wheel_is_the_official_adamp_0_3_0() -> None:
    wheel = ROOT / "scripts" / "wheels" / "adamp-0.3.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("adamp-0.3.0.dist-info/METADATA").decode()
    assert {"adamp/__init__.py", "adamp/adamp.py", "adamp/sgdp.py"} <= names
    assert "Version: 0.3.0" in metadata
