"""Projected gradient descent (PGD) attacks on images in [0, 1]: the paper's rule and a standard l2 variant.

The attack maximises the cross-entropy of the true label inside the threat set
``{x' : ||x' - x|| <= eps, 0 <= x' <= 1}`` (``||.||`` is l-inf or l2, per sample). One step from ``x_t``:

    g       = grad_x CE(model(x_t), y)
    x_{t+1} = clip_[0,1]( Proj_eps( x_t + step_size * d(g) ) )

with the step direction ``d`` chosen by ``step_rule``:

- ``"sign"``: ``d(g) = sign(g)`` for **both** norms. This is the rule of the codebase the project page links for its
  adversarial-training table (louis2889184/pytorch-adversarial-training @ 4c18cef, ``FastGradientSignUntargeted``;
  docs/paper.md §3), so its l2 "PGD" is a sign step followed by the l2 projection.
- ``"steepest"``: the steepest-ascent direction of the threat norm: ``sign(g)`` for l-inf, ``g / ||g||_2`` for l2
  (the standard l2 PGD of Madry et al., 2018). For l-inf it is the same attack as ``"sign"``.

``Proj_eps`` clips each coordinate to ``[x - eps, x + eps]`` (l-inf) or rescales the perturbation to norm ``eps``
when it is longer (l2). The random start (``random_start``) is, for ``"sign"``, the codebase's ``uniform(-eps, eps)``
per coordinate for both norms, clipped to [0, 1] and, as in the codebase, not projected before the first step
(for l2 it lies outside the ball until the first projection); for ``"steepest"`` with l2 it is a uniformly random
direction of length ``eps`` (on the sphere). With ``steps == 0`` the start is projected, so every returned point
lies in the threat set.

Contract with the trainer (checked by tests/test_attacks.py):

- The model takes ``x`` in [0, 1] with its normalisation inside; the attack never rescales inputs.
- Gradients are taken with ``torch.autograd.grad`` with respect to the input only: parameter ``.grad`` is
  never read or written, so an attack can run between a backward and an optimizer step.
- The model runs in the chosen BN mode (``bn_mode``) while the attack crafts, and every module's ``training``
  flag is put back exactly as found afterwards, also when the forward raises. With ``bn_mode="train"`` the
  batch statistics normalise but every buffer (BN running statistics) is restored after the attack, so only the
  training step's own forward updates them, as with ``bn_mode="eval"``.
- The loop allocates its state once per call and updates it in place; it never calls ``.item()`` (no host sync).
- The random start draws from the ``generator`` it is given (or torch's global RNG when ``None``); a generator
  on another device than ``x`` (e.g. a CPU generator for CUDA inputs) draws there and the noise is copied over,
  which makes the starts identical on CPU and GPU.

Restarts: restart 0 starts at ``x`` (``random_start=False``) or at a random start; every further restart starts
at a fresh random start. With ``restarts > 1`` or ``keep_best`` the attack returns, per sample, the first
candidate that the model misclassifies, else the candidate of highest loss (the candidates are the final iterate
of each restart, and with ``keep_best`` every iterate inside the threat set). Misclassification is judged by the
logits of the crafting forward passes, i.e. in ``bn_mode``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

NORMS = ("linf", "l2")
STEP_RULES = ("sign", "steepest")
BN_MODES = ("eval", "train")

# Guards the divisions by a per-sample norm (a zero perturbation or a zero gradient) against 0/0.
_TINY = 1e-12


@contextmanager
def module_modes(model: nn.Module, training: bool, restore_buffers: bool = False) -> Iterator[None]:
    """Run the block with ``model.train(training)``; afterwards put every module's flag back as it was.

    Flags are restored per module (not with one ``model.train(flag)``), so a model whose submodules were in mixed
    modes (e.g. frozen BN layers) comes back unchanged. ``restore_buffers`` also snapshots every buffer (BN running
    statistics, ``num_batches_tracked``) and copies it back, so forwards in train mode leave no trace.
    """
    flags = [(module, module.training) for module in model.modules()]
    saved = [(buf, buf.detach().clone()) for buf in model.buffers()] if restore_buffers else []
    try:
        model.train(training)
        yield
    finally:
        for module, flag in flags:
            module.training = flag
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def unwrap(model: nn.Module) -> nn.Module:
    # The attack's forwards are not training steps: calling the module inside DDP skips DDP's per-forward work
    # (reducer bookkeeping for a backward that never reaches the parameters; buffer broadcasts in train mode).
    return model.module if isinstance(model, DistributedDataParallel) else model


def per_sample_view(v: Tensor, like: Tensor) -> Tensor:
    """``v`` of shape (B,) viewed as (B, 1, ..., 1) to broadcast against ``like`` of shape (B, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class _BestCandidate:
    """Per-sample worst case over candidates: the first misclassified one, else the one of highest loss."""

    def __init__(self, x: Tensor):
        self.x = x.clone()  # every sample gets a candidate; the clone only guards against reading garbage
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), -math.inf, dtype=torch.float32, device=x.device)

    def update(self, x_cand: Tensor, logits: Tensor, loss: Tensor, y: Tensor) -> None:
        fooled = logits.argmax(dim=1).ne(y)
        loss = loss.float()
        better = (fooled | loss.gt(self.loss)).logical_and_(self.fooled.logical_not())
        torch.where(per_sample_view(better, x_cand), x_cand, self.x, out=self.x)
        torch.where(better, loss, self.loss, out=self.loss)
        self.fooled.logical_or_(fooled)


