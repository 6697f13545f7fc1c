"""Rotational equilibrium of a scale-invariant weight: the predicted angular update per step, decay per step,
relaxation time and equilibrium norm, for the optimizers of ``configs/optimizer/*.yaml``. Pure math.

A scale-invariant weight vector (one filter of length ``dim`` in front of a normalisation layer) has a gradient
orthogonal to it whose norm scales as ``1/||w||``. With weight decay its norm and its expected rotation per step
settle at values set by the hyper-parameters alone. The predictions hold in the random-walk model: gradients of
random direction, orthogonal to the weight, uncorrelated across steps, ``||g|| = G / ||w||``. The derivations,
the sources and where the model fails are in docs/equilibrium.md; every formula below names its source.

Units: angles in radians per step; weight decay in torch units (the value given to the optimizer, multiplied
by ``lr`` inside the step); times in optimizer steps; norms in the units of the weight (``grad_scale`` ``G`` is
``||g|| * ||w||`` of one filter, so ``||g|| = G / ||w||``).

Which optimizers (the ``name`` of a config file, or an alias of the same update):

- ``sgd`` (``torch.optim.SGD``, coupled L2 through the momentum buffer), ``sgdp``, ``sgdp_noproj``,
  ``adamw``, ``adamp``, ``adamp_noproj``: predicted.
- ``adam`` (``torch.optim.Adam`` with coupled L2) has no clean prediction: the decay term enters both moments
  and is divided by the per-coordinate second moment, so its strength depends on the gradient scale and on how
  the gradient spreads over coordinates. ``lion`` and ``lamb`` are not modelled. All three raise
  ``NoEquilibriumPrediction``.

Hyper-parameters are read from a mapping with the keys of the config files (``lr``, ``weight_decay``,
``momentum``, ``dampening``, ``nesterov``, ``betas``, ``wd_ratio``, ``projection``); ``lr`` and
``weight_decay`` are required, a missing optional key takes the optimizer class's default. SGDP/AdamP are
predicted as projected, i.e. for a weight whose scale-invariance test passes at every step; ``projection:
false`` (the ``*_noproj`` files), or a weight whose test fails, is predicted as the unprojected update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adamp_repro.errors import ConfigError

__all__ = [
    "PREDICTED",
    "NoEquilibriumPrediction",
    "Update",
    "angular_update",
    "decay_fraction",
    "describe_update",
    "equilibrium_norm",
    "matched_adamw_weight_decay",
    "relaxation_time",
]

PREDICTED = ("sgd", "sgdp", "sgdp_noproj", "adamw", "adamp", "adamp_noproj")
_NOT_PREDICTED = {
    "adam": "Adam with coupled L2 decay has no clean equilibrium: the decay term is divided by the "
    "per-coordinate second moment, so its strength depends on the gradient scale and spread",
    "lion": "Lion is not modelled (sign update)",
    "lamb": "LAMB is not modelled (layer-wise trust ratio)",
}


class NoEquilibriumPrediction(ConfigError):
    """An optimizer name with no equilibrium prediction; the message says why and which names have one."""


@dataclass(frozen=True)
class Update:
    """One optimizer's update of a scale-invariant weight, reduced to what the equilibrium depends on.

    The update direction is a linear filter of the past gradients, ``sum_k c_k g_{t-k}`` (each gradient
    normalised per coordinate for the Adam family); ``filter_sum`` is ``sum_k c_k`` and ``filter_sum_sq``
    ``sum_k c_k^2`` (dimensionless). ``decay`` is the fraction of the weight removed per step by weight decay
    (dimensionless, per step): through the momentum buffer for SGD's coupled L2, decoupled otherwise.
    """

    name: str
    lr: float
    weight_decay: float  # torch units
    decay: float  # fraction of the weight per step
    projected: bool  # the update is projected orthogonal to the weight (SGDP/AdamP, test passing)
    adaptive: bool  # Adam family: per-coordinate normalisation by sqrt(v)
    filter_sum: float
    filter_sum_sq: float
    beta2: float | None  # Adam family: second-moment average, for the relaxation time


def _momentum_filter(mu: float, scale: float, nesterov: bool) -> tuple[float, float]:
    """(sum c_k, sum c_k^2) of ``scale * (heavy-ball buffer)``, or of the Nesterov direction
    ``g_t + mu * b_t`` (c_0 = 1 + mu, c_k = mu^(k+1)), times ``scale``. Derived here: docs/equilibrium.md."""
    if nesterov:
        return scale / (1 - mu), scale**2 * (1 + 2 * mu - 2 * mu**3) / (1 - mu**2)
    return scale / (1 - mu), scale**2 / (1 - mu**2)


def _number(hp: Mapping[str, Any], key: str, default: Any = None) -> float:
    value = hp.get(key, default)
    if value is None:
        raise ConfigError(f"{key} is missing from the hyper-parameters; the equilibrium needs it")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r}: expected a finite number")
    return float(value)


def describe_update(name: str, hp: Mapping[str, Any]) -> Update:
    """The ``Update`` of optimizer ``name`` with hyper-parameters ``hp`` (keys of configs/optimizer/*.yaml).

    Raises ``NoEquilibriumPrediction`` for ``adam``, ``lion``, ``lamb`` and unknown names, ``ConfigError``
    for a missing or out-of-range value (lr, weight_decay > 0; momentum, betas in [0, 1)).
    """
    if name in _NOT_PREDICTED:
        raise NoEquilibriumPrediction(f"optimizer {name!r}: {_NOT_PREDICTED[name]}; predicted: {PREDICTED}")
    if name not in PREDICTED:
        raise NoEquilibriumPrediction(f"optimizer {name!r} is not modelled; predicted: {PREDICTED}")
    lr, wd = _number(hp, "lr"), _number(hp, "weight_decay")
    if lr <= 0 or wd <= 0:
        raise ConfigError(f"lr={lr!r}, weight_decay={wd!r}: the equilibrium needs both > 0")
    nesterov = bool(hp.get("nesterov", False))
    projected = name in ("sgdp", "adamp") and bool(hp.get("projection", True))
    ratio = _number(hp, "wd_ratio", 0.1) if projected else 1.0
    if name.startswith("sgd"):
        mu, tau = _number(hp, "momentum", 0.0), _number(hp, "dampening", 0.0)
        if not 0 <= mu < 1 or not 0 <= tau <= 1:
            raise ConfigError(
                f"momentum={mu!r}, dampening={tau!r}: expected momentum in [0, 1), dampening in [0, 1]"
            )
        s1, s2 = _momentum_filter(mu, 1 - tau, nesterov)
        # torch.optim.SGD adds wd * w to the gradient, so the decay goes through the same filter (sum s1);
        # SGDP decays w *= 1 - lr wd ratio / (1 - momentum) directly, whatever the dampening.
        decay = lr * wd * s1 if name == "sgd" else lr * wd * ratio / (1 - mu)
        return Update(name, lr, wd, decay, projected, False, s1, s2, None)
    betas = hp.get("betas", (0.9, 0.999))
    beta1, beta2 = _number({"beta1": betas[0]}, "beta1"), _number({"beta2": betas[1]}, "beta2")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"betas={list(betas)!r}: expected each in [0, 1)")
    # m_t = (1 - beta1) sum_k beta1^k g_{t-k}; AdamP's Nesterov numerator beta1 m_t + (1 - beta1) g_t.
    s1, s2 = _momentum_filter(beta1, 1 - beta1, False)
    if nesterov:
        s1, s2 = 1.0, (1 - beta1) * (1 + 2 * beta1 - 2 * beta1**3) / (1 + beta1)
    return Update(name, lr, wd, lr * wd * ratio, projected, True, s1, s2, beta2)


def decay_fraction(name: str, hp: Mapping[str, Any]) -> float:
    """Fraction of a scale-invariant weight removed per step by weight decay (dimensionless, per step).

    sgd: lr wd (1 - dampening) / (1 - momentum) (the L2 term through the buffer); sgdp: lr wd wd_ratio /
    (1 - momentum) (the official code's decoupled decay; wd_ratio 1 without projection); adamw: lr wd; adamp:
    lr wd wd_ratio. Source: the optimizers' update rules (docs/equilibrium.md §1).
    """
    return describe_update(name, hp).decay


def angular_update(name: str, hp: Mapping[str, Any]) -> float:
    """Predicted RMS angle between a filter's direction before and after one step, radians per step.

    - sgd, heavy ball: sqrt(2 lr wd / (1 + momentum)) (Wan et al., "Spherical Motion Dynamics", NeurIPS 2021,
      arXiv 2006.08419); with dampening tau times (1 - tau), with nesterov sqrt(2 lr wd (1 + 2m - 2m^3) /
      (1 + m)) (derived here: docs/equilibrium.md).
    - adamw: sqrt(2 lr wd (1 - beta1) / (1 + beta1)) (Kosson, Messmer & Jaggi, "Rotational Equilibrium",
      arXiv 2305.17212).
    - sgdp, adamp (projected): arccos(1 - c) ~= sqrt(2 c), c = ``decay_fraction`` (derived here:
      docs/equilibrium.md); independent of momentum/beta1 (beyond c), nesterov and dampening.
    - sgdp_noproj, adamp_noproj: 2 c sum c_k^2 / (sum c_k)^2 under the root, i.e. sqrt(2 lr wd / (1 +
      momentum)) and AdamW's value (derived here: docs/equilibrium.md).
    Leading order in lr*wd except the projected form, which is the model's steady state at any c < 1.
    """
    u = describe_update(name, hp)
    if u.projected:
        return math.acos(1 - u.decay)
    return math.sqrt(2 * u.decay * u.filter_sum_sq / u.filter_sum**2)


def equilibrium_norm(name: str, hp: Mapping[str, Any], *, dim: int, grad_scale: float | None = None) -> float:
    """Predicted RMS norm of one filter of ``dim`` entries at equilibrium (units of the weight).

    SGD family (needs ``grad_scale`` G, with ||g|| = G / ||w||): ||w||^4 = lr^2 G^2 S / (2 c), where
    S = (sum c_k)^2 unprojected (for sgd: ||w||^4 = lr G^2 (1 - tau) / (2 wd (1 - momentum))) and
    S = sum c_k^2 projected. Adam family (``grad_scale`` unused: the per-coordinate normalisation makes
    ||update|| ~ lr sqrt(dim sum c_k^2)): ||w||^2 = lr^2 dim S / (2 c), e.g. adamw: lr dim / (2 wd); adamp:
    lr dim (1 - beta1) / (2 wd wd_ratio (1 + beta1)). Derived here: docs/equilibrium.md (the sgd and adamw forms
    agree with the papers cited in ``angular_update``). Leading order in c; the projected forms also need the
    rotation within one momentum time to be small (docs/equilibrium.md §4).
    """
    u = describe_update(name, hp)
    if dim < 1:
        raise ConfigError(f"dim={dim!r}: expected a positive filter length")
    spread = u.filter_sum_sq if u.projected else u.filter_sum**2
    if u.adaptive:
        return math.sqrt(u.lr**2 * dim * spread / (2 * u.decay))
    if grad_scale is None or not grad_scale > 0:
        raise ConfigError(f"grad_scale={grad_scale!r}: {name} needs G > 0 (||g|| = G / ||w||) for its norm")
    return (u.lr**2 * grad_scale**2 * spread / (2 * u.decay)) ** 0.25


def relaxation_time(name: str, hp: Mapping[str, Any]) -> float:
    """Time constant, in steps, of the approach of ||w||^2 to its equilibrium near it (scale-invariant gradient).

    SGD family: the update shrinks as the norm grows (||g|| = G / ||w||), so -1 / ln(1 - 2k) ~= 1 / (4 c),
    k = 1 - (1 - c)^2, e.g. sgd (1 - momentum) / (4 lr wd). Adam family: the normalised update does not depend
    on the norm once the second moment has caught up; the slower eigenvalue of the (norm, second moment)
    linearisation, which is ~= 1 / (2 c) when 1 - beta2 >> c (AdamW 1 / (2 lr wd), AdamP 1 / (2 lr wd
    wd_ratio)) and longer when they are comparable. Derived here: docs/equilibrium.md §3. The momentum delay
    is ignored ("about").
    """
    u = describe_update(name, hp)
    k = 1 - (1 - u.decay) ** 2
    if not u.adaptive:
        return -1 / math.log(1 - 2 * k)
    assert u.beta2 is not None
    # delta' = (1 - 2k) delta - k nu, nu' = beta2 nu - (1 - beta2) delta (nu: relative error of v).
    a, b, c_, d = 1 - 2 * k, -k, -(1 - u.beta2), u.beta2
    mean, half_gap = (a + d) / 2, math.sqrt(((a - d) / 2) ** 2 + b * c_)
    return -1 / math.log(mean + half_gap)


def matched_adamw_weight_decay(weight_decay: float, *, wd_ratio: float = 0.1, beta1: float = 0.9) -> float:
    """AdamW weight decay (torch units) whose equilibrium rotation equals AdamP's at ``weight_decay``, same lr.

    Kosson et al.'s AdamW rotation sqrt(2 lr wd_W (1 - beta1) / (1 + beta1)) equals AdamP's sqrt(2 lr wd
    wd_ratio) at wd_W = wd_ratio * wd * (1 + beta1) / (1 - beta1) (1.9 wd at the defaults). Leading order in
    lr*wd. Derived here: docs/equilibrium.md §5.
    """
    if not 0 <= beta1 < 1:
        raise ConfigError(f"beta1={beta1!r}: expected a value in [0, 1)")
    return wd_ratio * weight_decay * (1 + beta1) / (1 - beta1)
