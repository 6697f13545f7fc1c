"""Adversarial training (PGD) and robust evaluation: the task behind project-page table P4a.

Protocol (docs/paper.md §3; the codebase the page links, louis2889184/pytorch-adversarial-
training @ 4c18cef): every training batch is replaced by its PGD-10 adversarial examples (random start, crafted
with the model in ``train_attack.bn_mode``) and the loss is the mean cross-entropy on the adversarial batch only.
"Standard Acc" is top-1 on clean test images; "Attacked Acc" is top-1 under the same PGD without random start.
All numbers (norm, eps, steps, step sizes, BN mode, AutoAttack and the eps sweep) come from
``configs/task/adversarial.yaml``; the scale sets only how many test samples the final checks attack.

Evaluation metrics (``evaluate`` returns SUMS; ``sum / denominator`` is the metric, accuracies in percent):

=================================  ====================  ==================================================
key                                denominator           meaning
=================================  ====================  ==================================================
``clean_top1``                     ``count``             top-1 on clean inputs ("Standard Acc")
``robust_top1``                    ``count``             top-1 on ``eval_attack`` examples ("Attacked Acc")
``loss``, ``robust_loss``          ``count``             cross-entropy on clean / ``eval_attack`` inputs
``autoattack_top1``                ``autoattack_images`` top-1 on AutoAttack's examples alone (not in the
                                                         paper; the number RobustBench reports)
``autoattack_subset_clean_top1``   ``autoattack_images`` clean top-1 on the same samples
``autoattack_subset_robust_top1``  ``autoattack_images`` ``eval_attack`` top-1 on the same samples, so
                                                         AutoAttack and PGD-10 compare sample for sample
``autoattack_s_per_1000_images``   ``autoattack_images`` AutoAttack's wall time per 1,000 samples
``autoattack_warn_<flag>``         ``autoattack_runs``   1 where AutoAttack's own check (or ours) warned
``eps_sweep_<i>_top1``             ``eps_sweep_images``  top-1 under the sweep's attack at ``eps_sweep.eps[i]``
``autoattack_images``, ...         -                     samples attacked; ``autoattack_runs``: runs (ranks)
=================================  ====================  ==================================================

AutoAttack and the sweep run only at ``evaluate(..., final=True)`` (the trainer's last evaluation), on the first
``subset`` evaluation samples; their keys are then present on every rank (zeros where a rank attacked nothing),
so the all-reduce sees the same keys everywhere.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from adamp_repro.data.sharding import make_generator
from adamp_repro.errors import ConfigError, plain_config
from adamp_repro.tracking.schema import (
    AUTOATTACK_SUBSET_ROBUST_TOP1,
    AUTOATTACK_TOP1,
    CLEAN_TOP1,
    LOSS,
    ROBUST_LOSS,
    ROBUST_TOP1,
)
from adamp_repro.train.attacks import PGD, module_modes
from adamp_repro.train.autoattack import WARNING_FLAGS, AutoAttack
from adamp_repro.train.tasks.base import (
    CLASSIFIER_TRAIN_METRICS,
    ClassifierTaskBase,
)

log = logging.getLogger("adamp_repro")

# Random-stream tag for the training attack's random starts; distinct from the data streams of
# adamp_repro.data.sharding (0, 1, 2), so the starts are independent of the sample order and augmentation.
STREAM_ATTACK_START = 167

_ATTACK_KEYS = ("steps", "step_size", "step_rule", "random_start", "restarts")
_TRAIN_KEYS = (*_ATTACK_KEYS, "bn_mode")
_EVAL_KEYS = (*_ATTACK_KEYS, "keep_best")
_AUTOATTACK_KEYS = ("enabled", "version", "attacks", "subset", "batch_size")
_SWEEP_KEYS = ("enabled", "eps_factors", "version", "attacks", "subset", "batch_size")
_TOP_KEYS = ("name", "norm", "eps", "eval_seed", "train_attack", "eval_attack", "autoattack", "eps_sweep")
_BASE_METRICS = (CLEAN_TOP1, ROBUST_TOP1, LOSS, ROBUST_LOSS, "count")
_AA_RATES = (
    AUTOATTACK_TOP1,
    "autoattack_subset_clean_top1",
    AUTOATTACK_SUBSET_ROBUST_TOP1,
    "autoattack_s_per_1000_images",
)


@dataclasses.dataclass(frozen=True)
class EpsSweep:
    """Robust accuracy of the final model under ``attack`` at ``eps_factors`` x the task's eps (0 = clean)."""

    attack: AutoAttack
    eps_factors: tuple[float, ...]
    subset: int | None

    @property
    def eps(self) -> list[float]:
        return [factor * self.attack.eps for factor in self.eps_factors]

    def keys(self) -> list[str]:
        return [f"eps_sweep_{i}_top1" for i in range(len(self.eps_factors))]