@dataclass(frozen=True)
class PGD:
    """PGD with cross-entropy on the true labels; ``__call__(model, x, y, generator)`` returns ``x_adv``.

    Args:
        norm: threat model, ``"linf"`` or ``"l2"`` (per-sample norm of the perturbation).
        eps: radius of the threat ball in [0, 1] pixel units (e.g. 4/255 for l-inf, 80/255 for l2), >= 0.
        step_size: length of one step (``alpha``; 2/255 in the codebase), >= 0.
        steps: gradient steps per restart, >= 0 (0 returns the start point).
        random_start: restart 0 starts at a random point (else at ``x``); further restarts always do.
        restarts: independent runs, >= 1; the per-sample worst case is returned.
        step_rule: ``"sign"`` (the codebase's rule, both norms) or ``"steepest"`` (see the module docstring).
        bn_mode: mode of the model while crafting: ``"eval"`` (running statistics; the codebase) or ``"train"``.
        keep_best: also consider every iterate inside the threat set, not only the final one of each restart.
    """

    norm: str
    eps: float
    step_size: float
    steps: int
    random_start: bool
    restarts: int = 1
    step_rule: str = "sign"
    bn_mode: str = "eval"
    keep_best: bool = False

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"Invalid attack norm: {self.norm!r}; expected one of {NORMS}")
        for name in ("eps", "step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < math.inf:
                raise ValueError(f"Invalid attack {name}: {value!r}; expected a finite number >= 0")
            object.__setattr__(self, name, float(value))
        for name, low in (("steps", 0), ("restarts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"Invalid attack {name}: {value!r}; expected an integer >= {low}")
            object.__setattr__(self, name, int(value))
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"Invalid attack step_rule: {self.step_rule!r}; expected one of {STEP_RULES}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"Invalid attack bn_mode: {self.bn_mode!r}; expected one of {BN_MODES}")
        for name in ("random_start", "keep_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Invalid attack {name}: {getattr(self, name)!r}; expected true or false")

    # ------------------------------------------------------------------------------------------ description
    @property
    def l2_steepest(self) -> bool:
        """Normalised-gradient steps and a random start on the eps sphere (the standard l2 PGD)."""
        return self.step_rule == "steepest" and self.norm == "l2"

    @property
    def direction(self) -> str:
        """The step direction actually used: ``sign(g)`` or ``g/||g||_2``."""
        return "g/||g||_2" if self.l2_steepest else "sign(g)"

    @property
    def start_distribution(self) -> str:
        if self.l2_steepest:
            return "x + eps * u, u uniform on the unit l2 sphere; clip [0,1]"
        return "x + uniform(-eps, eps) per coordinate; clip [0,1]" + (
            "; projected only by the first step" if self.norm == "l2" else ""
        )

    def describe(self) -> dict[str, Any]:
        """Every setting, plus what the settings imply, for ``summary.json``."""
        return {
            **asdict(self),
            "eps_x255": round(self.eps * 255, 6),
            "step_size_x255": round(self.step_size * 255, 6),
            "direction": self.direction,
            "start": self.start_distribution if self.random_start else "x (no random start)",
            "restart_start": self.start_distribution if self.restarts > 1 else None,
            "bn_running_stats": "unchanged by the attack"
            + (" (restored)" if self.bn_mode == "train" else ""),
            "loss": "cross_entropy(sum) on the true labels, untargeted",
            "box": [0.0, 1.0],
            "returns": (
                "per-sample worst case over restarts" + (" and iterates" if self.keep_best else "")
                if self.restarts > 1 or self.keep_best
                else "final iterate"
            ),
        }

    # ---------------------------------------------------------------------------------------------- attack
    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Adversarial examples for ``(x, y)``: same shape, dtype and memory format as ``x``, detached.

        ``x`` holds images in [0, 1], shape (B, ...); ``y`` the integer labels, shape (B,).
        """
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "PGD needs autograd, but torch.inference_mode() is on; call it under torch.no_grad() "
                "or with grad enabled instead"
            )
        x = x.detach()
        net = unwrap(model)
        track = self.restarts > 1 or self.keep_best
        with module_modes(model, self.bn_mode == "train", restore_buffers=self.bn_mode == "train"):
            with torch.enable_grad():
                return self._attack(net, x, y, generator, track)

    def _attack(
        self, net: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator | None, track: bool
    ) -> Tensor:
        x_adv = torch.empty_like(x)
        if self.norm == "linf":
            # The l-inf ball intersected with [0, 1] is one box: clip once per step against preallocated bounds.
            lo, hi = (x - self.eps).clamp_(min=0.0), (x + self.eps).clamp_(max=1.0)
            delta = None
        else:
            lo = hi = None
            delta = torch.empty_like(x)
        noise = self._noise_buffer(x, generator) if (self.random_start or self.restarts > 1) else None
        best = _BestCandidate(x) if track else None

        for restart in range(self.restarts):
            randomised = self.random_start or restart > 0
            if randomised:
                self._random_start(x, x_adv, noise, generator)
            else:
                x_adv.copy_(x)
            # Only iterates inside the threat set are candidates: the codebase's l2 start is not (see docstring).
            start_in_set = not randomised or self.norm == "linf" or self.l2_steepest
            if self.steps == 0:
                self._project(x_adv, x, lo, hi, delta)
            for t in range(self.steps):
                x_var = x_adv.detach().requires_grad_(True)
                logits = net(x_var)
                loss = F.cross_entropy(logits, y, reduction="none")
                # Sum, not mean: per-sample gradients independent of the batch size (directions are scale-free).
                (grad,) = torch.autograd.grad(loss.sum(), x_var)
                if best is not None and self.keep_best and (t > 0 or start_in_set):
                    best.update(x_adv, logits.detach(), loss.detach(), y)
                self._step(x_adv, grad)
                self._project(x_adv, x, lo, hi, delta)
            if best is not None:
                with torch.no_grad():
                    logits = net(x_adv)
                    best.update(x_adv, logits, F.cross_entropy(logits, y, reduction="none"), y)
        return x_adv if best is None else best.x

    def _noise_buffer(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        device = generator.device if generator is not None else x.device
        # Drawn in a contiguous buffer so the values do not depend on x's memory format.
        return torch.empty(x.shape, dtype=x.dtype, device=device)

    def _random_start(
        self, x: Tensor, x_adv: Tensor, noise: Tensor, generator: torch.Generator | None
    ) -> None:
        if self.l2_steepest:
            noise.normal_(generator=generator)
            dims = tuple(range(1, noise.dim()))
            norms = torch.linalg.vector_norm(noise, dim=dims).clamp_min_(_TINY)
            noise.mul_(per_sample_view(norms.reciprocal_().mul_(self.eps), noise))
        else:
            noise.uniform_(-self.eps, self.eps, generator=generator)
        torch.add(x, noise.to(x.device, non_blocking=True), out=x_adv)
        x_adv.clamp_(0.0, 1.0)

    def _step(self, x_adv: Tensor, grad: Tensor) -> None:
        if not self.l2_steepest:
            x_adv.add_(grad.sign_(), alpha=self.step_size)
        else:
            dims = tuple(range(1, grad.dim()))
            norms = torch.linalg.vector_norm(grad, dim=dims).clamp_min_(_TINY)
            x_adv.addcmul_(grad, per_sample_view(norms.reciprocal_(), grad), value=self.step_size)

    def _project(
        self, x_adv: Tensor, x: Tensor, lo: Tensor | None, hi: Tensor | None, delta: Tensor | None
    ) -> None:
        """In place: onto the eps ball around ``x``, then into [0, 1] (the codebase's order)."""
        if self.norm == "linf":
            torch.clamp(x_adv, lo, hi, out=x_adv)
            return
        torch.sub(x_adv, x, out=delta)
        dims = tuple(range(1, delta.dim()))
        norms = torch.linalg.vector_norm(delta, dim=dims).clamp_min_(_TINY)
        # Scale by min(1, eps/||delta||): only perturbations longer than eps are shrunk.
        delta.mul_(per_sample_view(norms.reciprocal_().mul_(self.eps).clamp_(max=1.0), delta))
        torch.add(x, delta, out=x_adv)
        x_adv.clamp_(0.0, 1.0)
