"""AutoAttack (Croce & Hein, ICML 2020, arXiv 2003.01690) through its reference package, ``pyautoattack`` 0.2.0.

AutoAttack is the evaluation RobustBench runs for every leaderboard entry: an ensemble of parameter-free attacks,
each run only on the samples the previous ones did not fool, so a sample counts as robust only if every attack
failed on it. Single-attack PGD numbers overstate robustness where the loss surface masks gradients; AutoAttack's
targeted and black-box members catch most of those cases.

Versions (``pyautoattack.AutoAttack(version=...)``):

- ``standard``: APGD-CE (100 iterations, 1 restart), APGD-T (targeted DLR loss, 9 target classes), FAB-T (9
  targets) and Square (5,000 queries): the RobustBench protocol.
- ``plus``: every attack with more restarts; ``rand``: APGD-CE and APGD-DLR with 20-step EOT (randomised models).
- ``custom``: the listed ``attacks`` only, with the settings ``standard`` gives them (1 APGD restart, 9 target
  classes), so ``["apgd-ce", "apgd-t"]`` is the first half of ``standard``, and ``standard`` can only be lower.

Contract (the same as ``attacks.PGD``'s; checked by tests/test_autoattack.py): the model takes [0, 1] inputs with
its normalisation inside; it attacks in eval mode and every module's flag is put back; parameters are frozen while
it runs (FAB calls ``backward``, which would otherwise add into ``.grad``), so ``.grad`` and ``requires_grad`` come
back unchanged; torch's global RNG (which the package reseeds with ``seed``) and the Python trace function (which
its dynamic-defence check replaces) are restored. The package's own sanity checks log warnings; each is recorded
as a flag (``WARNING_FLAGS``), and our own check flags any example outside the threat set.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from adamp_repro.train.attacks import NORMS, module_modes, unwrap

AA_VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_PACKAGE_NORM = {"linf": "Linf", "l2": "L2"}
_PACKAGE_LOGGER = "auto-attack"

# The attacks each fixed version runs, in order, as pyautoattack 0.2.0's AutoAttack._set_version sets them
# (tests/test_autoattack.py checks that the package agrees).
VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}

# flag -> (texts that identify the warning in pyautoattack 0.2.0's checks.py, what it means for the number).
WARNING_FLAGS: dict[str, tuple[tuple[str, ...], str]] = {
    "randomized": (("randomized defense",), "outputs differ between identical forwards (use version 'rand')"),
    "probability_output": (("probability distribution",), "the model returns probabilities, not logits"),
    "dynamic": (("dynamic defense",), "the forward pass computes gradients itself"),
    "n_classes": (
        ("with only", "target classes"),
        "too few classes for the DLR loss or for 9 target classes",
    ),
    "zero_gradients": (
        ("zero gradient",),
        "some samples have an all-zero input gradient (gradient masking?)",
    ),
    "square_stronger": (
        ("Square Attack has decreased",),
        "the black-box Square attack fooled samples the gradient attacks missed: gradient masking",
    ),
    "outside_threat_set": ((), "our check: an example lies outside the eps ball or the [0, 1] box"),
    "other": ((), "any other warning the package logged"),
}


@dataclass
class AutoAttackResult:
    """What one AutoAttack run returns. ``correct``: (B,) bool, top-1 on ``x_adv`` equals the label (eval mode)."""

    x_adv: Tensor
    correct: Tensor
    seconds: float
    flags: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WARNING_FLAGS, 0))
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AutoAttack:
    """``__call__(model, x, y)`` runs ``pyautoattack.AutoAttack`` on images ``x`` in [0, 1] and labels ``y``.

    Args:
        norm: threat model, ``"linf"`` or ``"l2"``.
        eps: radius of the threat ball in [0, 1] pixel units, >= 0.
        version: one of ``AA_VERSIONS`` (see the module docstring).
        attacks: the attacks of version ``custom``, a non-empty subset of ``AA_ATTACKS``; None otherwise.
        seed: seeds every member attack's random starts (the package reseeds torch's RNG; ours is restored).
        batch_size: samples per attack batch; changes only which random starts a sample gets.
    """

    norm: str
    eps: float
    version: str = "standard"
    attacks: tuple[str, ...] | None = None
    seed: int = 0
    batch_size: int = 250

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"Invalid autoattack norm: {self.norm!r}; expected one of {NORMS}")
        if (
            isinstance(self.eps, bool)
            or not isinstance(self.eps, numbers.Real)
            or not 0 <= self.eps < math.inf
        ):
            raise ValueError(f"Invalid autoattack eps: {self.eps!r}; expected a finite number >= 0")
        object.__setattr__(self, "eps", float(self.eps))
        if self.version not in AA_VERSIONS:
            raise ValueError(f"Invalid autoattack version: {self.version!r}; expected one of {AA_VERSIONS}")
        if self.version == "custom":
            attacks = tuple(self.attacks or ())
            unknown = [a for a in attacks if a not in AA_ATTACKS]
            if not attacks or unknown or len(set(attacks)) != len(attacks):
                raise ValueError(
                    f"Invalid autoattack attacks: {self.attacks!r}; version 'custom' needs a list of distinct "
                    f"names from {AA_ATTACKS}"
                )
            object.__setattr__(self, "attacks", attacks)
        elif self.attacks is not None:
            raise ValueError(
                f"Invalid autoattack attacks: {self.attacks!r}; only version 'custom' takes a list "
                f"(version {self.version!r} fixes its own), so set it to null"
            )
        for name, low in (("seed", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"Invalid autoattack {name}: {value!r}; expected an integer >= {low}")

    @property
    def attack_names(self) -> tuple[str, ...]:
        """The attacks this version runs, in order."""
        return self.attacks if self.attacks is not None else VERSION_ATTACKS[self.version]

    def describe(self) -> dict[str, Any]:
        """Every setting, for ``summary.json``."""
        return {
            "package": "pyautoattack 0.2.0 (reference implementation of Croce & Hein, ICML 2020)",
            "norm": self.norm,
            "eps": self.eps,
            "eps_x255": round(self.eps * 255, 6),
            "version": self.version,
            "attacks": list(self.attack_names),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "model_mode": "eval",
            "box": [0.0, 1.0],
            "counts_as_robust": "correct on AutoAttack's example alone (not combined with other attacks)",
        }

    def _adversary(self, net: nn.Module, device: torch.device | str = "cpu") -> Any:
        from pyautoattack import AutoAttack as PackageAutoAttack

        custom = self.version == "custom"
        adversary = PackageAutoAttack(
            net,
            attacks=list(self.attacks) if custom else None,
            device=device,
            eps=self.eps,
            norm=_PACKAGE_NORM[self.norm],
            seed=self.seed,
            version=self.version,
        )
        if custom:  # the member settings of `standard` (the package leaves 5 APGD restarts for `custom`)
            adversary.apgd.n_restarts = adversary.fab.n_restarts = 1
            adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 9
        return adversary

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> AutoAttackResult:
        """Attack ``(x, y)``: x (B, ...) in [0, 1], y (B,) integer labels."""
        # Contiguous: the package's zero-gradient check calls .view on the input gradient, which fails for a
        # channels_last (or any permuted) layout.
        x, net = x.detach().contiguous(), unwrap(model)
        if x.shape[0] == 0:
            return AutoAttackResult(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device), 0.0)
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with (
            module_modes(net, False),
            frozen_parameters(net),
            torch.random.fork_rng(devices=devices),
            _kept_trace_function(),
            _captured_warnings() as messages,
        ):
            _reset_dynamic_check_counters()
            adversary = self._adversary(net, x.device)
            started = time.perf_counter()
            x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=self.batch_size)
            seconds = time.perf_counter() - started
            with torch.no_grad():
                correct = net(x_adv).argmax(dim=1).eq(y)
        result = AutoAttackResult(x_adv.detach(), correct, seconds, messages=list(messages))
        for message in messages:
            result.flags[_flag_of(message)] += 1
        result.flags["outside_threat_set"] = int(not self._inside_threat_set(x_adv, x))
        return result

    def _inside_threat_set(self, x_adv: Tensor, x: Tensor) -> bool:
        delta = (x_adv - x).flatten(1)
        size = delta.abs().amax(dim=1) if self.norm == "linf" else torch.linalg.vector_norm(delta, dim=1)
        in_box = bool(x_adv.min() >= 0.0) and bool(x_adv.max() <= 1.0)
        # float32 rounding of x + delta and of the package's l2 rescale: a relative 1e-5 and 1e-6 absolute.
        return in_box and bool(size.max() <= self.eps * (1 + 1e-5) + 1e-6)


@contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Parameters do not require grad inside the block; each flag is put back afterwards.

    Attacks need only the input's gradient; with the parameters frozen a ``backward`` inside an attack cannot add
    into ``.grad`` (an attack may run between a training backward and its optimizer step), and it is faster.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _kept_trace_function() -> Iterator[None]:
    # The package's dynamic-defence check calls sys.settrace(tracer) and then sys.settrace(None): that would
    # switch off a debugger or coverage measurement for the rest of the process.
    previous = sys.gettrace()
    try:
        yield
    finally:
        sys.settrace(previous)


def _reset_dynamic_check_counters() -> None:
    # pyautoattack 0.2.0 counts calls named grad/backward in a module-level dict that it never resets, so one
    # model flagged as a dynamic defence would flag every later model of the process.
    from pyautoattack import checks

    for name in checks.funcs:
        checks.funcs[name] = 0


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]):
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Messages the package logs at WARNING or above (its checks report through its ``auto-attack`` logger).

    They still reach the root logger, so a user sees them as they happen.
    """
    logger = logging.getLogger(_PACKAGE_LOGGER)
    messages: list[str] = []
    handler, level = _ListHandler(messages), logger.level
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _flag_of(message: str) -> str:
    for flag, (needles, _) in WARNING_FLAGS.items():
        if any(needle in message for needle in needles):
            return flag
    return "other"
