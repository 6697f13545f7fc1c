"""Adversarial training (PGD) and robust evaluation: the task behind project-page table P4a.

Protocol (../shared/paper/tables.md section 3; the codebase the page links, louis2889184/pytorch-adversarial-
training @ 4c18cef): every training batch is replaced by its PGD-10 adversarial examples (random start, crafted
with the model in ``train_attack.bn_mode``) and the loss is the mean cross-entropy on the adversarial batch only.
"Standard Acc" is top-1 on clean test images; "Attacked Acc" is top-1 under the same PGD without random start.
All numbers (norm, eps, steps, step sizes, BN mode, the strong check) come from ``configs/task/adversarial.yaml``.

Evaluation metrics (``evaluate`` returns SUMS; ``sum / denominator`` is the metric, accuracies in percent):

======================  =================  ==========================================================
key                     denominator        meaning
======================  =================  ==========================================================
``clean_top1``          ``count``          top-1 on clean inputs ("Standard Acc")
``robust_top1``         ``count``          top-1 on ``eval_attack`` examples ("Attacked Acc")
``loss``                ``count``          cross-entropy on clean inputs
``robust_loss``         ``count``          cross-entropy on ``eval_attack`` examples
``strong_robust_top1``  ``strong_count``   top-1 under the per-sample worst case of {clean input,
                                           ``eval_attack``, ``strong_attack``} (not in the paper; a check
                                           that PGD-10 is not flattered by gradient masking)
``strong_count``        -                  samples the strong check ran on (see ``strong_attack.subset``)
======================  =================  ==========================================================

``denominators`` maps each metric to its denominator; ``finalize(sums)`` divides. The strong keys are present in
every ``evaluate(..., final=True)`` result (zeros where no sample was checked), so every rank holds the same keys
for the all-reduce; they are absent when ``final=False`` or the check is disabled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from adamp_repro.data.sharding import make_generator
from adamp_repro.train.attacks import PGD, module_modes, per_sample_view
from adamp_repro.train.tasks import finalize_sums

# Random-stream tag for the training attack's random starts; distinct from the data streams of
# adamp_repro.data.sharding (0, 1, 2), so the starts are independent of the sample order and augmentation.
STREAM_ATTACK_START = 167

_ATTACK_KEYS = ("steps", "step_size", "step_rule", "random_start", "restarts")
_TRAIN_KEYS = (*_ATTACK_KEYS, "bn_mode")
_EVAL_KEYS = (*_ATTACK_KEYS, "keep_best")
_STRONG_KEYS = ("enabled", *_EVAL_KEYS, "subset")
_TOP_KEYS = ("name", "norm", "eps", "eval_seed", "train_attack", "eval_attack", "strong_attack")


class AdversarialTask:
    """PGD adversarial training; clean, PGD and strong-PGD accuracy on evaluation (see the module docstring).

    Args:
        train_attack: crafts the training batches (its ``bn_mode`` is the logged BN mode of training attacks).
        eval_attack: the paper's evaluation attack; must craft in ``bn_mode="eval"``.
        strong_attack: the stronger check, or None to skip it; must craft in ``bn_mode="eval"``.
        strong_subset: the check runs on the first ``strong_subset`` evaluation samples (None: all). Under DDP each
            rank checks its first ``ceil(strong_subset / world_size)``; with the strided evaluation shards of
            ``adamp_repro.data.sharding.eval_shard`` these are the global first samples.
        eval_seed: seeds the evaluation attacks' random starts (the strong check's; the eval attack's only if
            it has one) afresh at every ``evaluate`` call, so evaluation is the same for every epoch and every run
            (a CPU generator: identical starts on CPU and GPU).
    """

    primary_metric = "robust_top1"

    name = "adversarial"
    denominators = {"strong_robust_top1": "strong_count"}

    def __init__(
        self,
        train_attack: PGD,
        eval_attack: PGD,
        strong_attack: PGD | None = None,
        strong_subset: int | None = None,
        eval_seed: int = 0,
    ):
        for label, attack in (("eval_attack", eval_attack), ("strong_attack", strong_attack)):
            if attack is not None and attack.bn_mode != "eval":
                raise ValueError(
                    f"Invalid {label} bn_mode: {attack.bn_mode!r}; evaluation attacks must use 'eval' "
                    "(the deployed model uses running statistics)"
                )
        norms = {a.norm for a in (train_attack, eval_attack, strong_attack) if a is not None}
        if len(norms) != 1:
            raise ValueError(
                f"Invalid attack norms: {sorted(norms)}; train, eval and strong attacks must share one"
            )
        if strong_subset is not None and (
            isinstance(strong_subset, bool) or not isinstance(strong_subset, int) or strong_subset < 1
        ):
            raise ValueError(
                f"Invalid strong_attack.subset: {strong_subset!r}; expected an integer >= 1 or null"
            )
        self.train_attack, self.eval_attack, self.strong_attack = train_attack, eval_attack, strong_attack
        if isinstance(eval_seed, bool) or not isinstance(eval_seed, int) or eval_seed < 0:
            raise ValueError(f"Invalid eval_seed: {eval_seed!r}; expected an integer >= 0")
        self.strong_subset, self.eval_seed = strong_subset, eval_seed
        self.generator: torch.Generator | None = None

    # -------------------------------------------------------------------------------------------- training
    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        """Seed the training attack's random starts from (seed, epoch, rank): a resumed epoch redraws them."""
        self.generator = make_generator(seed, epoch, rank, STREAM_ATTACK_START)

    def set_generator(self, generator: torch.Generator | None) -> None:
        """Use ``generator`` for the training attack's random starts (None: torch's global RNG)."""
        self.generator = generator

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
        """Per-metric sums over ``batches`` (see the module docstring); the strong check runs when ``final``.

        Needs autograd: call it under ``torch.no_grad()`` or with grad enabled, never ``torch.inference_mode()``.
        """
        strong = self.strong_attack is not None and final
        left = self._strong_quota() if strong else 0
        generator = make_generator(self.eval_seed)
        sums: dict[str, Tensor] = {}
        for x, y in batches:
            n = min(left, y.shape[0])
            batch_sums, _ = self.evaluate_batch(
                model, x, y, strong_n=n, strong_keys=strong, generator=generator
            )
            left -= n
            for key, value in batch_sums.items():
                sums[key] = sums[key] + value if key in sums else value
        if not sums:
            sums = {key: torch.zeros(()) for key in self.metric_keys(strong)}
        return sums

    def evaluate_batch(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        strong_n: int = 0,
        strong_keys: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Sums for one batch and the adversarial examples they were measured on.

        Returns ``(sums, examples)``: ``examples["robust"]`` are the ``eval_attack`` examples of the whole batch,
        ``examples["strong"]`` (when ``strong_n > 0``) the worst-case examples of its first ``strong_n`` samples.
        Every accuracy is the model's top-1 on exactly these tensors, in eval mode. ``generator`` draws the random
        starts of both attacks (None: torch's global RNG).
        """
        if strong_keys is None:
            strong_keys = strong_n > 0
        if strong_n > 0 and self.strong_attack is None:
            raise ValueError(
                f"Invalid strong_n: {strong_n}; the strong attack is disabled (strong_attack.enabled)"
            )
        with module_modes(model, False):
            with torch.no_grad():
                logits = model(x)
            x_adv = self.eval_attack(model, x, y, generator)
            with torch.no_grad():
                adv_logits = model(x_adv)
            clean_ok, robust_ok = logits.argmax(dim=1).eq(y), adv_logits.argmax(dim=1).eq(y)
            sums = {
                "clean_top1": 100.0 * clean_ok.sum().float(),
                "robust_top1": 100.0 * robust_ok.sum().float(),
                "loss": F.cross_entropy(logits.float(), y, reduction="sum"),
                "robust_loss": F.cross_entropy(adv_logits.float(), y, reduction="sum"),
                "count": torch.tensor(float(y.shape[0]), device=y.device),
            }
            examples = {"robust": x_adv}
            if strong_keys:
                sums["strong_robust_top1"] = torch.zeros((), device=y.device)
                sums["strong_count"] = torch.tensor(float(strong_n), device=y.device)
            if strong_n > 0:
                x_worst = self._strong_worst_case(
                    model,
                    x[:strong_n],
                    y[:strong_n],
                    x_adv[:strong_n],
                    clean_ok[:strong_n],
                    robust_ok[:strong_n],
                    generator,
                )
                with torch.no_grad():
                    strong_ok = model(x_worst).argmax(dim=1).eq(y[:strong_n])
                sums["strong_robust_top1"] = 100.0 * strong_ok.sum().float()
                examples["strong"] = x_worst
        return sums, examples

    def _strong_worst_case(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        x_adv: Tensor,
        clean_ok: Tensor,
        robust_ok: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor:
        # Per sample, the first input of (clean, eval attack, strong attack) the model gets wrong, else the strong
        # example: the check is never above the clean or the PGD-10 accuracy of the same samples.
        x_strong = self.strong_attack(model, x, y, generator)
        x_worst = torch.where(per_sample_view(robust_ok, x), x_strong, x_adv)
        return torch.where(per_sample_view(clean_ok, x), x_worst, x)

    def _strong_quota(self) -> float:
        if self.strong_subset is None:
            return math.inf
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return math.ceil(self.strong_subset / world)

    def metric_keys(self, strong: bool) -> tuple[str, ...]:
        base = ("clean_top1", "robust_top1", "loss", "robust_loss", "count")
        return (*base, "strong_robust_top1", "strong_count") if strong else base

    def finalize(self, sums: Mapping[str, Tensor | float]) -> dict[str, float]:
        """Metrics from (all-reduced) sums: each sum over its denominator; the counts themselves unchanged."""
        return finalize_sums(sums, self.denominators)

    # ------------------------------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """Every attack's settings and the metric definitions, for ``summary.json``."""
        strong = None
        if self.strong_attack is not None:
            strong = {
                **self.strong_attack.describe(),
                "subset": self.strong_subset,
                "worst_case_over": ["clean", "eval_attack", "strong_attack"],
                "runs": "at evaluate(final=True)",
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
            "strong_attack": strong,
            "metrics": {
                "clean_top1": "Standard Acc",
                "robust_top1": "Attacked Acc (eval_attack)",
                "strong_robust_top1": "worst case of clean, eval_attack, strong_attack (/ strong_count)",
            },
            "denominators": dict(self.denominators),
        }


# ----------------------------------------------------------------------------------------------- builder
def _plain(cfg: Any, where: str) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf ships with hydra-core, a dependency
        DictConfig = ()  # noqa: N806
    if DictConfig and isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise ValueError(f"Invalid {where}: {cfg!r}; expected a mapping")


def _section(cfg: Mapping[str, Any], name: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if cfg.get(name) is None:
        raise ValueError(f"Missing task.{name}; expected keys {list(allowed)}")
    section = _plain(cfg[name], f"task.{name}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} in task.{name}; expected keys {list(allowed)}")
    return section


def _require(section: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in section]
    if missing:
        raise ValueError(
            f"Missing key(s) {missing} in task.{name}; the config sets every number of the protocol"
        )


def build_adversarial_task(cfg: Mapping[str, Any]) -> AdversarialTask:
    """Build the task from ``configs/task/adversarial.yaml`` (a DictConfig or a plain mapping).

    Every key is required (configs carry every number of the protocol); unknown keys are errors so that a typo
    cannot silently fall back to a default. ``strong_attack.step_size: null`` means ``eps / 4``.
    """
    cfg = _plain(cfg, "task")
    unknown = sorted(set(cfg) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"Unknown task key(s) {unknown}; expected keys {list(_TOP_KEYS)}")
    missing = [key for key in ("norm", "eps", "eval_seed") if key not in cfg]
    if missing:
        raise ValueError(f"Missing task key(s) {missing}; the config sets every number of the protocol")
    norm, eps = cfg["norm"], cfg["eps"]

    train = _section(cfg, "train_attack", _TRAIN_KEYS)
    _require(train, "train_attack", _TRAIN_KEYS)
    train_attack = PGD(norm=norm, eps=eps, **train)
    evaluation = _section(cfg, "eval_attack", _EVAL_KEYS)
    _require(evaluation, "eval_attack", _EVAL_KEYS)
    eval_attack = PGD(norm=norm, eps=eps, bn_mode="eval", **evaluation)

    strong_attack, subset = None, None
    if cfg.get("strong_attack") is not None:
        strong = _section(cfg, "strong_attack", _STRONG_KEYS)
        _require(strong, "strong_attack", ("enabled",))
        enabled = strong.pop("enabled")
        if not isinstance(enabled, bool):
            raise ValueError(f"Invalid task.strong_attack.enabled: {enabled!r}; expected true or false")
        if enabled:
            _require(strong, "strong_attack", _STRONG_KEYS[1:])
            subset = strong.pop("subset")
            if strong["step_size"] is None:
                # eps/4: the usual step of a many-step check (1/255 at l-inf eps 4/255, 20/255 at l2 eps 80/255).
                strong["step_size"] = train_attack.eps / 4.0
            strong_attack = PGD(norm=norm, eps=eps, bn_mode="eval", **strong)
    return AdversarialTask(
        train_attack, eval_attack, strong_attack, strong_subset=subset, eval_seed=cfg["eval_seed"]
    )
