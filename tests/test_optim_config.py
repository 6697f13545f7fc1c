"""Optimizers by config: a file may name any class (``_target_``) or a timm optimizer (``timm:``), variants are
files too (SGDP / AdamP with the projection off), and a user's own config folder joins through Hydra's search
path.

- every such file in configs/optimizer composes, validates and builds the class it names, with its values;
- a bad class, name, keyword or value is refused before any work in one line naming it;
- ``projection=False`` is momentum SGD / AdamW with the same decoupled decay, and the official class at
  delta=0 (whose test never passes), on replayed gradients; the default path is untouched;
- a one-off run (no recipe entry for its optimizer) records that it used the optimizer file's own values;
- ``scripts/train.py hydra.searchpath=[file://...] optimizer=<user's file>`` trains in a real subprocess, and
  ``reproduce_table.py --optimizers`` puts a user's optimizer on a catalogue table.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import adamp
import pytest
import timm.optim
import torch
from omegaconf import OmegaConf
from torch import nn

from adamp_repro.config import validate_config
from adamp_repro.errors import ConfigError
from adamp_repro.optim import OPTIMIZERS, SGDP, AdamP, build_optimizer
from adamp_repro.optim.factory import SOURCE_KEYS, SUITE_KEYS
from adamp_repro.train.runner import NO_RECIPE_ENTRY, optimizer_values

from .conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

pytestmark = pytest.mark.usefixtures("one_thread")

FILES = {path.stem: OmegaConf.load(path) for path in sorted((CONFIG_DIR / "optimizer").glob("*.yaml"))}
EXTERNAL = sorted(name for name, raw in FILES.items() if any(key in raw for key in SOURCE_KEYS))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)
    )


def _step(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    optimizer.zero_grad()
    model(torch.randn(4, 3, 6, 6)).square().mean().backward()
    optimizer.step()


def test_the_catalogue_has_the_variants_and_the_timm_examples():
    assert {"sgdp_noproj", "adamp_noproj", "lion", "lamb"} <= set(EXTERNAL)
    # The registered files stay exactly as they were: no _target_ (it would enter every run's hash).
    assert sorted(set(FILES) - set(EXTERNAL)) == sorted(OPTIMIZERS)


@pytest.mark.parametrize("name", EXTERNAL)
def test_external_file_composes_validates_builds_and_steps(name):
    raw = FILES[name]
    assert raw.name == name and not all(key in raw for key in SOURCE_KEYS)
    cfg = compose_config([f"optimizer={name}", "scale=smoke"])
    validate_config(cfg)
    values = OmegaConf.to_container(cfg.optimizer, resolve=True)
    model = _model()
    # A decay of the scale-invariant weights' own needs their names (the trainer passes them); here: the 2-d weights.
    invariant = [n for n, p in model.named_parameters() if p.ndim > 1]
    optimizer = build_optimizer(cfg.optimizer, model, invariant)
    if "_target_" in values:
        module, _, cls = values["_target_"].rpartition(".")
        assert type(optimizer) is getattr(importlib.import_module(module), cls)
    else:
        assert type(optimizer) is timm.optim.get_optimizer_info(values["timm"]).opt_class
    for key, value in values.items():
        if key in SUITE_KEYS:
            continue
        expected = tuple(value) if key == "betas" else value
        assert optimizer.defaults[key] == expected, key
    decays = [values["weight_decay"]]
    if values.get("scale_invariant_weight_decay") is not None:
        decays.append(values["scale_invariant_weight_decay"])
    assert [g["weight_decay"] for g in optimizer.param_groups] == decays
    before = [p.detach().clone() for p in model.parameters()]
    _step(optimizer, model)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_target_form_takes_any_optimizer_class_and_the_suites_keys():
    cfg = {
        "name": "rms",
        "_target_": "torch.optim.RMSprop",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "alpha": 0.9,
        "no_decay_bias_norm": True,
        "foreach": None,
    }
    model = _model()
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.RMSprop and optimizer.defaults["alpha"] == 0.9
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]  # no_decay_bias_norm honoured
    _step(optimizer, model)
    # foreach: null and weight_decay 0 are not passed to a class that takes neither (LBFGS).
    lbfgs = {"name": "x", "_target_": "torch.optim.LBFGS", "lr": 1.0, "foreach": None, "weight_decay": 0.0}
    assert type(build_optimizer(lbfgs, model)) is torch.optim.LBFGS


def _refusal(overrides: list[str]) -> str:
    cfg = compose_config(["scale=smoke", *overrides])
    with pytest.raises(ConfigError) as caught:
        validate_config(cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimizer=lion", "optimizer.timm=lionn"], "optimizer.timm='lionn': not a timm optimizer name"),
        (["optimizer=lion", "optimizer.timm=lionn"], "close matches: ['lion'"),
        (
            ["optimizer=sgdp_noproj", "optimizer._target_=torch.optim.Nope"],
            "optimizer._target_='torch.optim.Nope': 'Nope' in torch.optim is not found; expected a "
            "torch.optim.Optimizer subclass",
        ),
        (["optimizer=sgdp_noproj", "optimizer._target_=nopkg.Opt"], "cannot import 'nopkg'"),
        (["optimizer=sgdp_noproj", "optimizer._target_=torch.nn.Linear"], "not an optimizer class"),
        (
            ["optimizer=lion", "+optimizer.betaz=1"],
            "optimizer.betaz=1: not a keyword of Lion (timm='lion'); did",
        ),
        (["optimizer=lion", "+optimizer._target_=torch.optim.SGD"], "expected one of them"),
        (["optimizer=lion", "optimizer.betas=[0.9,1.5]"], "optimizer (timm='lion'): the class refuses these"),
        (["optimizer=lion", "optimizer.lr=-1"], "optimizer.lr=-1: expected a finite number >= 0"),
        (["optimizer=adamp_noproj", "optimizer.projection=maybe"], "Invalid projection: 'maybe'"),
        (
            ["optimizer=sgdp_noproj", "optimizer._target_=torch.optim.LBFGS", "optimizer.weight_decay=0.1"],
            "takes no weight_decay",
        ),
        (["optimizer=sgd", "optimizer.name=sgdx"], "or a config that names its class (_target_"),
    ],
)
def test_bad_class_name_or_value_is_refused_in_one_line(overrides, expected):
    assert expected in _refusal(overrides)


# --- the projection switch ----------------------------------------------------------------------------------


def _replay(make, steps: int = 20) -> torch.Tensor:
    """Final weights after ``steps`` steps on a fixed gradient sequence (replayed: no training feedback, so
    rounding differences stay rounding differences)."""
    model = _model()
    params = list(model.parameters())
    optimizer = make(params)
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in params])


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    return bool(((a - b).abs().max() / b.abs().max()) < rtol)


@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgdp_without_projection_is_momentum_sgd(foreach, nesterov):
    kwargs = dict(lr=0.1, momentum=0.9, nesterov=nesterov)
    ours = _replay(lambda ps: SGDP(ps, **kwargs, projection=False, foreach=foreach))
    assert _close(ours, _replay(lambda ps: torch.optim.SGD(ps, **kwargs)), 1e-6)
    # With decay: the official class at delta=0 (its test max|cos| < 0 never passes); bit for bit in the
    # reference form, which follows the official operation order.
    decayed = dict(kwargs, weight_decay=5e-3)
    ours = _replay(lambda ps: SGDP(ps, **decayed, projection=False, foreach=foreach))
    official = _replay(lambda ps: adamp.SGDP(ps, **decayed, delta=0.0))
    assert torch.equal(ours, official) if foreach is False else _close(ours, official, 1e-6)
    assert not _close(_replay(lambda ps: SGDP(ps, **decayed, foreach=foreach)), official, 1e-3)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_adamp_without_projection_is_adamw(foreach):
    kwargs = dict(lr=1e-2, weight_decay=0.1)
    ours = _replay(lambda ps: AdamP(ps, **kwargs, projection=False, foreach=foreach))
    assert _close(ours, _replay(lambda ps: torch.optim.AdamW(ps, **kwargs)))
    official = _replay(lambda ps: adamp.AdamP(ps, **kwargs, delta=0.0))
    if foreach is False:
        assert torch.equal(ours, official)
    elif foreach is True:  # the never-projected update is torch's fused AdamW kernel itself
        assert torch.equal(ours, _replay(lambda ps: torch.optim.AdamW(ps, **kwargs, fused=True)))
    assert _close(ours, official)
    assert not _close(_replay(lambda ps: AdamP(ps, **kwargs, foreach=foreach)), official, 1e-3)


@pytest.mark.parametrize("cls", [SGDP, AdamP])
def test_projection_defaults_on_and_old_state_dicts_load(cls):
    model = _model()
    optimizer = cls(model.parameters(), lr=0.1)
    assert optimizer.defaults["projection"] is True
    _step(optimizer, model)
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        del group["projection"]  # a checkpoint written before the option existed
    fresh = cls(model.parameters(), lr=0.1)
    fresh.load_state_dict(state)
    assert all(group["projection"] is True for group in fresh.param_groups)
    _step(fresh, model)


# --- one-off runs and a user's own config folder ------------------------------------------------------------


def test_where_the_optimizer_values_come_from_is_named():
    assert optimizer_values(compose_config(["experiment=mini_mechanism", "optimizer=sgdp"])) == "recipe.sgdp"
    assert (
        optimizer_values(compose_config(["experiment=mini_mechanism", "optimizer=lion"])) == NO_RECIPE_ENTRY
    )
    assert optimizer_values(compose_config(["optimizer=adamp"])) == NO_RECIPE_ENTRY  # recipe: {}


def _user_folder(tmp_path):
    folder = tmp_path / "my_configs"
    (folder / "optimizer").mkdir(parents=True)
    (folder / "optimizer" / "my_rms.yaml").write_text(
        "name: my_rms\n_target_: torch.optim.RMSprop\nlr: 1.0e-3\nweight_decay: 0.0\nalpha: 0.99\n"
        "eps: 1.0e-8\nmomentum: 0.0\ncentered: false\nno_decay_bias_norm: false\nforeach: null\n"
    )
    (folder / "optimizer" / "my_lion.yaml").write_text(
        "name: my_lion\ntimm: lion\nlr: 1.0e-4\nweight_decay: 0.0\nbetas: [0.9, 0.99]\n"
        "no_decay_bias_norm: false\nforeach: null\n"
    )
    return folder


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def run_script(script: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """``scripts/<script> args`` in a real process from the project root, one OpenMP thread, no W&B."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / script), *args],
        cwd=PROJECT_ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def test_a_users_config_folder_joins_through_the_search_path(tmp_path):
    folder = _user_folder(tmp_path)
    result = run_script(
        "train.py",
        f"hydra.searchpath=[file://{folder}]",
        "optimizer=my_rms",
        "scale=smoke",
        "logger=none",
        "device=cpu",
        "threads=1",
        "progress=false",
        f"output_root={tmp_path / 'runs'}",
        timeout=300,
    )
    assert_succeeded(result)
    (summary_path,) = (tmp_path / "runs").rglob("summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "completed" and summary["optimizer"] == "my_rms"
    assert summary["optimizer_values"] == NO_RECIPE_ENTRY
    assert "optimizer my_rms: values from optimizer file (no recipe entry)" in result.stdout + result.stderr
    assert "_target_: torch.optim.RMSprop" in (summary_path.parent / "config.yaml").read_text()


def test_optimizers_option_of_reproduce_table(tmp_path):
    folder = _user_folder(tmp_path)
    dry = ("--scale", "smoke", "--seeds", "1", "--dry-run", "--optimizers")
    result = run_script("reproduce_table.py", *dry, "adamp,lion", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "experiment=mini_mechanism seed=0 optimizer=adamp,lion " in result.stdout
    assert (
        "experiment=mini_mechanism_vanilla seed=0 optimizer=sgd " in result.stdout
    )  # its own optimizers_for
    assert "no recipe.lion: lion runs with its optimizer file's own values" in result.stdout
    refused = run_script("reproduce_table.py", *dry, "adamp,lino", timeout=120)
    assert refused.returncode == 2 and "unknown optimizer(s) ['lino'] in --optimizers" in refused.stderr
    user = run_script(
        "reproduce_table.py", *dry, "adamp,my_lion", "--", f"hydra.searchpath=[file://{folder}]", timeout=120
    )
    assert user.returncode == 0 and "optimizer=adamp,my_lion " in user.stdout


def test_a_users_optimizer_against_adamp_on_the_default_table(tmp_path):
    """The documented comparison end to end (three smoke runs and the tables, about 45 s)."""
    folder = _user_folder(tmp_path)
    result = run_script(
        "reproduce_table.py",
        *("--scale", "smoke", "--seeds", "1", "--optimizers", "adamp,my_lion", "--no-figures"),
        *("--out", str(tmp_path / "out"), "--"),
        f"hydra.searchpath=[file://{folder}]",
        "threads=1",
        "scale.max_steps_per_epoch=2",
        timeout=600,
    )
    assert_succeeded(result)
    summaries = {
        (s["table_block"], s["optimizer"]): s
        for s in (json.loads(p.read_text()) for p in (tmp_path / "out" / "runs").rglob("summary.json"))
    }
    assert sorted(summaries) == [("momentum", "adamp"), ("momentum", "my_lion"), ("vanilla", "sgd")]
    assert {s["status"] for s in summaries.values()} == {"completed"}
    assert summaries[("momentum", "adamp")]["optimizer_values"] == "recipe.adamp"
    assert summaries[("momentum", "my_lion")]["optimizer_values"] == NO_RECIPE_ENTRY
    assert "| my_lion |" in (tmp_path / "out" / "tables" / "mechanism.md").read_text()