class AdversarialTask(ClassifierTaskBase):
    """PGD adversarial training; clean, PGD and AutoAttack accuracy on evaluation (see the module docstring).

    Args:
        train_attack: crafts the training batches (its ``bn_mode`` is the logged BN mode of training attacks).
        eval_attack: the paper's evaluation attack; must craft in ``bn_mode="eval"``.
        autoattack: the final AutoAttack check, or None to skip it.
        autoattack_subset: it runs on the first ``autoattack_subset`` evaluation samples (None: all). Under DDP
            each rank attacks its first ``ceil(subset / world_size)``; with the strided evaluation shards of
            ``adamp_repro.data.sharding.eval_shard`` these are the global first samples.
        eps_sweep: the final eps sweep (same subset rule), or None.
        eval_seed: seeds every evaluation attack's random starts afresh at every ``evaluate`` call (AutoAttack's
            ``seed``; the eval attack's only if it has one), so evaluation is the same in every epoch and run.
    """

    primary_metric = ROBUST_TOP1
    name = "adversarial"
    train_metric_names = CLASSIFIER_TRAIN_METRICS  # on the adversarial batch

    def __init__(
        self,
        train_attack: PGD,
        eval_attack: PGD,
        autoattack: AutoAttack | None = None,
        autoattack_subset: int | None = None,
        eps_sweep: EpsSweep | None = None,
        eval_seed: int = 0,
    ):
        if eval_attack.bn_mode != "eval":
            raise ValueError(
                f"Invalid eval_attack bn_mode: {eval_attack.bn_mode!r}; evaluation attacks must use 'eval' "
                "(the deployed model uses running statistics)"
            )
        sweep_attack = eps_sweep.attack if eps_sweep is not None else None
        norms = {a.norm for a in (train_attack, eval_attack, autoattack, sweep_attack) if a is not None}
        if len(norms) != 1:
            raise ValueError(
                f"Invalid attack norms: {sorted(norms)}; every attack of the task must share one"
            )
        for label, subset in (
            ("autoattack.subset", autoattack_subset),
            ("eps_sweep.subset", eps_sweep.subset if eps_sweep else None),
        ):
            if subset is not None and (isinstance(subset, bool) or not isinstance(subset, int) or subset < 1):
                raise ValueError(f"Invalid {label}: {subset!r}; expected an integer >= 1 or null")
        if isinstance(eval_seed, bool) or not isinstance(eval_seed, int) or eval_seed < 0:
            raise ValueError(f"Invalid eval_seed: {eval_seed!r}; expected an integer >= 0")
        self.train_attack, self.eval_attack = train_attack, eval_attack
        self.autoattack, self.autoattack_subset, self.eps_sweep = autoattack, autoattack_subset, eps_sweep
        self.eval_seed = eval_seed
        self.generator: torch.Generator | None = None  # set_epoch seeds it
        self.denominators: dict[str, str] = {}
        if autoattack is not None:
            self.denominators |= dict.fromkeys(_AA_RATES, "autoattack_images")
            self.denominators |= {f"autoattack_warn_{flag}": "autoattack_runs" for flag in WARNING_FLAGS}
        if eps_sweep is not None:
            self.denominators |= dict.fromkeys(eps_sweep.keys(), "eps_sweep_images")

    # -------------------------------------------------------------------------------------------- training
    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Seed the training attack's random starts from (seed, epoch, rank): a resumed epoch redraws them."""
        self.generator = make_generator(seed, epoch, rank, STREAM_ATTACK_START)

    def train_loss(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy on the PGD examples of the batch (the clean batch is not trained on).

        Called with the model in train mode; the attack crafts in ``train_attack.bn_mode`` and restores it.
        Returns ``(loss, logits)`` with the logits of the adversarial batch.
        """
        x_adv = self.train_attack(model, x, y, generator if generator is not None else self.generator)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], final: bool = True
    ) -> dict[str, Tensor]:
        """Per-metric sums over ``batches`` (see the module docstring); AutoAttack and the sweep run when ``final``.

        Needs autograd: call it under ``torch.no_grad()`` or with grad enabled, never ``torch.inference_mode()``.
        """
        aa_quota = self._quota(self.autoattack_subset) if final and self.autoattack is not None else 0
        sweep_quota = self._quota(self.eps_sweep.subset) if final and self.eps_sweep is not None else 0
        left = max(aa_quota, sweep_quota)
        generator = make_generator(self.eval_seed)
        sums: dict[str, Tensor] = {}
        kept: dict[str, list[Tensor]] = {"x": [], "y": [], "clean_ok": [], "robust_ok": []}
        for x, y in batches:
            batch_sums, details = self.evaluate_batch(model, x, y, generator=generator)
            for key, value in batch_sums.items():
                sums[key] = sums[key] + value if key in sums else value
            n = min(left, y.shape[0])
            if n > 0:
                for key, value in (("x", x), ("y", y), *details.items()):
                    if key in kept:
                        kept[key].append(value[:n])
                left -= n
        if not sums:
            sums = {key: torch.zeros(()) for key in _BASE_METRICS}
        device = sums["count"].device
        subset = {
            key: torch.cat(parts) if parts else _empty_like_kept(key, device) for key, parts in kept.items()
        }
        if final and self.autoattack is not None:
            sums |= self._autoattack_sums(model, subset, int(min(aa_quota, subset["y"].shape[0])), device)
        if final and self.eps_sweep is not None:
            sums |= self._eps_sweep_sums(model, subset, int(min(sweep_quota, subset["y"].shape[0])), device)
        return sums

    def evaluate_batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Sums for one batch and what they were measured on.

        Returns ``(sums, details)``: ``details["robust"]`` are the ``eval_attack`` examples of the batch,
        ``details["clean_ok"]`` / ``["robust_ok"]`` the per-sample (B,) bool top-1 hits on clean and attacked
        inputs. Every accuracy is the model's top-1 on exactly these tensors, in eval mode. ``generator`` draws
        the eval attack's random starts, if it has any (None: torch's global RNG).
        """
        with module_modes(model, False):
            with torch.no_grad():
                logits = model(x)
            x_adv = self.eval_attack(model, x, y, generator)
            with torch.no_grad():
                adv_logits = model(x_adv)
        clean_ok, robust_ok = logits.argmax(dim=1).eq(y), adv_logits.argmax(dim=1).eq(y)
        sums = {
            CLEAN_TOP1: 100.0 * clean_ok.sum().float(),
            ROBUST_TOP1: 100.0 * robust_ok.sum().float(),
            LOSS: F.cross_entropy(logits.float(), y, reduction="sum"),
            ROBUST_LOSS: F.cross_entropy(adv_logits.float(), y, reduction="sum"),
            "count": torch.tensor(float(y.shape[0]), device=y.device),
        }
        return sums, {"robust": x_adv, "clean_ok": clean_ok, "robust_ok": robust_ok}

    def _autoattack_sums(
        self, model: nn.Module, subset: Mapping[str, Tensor], n: int, device: torch.device
    ) -> dict[str, Tensor]:
        x, y = subset["x"][:n], subset["y"][:n]
        result = self.autoattack(model, x, y)
        if n > 0:
            log.info(
                "AutoAttack %s (%s, eps %.4g): %.2f%% of %d samples in %.1f s%s",
                self.autoattack.version,
                "+".join(self.autoattack.attack_names),
                self.autoattack.eps,
                100.0 * float(result.correct.float().mean()),
                n,
                result.seconds,
                "".join(f"; warning: {m}" for m in result.messages),
            )

        def scalar(value: float) -> Tensor:
            return torch.tensor(float(value), device=device)

        sums = {
            AUTOATTACK_TOP1: 100.0 * result.correct.sum().float().to(device),
            "autoattack_subset_clean_top1": 100.0 * subset["clean_ok"][:n].sum().float().to(device),
            AUTOATTACK_SUBSET_ROBUST_TOP1: 100.0 * subset["robust_ok"][:n].sum().float().to(device),
            "autoattack_s_per_1000_images": scalar(1000.0 * result.seconds),
            "autoattack_images": scalar(n),
            "autoattack_runs": scalar(n > 0),
        }
        sums |= {f"autoattack_warn_{flag}": scalar(count > 0) for flag, count in result.flags.items()}
        return sums

    def _eps_sweep_sums(
        self, model: nn.Module, subset: Mapping[str, Tensor], n: int, device: torch.device
    ) -> dict[str, Tensor]:
        sweep = self.eps_sweep
        x, y = subset["x"][:n], subset["y"][:n]
        sums = {"eps_sweep_images": torch.tensor(float(n), device=device)}
        for key, eps in zip(sweep.keys(), sweep.eps):
            if eps == 0.0:  # no attack: the clean accuracy of the same samples anchors the curve
                correct = subset["clean_ok"][:n]
            else:
                correct = dataclasses.replace(sweep.attack, eps=eps)(model, x, y).correct
            sums[key] = 100.0 * correct.sum().float().to(device)
        return sums

    def _quota(self, subset: int | None) -> float:
        if subset is None:
            return math.inf
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return math.ceil(subset / world)

    def metric_keys(self, final: bool) -> tuple[str, ...]:
        """The keys ``evaluate(..., final=final)`` returns."""
        keys = list(_BASE_METRICS)
        if final and self.autoattack is not None:
            keys += [*_AA_RATES, "autoattack_images", "autoattack_runs"]
            keys += [f"autoattack_warn_{flag}" for flag in WARNING_FLAGS]
        if final and self.eps_sweep is not None:
            keys += ["eps_sweep_images", *self.eps_sweep.keys()]
        return tuple(keys)

    # ------------------------------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """Every attack's settings and the metric definitions, for ``summary.json``."""
        autoattack = sweep = None
        if self.autoattack is not None:
            autoattack = {
                **self.autoattack.describe(),
                "subset": self.autoattack_subset,
                "runs": "at evaluate(final=True)",
                "warning_flags": {flag: meaning for flag, (_, meaning) in WARNING_FLAGS.items()},
            }
        if self.eps_sweep is not None:
            sweep = {
                **self.eps_sweep.attack.describe(),
                "eps_factors": list(self.eps_sweep.eps_factors),
                "eps": self.eps_sweep.eps,
                "eps_x255": [round(e * 255, 6) for e in self.eps_sweep.eps],
                "subset": self.eps_sweep.subset,
                "metrics": self.eps_sweep.keys(),
                "runs": "at evaluate(final=True); factor 0 is the clean accuracy of the same samples",
            }
        return {
            "task": self.name,
            "norm": self.train_attack.norm,
            "eps": self.train_attack.eps,
            "eval_seed": self.eval_seed,
            "train_loss": "cross_entropy(mean) on the train_attack examples only",
            "train_attack_bn_mode": self.train_attack.bn_mode,
            "train_attack": self.train_attack.describe(),
            "eval_attack": self.eval_attack.describe(),
            "autoattack": autoattack,
            "eps_sweep": sweep,
            "metrics": {
                CLEAN_TOP1: "Standard Acc",
                ROBUST_TOP1: "Attacked Acc (eval_attack)",
                "autoattack_top1": "top-1 under AutoAttack alone (not in the paper)",
            },
            "denominators": dict(self.denominators),
        }


def _empty_like_kept(key: str, device: torch.device) -> Tensor:
    dtype = {"x": torch.float32, "y": torch.long}.get(key, torch.bool)
    return torch.zeros(0, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------- builder


def _section(cfg: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if cfg.get(name) is None:
        raise ConfigError(f"Missing task.{name}; expected keys {list(allowed)}")
    section = plain_config(cfg[name], f"task.{name}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in task.{name}; expected keys {list(allowed)}")
    if section.get("enabled") is False:  # a switched-off check needs no settings
        return section
    missing = [key for key in allowed if key not in section]
    if missing:
        raise ConfigError(
            f"Missing key(s) {missing} in task.{name}; the config sets every number of the protocol"
        )
    return section


def _enabled(section: dict[str, Any], name: str) -> bool:
    enabled = section.pop("enabled")
    if not isinstance(enabled, bool):
        raise ConfigError(f"Invalid task.{name}.enabled: {enabled!r}; expected true or false")
    return enabled


def _autoattack(norm: str, eps: float, seed: int, section: Mapping[str, Any], name: str) -> AutoAttack:
    attacks = section["attacks"]
    if attacks is not None and not isinstance(attacks, (list, tuple)):
        raise ConfigError(f"Invalid task.{name}.attacks: {attacks!r}; expected a list of names or null")
    try:
        return AutoAttack(
            norm=norm,
            eps=eps,
            version=section["version"],
            attacks=tuple(attacks) if attacks is not None else None,
            seed=seed,
            batch_size=section["batch_size"],
        )
    except ValueError as exc:
        raise ConfigError(f"task.{name}: {exc}") from None


def _eps_factors(value: Any) -> tuple[float, ...]:
    ok = isinstance(value, (list, tuple)) and len(value) > 0
    ok = ok and all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < math.inf for f in value
    )
    if not ok or list(value) != sorted(set(value)):
        raise ConfigError(
            f"Invalid task.eps_sweep.eps_factors: {value!r}; expected increasing distinct numbers >= 0"
        )
    return tuple(float(f) for f in value)


def build_adversarial_task(cfg: Mapping[str, Any]) -> AdversarialTask:
    """Build the task from ``configs/task/adversarial.yaml`` (a DictConfig or a plain mapping).

    Every key is required (configs carry every number of the protocol); unknown keys are errors so that a typo
    cannot silently fall back to a default. Bad values raise :class:`ConfigError` naming the value.
    """
    cfg = plain_config(cfg, "task")
    unknown = sorted(set(cfg) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"Unknown task key(s) {unknown}; expected keys {list(_TOP_KEYS)}")
    missing = [key for key in _TOP_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"Missing task key(s) {missing}; the config sets every number of the protocol")
    norm, eps, seed = cfg["norm"], cfg["eps"], cfg["eval_seed"]
    try:
        train_attack = PGD(norm=norm, eps=eps, **_section(cfg, "train_attack", _TRAIN_KEYS))
        eval_attack = PGD(norm=norm, eps=eps, bn_mode="eval", **_section(cfg, "eval_attack", _EVAL_KEYS))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"Invalid eval_seed: {seed!r}; expected an integer >= 0")

    autoattack, aa_subset = None, None
    section = _section(cfg, "autoattack", _AUTOATTACK_KEYS)
    if _enabled(section, "autoattack"):
        autoattack, aa_subset = _autoattack(norm, eps, seed, section, "autoattack"), section["subset"]
    sweep = None
    section = _section(cfg, "eps_sweep", _SWEEP_KEYS)
    if _enabled(section, "eps_sweep"):
        attack = _autoattack(norm, eps, seed, section, "eps_sweep")
        sweep = EpsSweep(attack, _eps_factors(section["eps_factors"]), section["subset"])
    try:
        return AdversarialTask(train_attack, eval_attack, autoattack, aa_subset, sweep, eval_seed=seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
