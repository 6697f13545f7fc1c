"""What produced a run: code version, packages, device, seed and determinism settings (no hostname).

The code version is the git commit and dirty flag where the package sits in a checkout, and always a content
hash of the installed package's files (``source_hash``), so a pip install without git is covered too and a
resume on changed code can be told apart from one on the same code.

``cpu`` names the host CPU type (``cpu_description``): its model, the kernel level torch dispatches to
(``torch.backends.cpu.get_cpu_capability``) and the vector instruction sets it has. The same config and seed give
bit-identical numbers on the same CPU type; another type may pick other kernels that round differently, so a
comparison of records (``make reproduce-table``) says when the CPUs differ.
"""

from __future__ import annotations

import datetime
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from adamp_repro.paths import PACKAGE_DIR

PACKAGES = ("torch", "torchvision", "timm", "hydra-core", "omegaconf", "wandb", "pandas", "numpy", "adamp")


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit hash and dirty flag of the checkout holding ``cwd`` (the package folder by default)."""
    cwd = Path(cwd or PACKAGE_DIR)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def source_hash(package_dir: str | Path | None = None) -> str:
    """SHA-256 (16 hex digits) of every file of the installed ``adamp_repro`` package (paths and contents;
    byte-code caches left out)."""
    root = Path(package_dir or PACKAGE_DIR)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or path.suffix in (".pyc", ".pyo"):
            continue
        digest.update(rel.as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


# The vector instruction sets that decide which CPU kernels torch and oneDNN pick (``/proc/cpuinfo`` flags).
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
)  # fmt: skip


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, Any]:
    """The host CPU type: ``model`` (the first ``model name`` of ``cpuinfo``, else ``platform.processor()``),
    ``capability`` (torch's CPU kernel level, e.g. ``AVX512``) and ``isa`` (the ``ISA_FLAGS`` it has)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():  # the first processor's block
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "isa": [flag for flag in ISA_FLAGS if flag in flags],
    }


def collect_provenance(device: torch.device, seed: int, world_size: int) -> dict[str, Any]:
    return {
        **git_state(),
        "src_hash": source_hash(),
        "started_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "packages": package_versions(),
        "python": platform.python_version(),
        "device": device_description(device),
        "cpu": cpu_description(),
        "world_size": world_size,
        "seed": seed,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
    }
