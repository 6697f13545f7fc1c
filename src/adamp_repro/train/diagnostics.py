"""Weight diagnostics: the mechanism of the paper, measured on the weights while a run trains.

For a scale-invariant weight w (a conv or linear weight followed by a normalisation layer) the loss gradient
is orthogonal to w, momentum grows ||w|| and the effective step size shrinks; SGDP/AdamP remove the radial
part of the update and keep ||w|| flat (arXiv 2006.08217v3, Sec. 2-3). Measured per weight tensor:

- ``weight_norm``: ||w||_2 over the whole tensor, at the end of the epoch.
- ``effective_step_size``: lr / ||w||_2^2 with the lr of the weight's param group at its last measured step.
  On a scale-invariant weight grad f(w) = grad f(w_hat) / ||w||, so one GD step turns w_hat by about lr ||grad
  f(w_hat)|| / ||w||^2: lr / ||w||^2 is the step size that acts on the direction. The paper says the effective
  step sizes are "inversely proportional to the weight norm" (project page; the v3 section text could not be
  retrieved here to check its exact definition). Adam's update does not scale with the gradient, so its
  angular step goes as lr / ||w||; we keep one definition for every optimizer so curves compare, and the
  figures say so.
- ``filter_norm`` and ``filter_effective_step_size``: the same two per output channel (the rows of the weight
  reshaped to (out_channels, -1)), averaged over the channels: mean_c ||w_c||_2 and lr x mean_c 1 / ||w_c||_2^2.
  A BatchNorm after a conv normalises each output channel, so each filter w_c is scale-invariant on its own
  (the optimizers' channel view). With Kaiming init a square 3x3 conv filter has ||w_c|| about sqrt(2) =
  1.41, the scale of the paper's ResNet-18 norm figure (about 1.3 at the start), whereas the whole-tensor norm
  grows with the number of channels; the paper does not say how it averages (docs/paper.md §4.3).
- ``abs_cos_max``: max over output channels of |cos(grad, w)| (the channel view of the optimizer's test),
  averaged over the epoch's measured steps.
- ``detected``: the share of the epoch's measured steps in which the official SGDP/AdamP test passed
  (channel view, then layer view: max |cos| < delta / sqrt(row length); adamp 0.3.0 ``_projection``). Both
  figures come from the optimizers' own test, ``optim.projection.scale_invariance_test``.
- ``followed_by_norm``: 1 when the weight's module feeds a normalisation layer (see ``normalised_weights``).
- ``filter_angle`` and ``filter_angle_rms`` (radians per step): the angle each filter w_c turns in one
  optimizer step, angle(w_c before, w_c after), measured at the sampled steps on the weights followed by a
  normalisation layer (NaN on the others); the mean and the root mean square over the filters and the epoch's
  sampled steps. The equilibrium formulas of the angular update (e.g. Wan et al. 2006.08419, Kosson et al.
  2305.17212) are of the RMS kind. Computed in float64 by the chord formula 2 atan2(||a - b||, ||a + b||) of
  the unit vectors a, b, exact to rounding at any angle (an fp32 arccos of a cosine near 1 is off by 1% at
  3e-3 rad and 100% at 1e-4 rad).
- ``filter_grad_norm_rms``: the root mean square over filters and sampled steps of ||g_c||, the loss gradient
  of the filter as the optimizer receives it (before its weight decay; a fp16 GradScaler's scale divided out),
  on the same weights: what SGD's equilibrium norm needs beside lr, momentum and weight decay.

NOTE: [which weights count as scale-invariant] The epoch summaries average the norm and the effective step
size over the weights *followed by a normalisation layer*, a fixed set read from the module structure once.
The optimizer's gradient test is noisy step to step and would make the averaged set change between steps and
optimizers; the structural set does not. ``detected_share`` reports the gradient test separately, weighted by
number of elements over all weights with ndim > 1 (the paper: "more than 90% of the weights in ResNet are
scale-invariant due to BN", abstract of 2006.08217v3).

Cost and purity: the gradient test runs every ``every_n_steps`` steps (and on the first step of each epoch);
the other steps return at once. A sampled step also keeps a copy of the weights followed by a normalisation
layer from ``before_step`` to ``after_step`` (one extra copy of those weights in memory, for one step) to
measure the angle. Everything runs under ``torch.no_grad`` on detached tensors (the copy is a new tensor),
uses no RNG and edits nothing in place, so training numbers are bit-for-bit those of a run without
diagnostics. Results stay on the device until ``epoch_end``, which does one host transfer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adamp_repro.optim.projection import scale_invariance_test
from adamp_repro.tracking.schema import SUMMARY_KEYS, strip_prefixes, summarise_rows

# The angle and gradient-norm accumulators of the resume state (``WeightDiagnostics._<name>``).
ANGLE_STATE = ("angle_sum", "angle_sq_sum", "angle_count", "grad_sq_sum", "grad_count")

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm, timm BatchNormAct2d
    nn.GroupNorm,
    nn.LayerNorm,  # also timm LayerNorm2d (a subclass)
)
# Modules that may sit between a weight and its normalisation layer without breaking scale invariance: each
# maps c*x to c*f(x) for c > 0 (identity, ReLU, pooling, dropout masks), so the composition stays invariant.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Identity,
    nn.ReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.modules.dropout._DropoutNd,
)
PASS_THROUGH_NAMES = frozenset({"DropBlock2d", "DropPath"})  # timm's stochastic-depth/drop-block modules
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "net.")  # DDP, torch.compile and the trainer's model wrapper


def display_name(name: str) -> str:
    """Parameter name without the wrapper prefixes (``module.net.layer1.0.conv1.weight`` -> ``layer1...``)."""
    return strip_prefixes(name, WRAPPER_PREFIXES)


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, PASS_THROUGH) or type(module).__name__ in PASS_THROUGH_NAMES


def normalised_weights(model: nn.Module) -> set[str]:
    """Names (as in ``model.named_parameters()``) of the weights whose module output feeds a norm layer.

    Rule, read from the registration order of each module's children (which mirrors the forward order in
    timm, torchvision and the paper's CIFAR networks): a child owning a ``weight`` with ndim > 1 is followed,
    after any pass-through siblings (ReLU, identity, pooling, dropout), by a sibling normalisation layer.
    So ResNet's ``conv -> bn`` pairs count, the classifier does not, and in a pre-activation block
    (``bn1 -> conv1 -> bn2 -> conv2`` then the residual sum) ``conv1`` counts and ``conv2`` does not.
    A structural rule, not a proof, and a conservative one: it misses weights made scale-invariant through
    longer paths (in the Madry WRN the stem conv and some residual-branch convs pass the gradient test while
    only each block's ``conv1`` is counted, 33% of the elements); the detection share shows both.

    Weight normalisation counts too, exactly: a module whose weight carries torch's weight-norm
    parametrisation (``torch.nn.utils.parametrizations.weight_norm``) computes ``w = g v / ||v||``, so its
    direction ``v`` (the parameter ``<module>.parametrizations.weight.original1``) is scale-invariant (per
    output row for ``dim=0``); the gain ``g`` (``original0``) is not.
    """
    names: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for tensor_name, chain in getattr(module, "parametrizations", {}).items():
            if any(type(step).__name__ == "_WeightNorm" for step in chain):
                names.add(f"{prefix}parametrizations.{tensor_name}.original1")
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for index, (child_name, child) in enumerate(children):
            weight = child._parameters.get("weight")
            if weight is None or weight.ndim < 2:
                continue
            for _, sibling in children[index + 1 :]:
                if _passes_through(sibling):
                    continue
                if isinstance(sibling, NORM_LAYERS):
                    prefix = f"{parent_name}." if parent_name else ""
                    names.add(f"{prefix}{child_name}.weight")
                break
    return names


class WeightDiagnostics:
    """Per-layer weight norms, effective step sizes and scale-invariance tests of a training run.

    Args:
        model: the trained module (the trainer's wrapper; wrapper prefixes are dropped from names).
        optimizer: any ``torch.optim.Optimizer``; the lr of each weight is read from its param group.
        every_n_steps: run the gradient test when ``step % every_n_steps == 0`` and on the first step after
            each ``epoch_end`` (so every epoch has at least one measurement).
        delta: the test threshold of the optimizers (adamp 0.3.0 default 0.1).
        eps: the cosine-similarity eps of the optimizers (adamp 0.3.0 default 1e-8).
        angles: measure the angular updates and gradient norms (their columns are NaN without); off only
            to time what they cost (``scripts/bench_trainer.py``).

    Call order per training step: backward, ``before_step(step)``, ``optimizer.step()``, ``after_step(step)``;
    per epoch: ``epoch_end(epoch)``. ``before_step`` takes the GradScaler's scale when the gradients it sees
    are still scaled (fp16 without clipping), so that the gradient norms are those of the loss.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        every_n_steps: int = 50,
        delta: float = 0.1,
        eps: float = 1e-8,
        angles: bool = True,
    ):
        if every_n_steps < 1:
            raise ValueError(f"Invalid every_n_steps: {every_n_steps}; expected an integer >= 1")
        if delta <= 0:
            raise ValueError(f"Invalid delta: {delta}; expected > 0")
        self.every_n_steps = int(every_n_steps)
        self.delta = float(delta)
        self.eps = float(eps)
        self.angles = bool(angles)
        self.optimizer = optimizer
        normalised = normalised_weights(model)
        named = [(name, p) for name, p in model.named_parameters() if p.ndim > 1]
        self.names = [display_name(name) for name, _ in named]
        self.params = [p for _, p in named]
        self.followed_by_norm = [name in normalised for name, _ in named]
        self.numels = [p.numel() for p in self.params]
        self.row_lengths = [p[0].numel() if p.shape[0] else 0 for p in self.params]
        group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        self._group = [group_of.get(id(p)) for p in self.params]
        self._device = self.params[0].device if self.params else torch.device("cpu")
        self._nan = torch.full((), math.nan, dtype=torch.float64, device=self._device)
        self._zero = torch.zeros((), dtype=torch.float64, device=self._device)
        # Copies of the weights followed by a normalisation layer, kept from before_step to after_step of a
        # sampled step (None elsewhere), and whether each one's gradient was finite at that step.
        self._before: list[torch.Tensor | None] | None = None
        self._grad_finite: list[torch.Tensor | None] = [None] * len(self.params)
        self._reset_epoch()
        self._measure_next = True  # the first step of the run, and of every epoch, is measured
        self._measured_step: int | None = None
        self._last_step = -1
        self._lr: list[float | torch.Tensor] = [math.nan] * len(self.params)
        # Built before a checkpoint is loaded, so on a resumed run too these are the seed's initial weights.
        self.at_init = self.norms_now()

    @torch.no_grad()
    def norms_now(self) -> dict[str, float]:
        """``mean_weight_norm`` and ``mean_filter_norm`` of the weights followed by a normalisation layer,
        as they are now (one host sync); NaN when there are none."""
        chosen = [p for p, followed in zip(self.params, self.followed_by_norm) if followed]
        if not chosen:
            return {"mean_weight_norm": math.nan, "mean_filter_norm": math.nan}
        pairs = [torch.stack([_tensor_norm(p), _filter_norms(p).mean()]).to(self._device) for p in chosen]
        tensor_mean, filter_mean = torch.stack(pairs).mean(0).tolist()
        return {"mean_weight_norm": tensor_mean, "mean_filter_norm": filter_mean}

    def _reset_epoch(self) -> None:
        # Device accumulators over the epoch's measured steps: sum of channel-view max |cos|, number of passed
        # tests, number of finite tests (an AMP step with inf grads gives NaN: left out, not averaged in).
        self._cos_sum = torch.zeros(len(self.params), dtype=torch.float64, device=self._device)
        self._detected_sum = torch.zeros_like(self._cos_sum)
        self._count = torch.zeros_like(self._cos_sum)
        # Angular updates and gradient norms per filter, over the measured (filter, step) pairs of the weights
        # followed by a normalisation layer: sum of angles, of squared angles, their count; sum of ||g_c||^2
        # and its count.
        self._angle_sum = torch.zeros_like(self._cos_sum)
        self._angle_sq_sum = torch.zeros_like(self._cos_sum)
        self._angle_count = torch.zeros_like(self._cos_sum)
        self._grad_sq_sum = torch.zeros_like(self._cos_sum)
        self._grad_count = torch.zeros_like(self._cos_sum)

    def _due(self, step: int) -> bool:
        return self._measure_next or step % self.every_n_steps == 0

    @torch.no_grad()
    def before_step(self, step: int, grad_scale: float | torch.Tensor | None = None) -> None:
        """Run the optimizer's scale-invariance test on the current gradients (after backward); on the weights
        followed by a normalisation layer, add up the per-filter gradient norms (divided by ``grad_scale``
        when given: the GradScaler's scale of still-scaled gradients) and keep a copy of the weights for
        ``after_step``'s angle."""
        if not self.params or not self._due(step):
            return
        if self.angles:
            self._measure_angles(grad_scale)
        cos, detected = [], []
        for p in self.params:
            if p.grad is None:  # NaN marks "no test": left out of the counts below, like a non-finite test
                cos.append(self._nan)
                detected.append(self._nan)
                continue
            test = scale_invariance_test(p.detach(), p.grad.detach(), self.delta, self.eps)
            cos.append(test.channel_cos.to(self._device, torch.float64))
            detected.append(test.passed.to(self._device, torch.float64))
        # Whole-vector updates, no index tensor: building one from a host list would be a blocking copy.
        cos_t = torch.stack(cos)
        finite = torch.isfinite(cos_t)
        self._cos_sum += torch.where(finite, cos_t, 0.0)
        self._detected_sum += torch.where(finite, torch.stack(detected), 0.0)
        self._count += finite
        self._measured_step = step
        self._measure_next = False

    def _measure_angles(self, grad_scale: float | torch.Tensor | None) -> None:
        before: list[torch.Tensor | None] = []
        grad_sq, grad_n = [], []
        for i, p in enumerate(self.params):
            self._grad_finite[i] = None
            if not self.followed_by_norm[i] or p.grad is None:  # no gradient: no step to measure
                before.append(None)
                grad_sq.append(self._zero)
                grad_n.append(self._zero)
                continue
            before.append(p.detach().clone())
            g = p.grad.detach().reshape(p.shape[0], -1).to(self._device, torch.float64)
            if grad_scale is not None:
                g = g / grad_scale  # a 0-dim tensor or a float: g stays float64
            sq = g.pow(2).sum(dim=1)  # ||g_c||^2 per filter
            finite = torch.isfinite(sq).all()  # a skipped fp16 step (inf grads) is left out, its angle too
            self._grad_finite[i] = finite
            grad_sq.append(torch.where(finite, sq.sum(), 0.0))
            grad_n.append(finite.to(torch.float64) * sq.numel())
        self._grad_sq_sum += torch.stack(grad_sq)
        self._grad_count += torch.stack(grad_n)
        self._before = before

    def after_step(self, step: int) -> None:
        """Record the lr each weight was just updated with (read before a scheduler changes it) and, on a
        sampled step, the angle each filter turned."""
        self._last_step = step
        if self._measured_step != step:
            return
        if self._before is not None:
            self._add_angles(self._before)
            self._before = None
        groups = self.optimizer.param_groups
        # A tensor lr (capturable optimizers) is kept as a tensor: reading it here would sync the host.
        self._lr = [math.nan if g is None else _detached(groups[g]["lr"]) for g in self._group]

    @torch.no_grad()
    def _add_angles(self, before: list[torch.Tensor | None]) -> None:
        angle_sum, angle_sq, angle_n = [], [], []
        for i, (p, old) in enumerate(zip(self.params, before)):
            if old is None:
                angle_sum.append(self._zero)
                angle_sq.append(self._zero)
                angle_n.append(self._zero)
                continue
            angles = filter_angles(old, p.detach()).to(self._device)
            ok = torch.isfinite(angles) & self._grad_finite[i]
            angle_sum.append(torch.where(ok, angles, 0.0).sum())
            angle_sq.append(torch.where(ok, angles.pow(2), 0.0).sum())
            angle_n.append(ok.sum().to(torch.float64))
        self._angle_sum += torch.stack(angle_sum)
        self._angle_sq_sum += torch.stack(angle_sq)
        self._angle_count += torch.stack(angle_n)
        self._grad_finite = [None] * len(self.params)

    @torch.no_grad()
    def epoch_end(self, epoch: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Summary of the epoch and its per-layer rows (keys ``tracking.schema.ROW_KEYS``); one host sync.

        Summary keys: ``mean_weight_norm``, ``effective_step_size``, ``mean_filter_norm`` and
        ``filter_effective_step_size`` (means over the weights followed by a normalisation layer, NaN when
        there are none), ``detected_share`` (share of the elements of all
        ndim > 1 weights that passed the test, averaged over the epoch's measured steps) and
        ``mean_abs_cos`` (mean over those weights of their epoch-mean channel-view max |cos|),
        ``mean_filter_angle``, ``rms_filter_angle`` and ``rms_filter_grad_norm`` (over the weights followed
        by a normalisation layer: ``tracking.schema.summarise_rows``).
        """
        if not self.params:
            self._measure_next = True
            return dict.fromkeys(SUMMARY_KEYS, math.nan), []
        norms = torch.stack([_tensor_norm(p).to(self._device) for p in self.params])
        filters = [_filter_norms(p).to(self._device) for p in self.params]
        filter_mean = torch.stack([f.mean() for f in filters])
        inv_sq_mean = torch.stack([torch.where(f > 0, f.pow(-2), math.nan).nanmean() for f in filters])
        angle_n, grad_n = self._angle_count, self._grad_count
        angle_mean = torch.where(angle_n > 0, self._angle_sum / angle_n, math.nan)
        angle_rms = torch.where(angle_n > 0, self._angle_sq_sum / angle_n, math.nan).sqrt()
        grad_rms = torch.where(grad_n > 0, self._grad_sq_sum / grad_n, math.nan).sqrt()
        per_param = [norms, filter_mean, inv_sq_mean, self._cos_sum, self._detected_sum, self._count]
        per_param += [angle_mean, angle_rms, grad_rms]
        stacked = list(per_param)
        tensor_lr = [i for i, v in enumerate(self._lr) if torch.is_tensor(v)]
        if tensor_lr:
            stacked.append(torch.stack([self._lr[i].to(self._device, torch.float64) for i in tensor_lr]))
        host = torch.cat(stacked).cpu().tolist()  # the one host sync of the epoch
        p_count = len(self.params)
        parts = [host[k * p_count : (k + 1) * p_count] for k in range(len(per_param))]
        norms_h, filter_h, inv_sq_h, cos_sum, det_sum, counts, angle_h, angle_rms_h, grad_rms_h = parts
        lr_h = list(self._lr)
        for offset, i in enumerate(tensor_lr):
            lr_h[i] = host[len(parts) * p_count + offset]
        rows = []
        for i, name in enumerate(self.names):
            n = counts[i]
            rows.append(
                {
                    "epoch": epoch,
                    "step": self._last_step,
                    "param": name,
                    "numel": self.numels[i],
                    "weight_norm": norms_h[i],
                    "effective_step_size": lr_h[i] / norms_h[i] ** 2 if norms_h[i] > 0 else math.nan,
                    "filter_norm": filter_h[i],
                    "filter_effective_step_size": lr_h[i] * inv_sq_h[i],
                    "abs_cos_max": cos_sum[i] / n if n else math.nan,
                    "detected": det_sum[i] / n if n else math.nan,
                    "followed_by_norm": int(self.followed_by_norm[i]),
                    "filter_angle": angle_h[i],
                    "filter_angle_rms": angle_rms_h[i],
                    "filter_grad_norm_rms": grad_rms_h[i],
                    "row_length": self.row_lengths[i],
                }
            )
        summary = summarise_rows(rows)
        self._reset_epoch()
        self._measure_next = True
        return summary, rows

    def state_dict(self) -> dict[str, Any]:
        """Mid-epoch accumulators, so a resume mid-epoch reports the same epoch rows (host tensors only)."""
        lr = [float(v) if torch.is_tensor(v) else v for v in self._lr]
        return {
            "cos_sum": self._cos_sum.cpu(),
            "detected_sum": self._detected_sum.cpu(),
            "count": self._count.cpu(),
            **{key: getattr(self, f"_{key}").cpu() for key in ANGLE_STATE},
            "measure_next": self._measure_next,
            "last_step": self._last_step,
            "lr": lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if len(state["count"]) != len(self.params):
            raise ValueError(
                f"Diagnostics state has {len(state['count'])} weights, this model {len(self.params)}"
            )
        self._cos_sum = state["cos_sum"].to(self._device, torch.float64)
        self._detected_sum = state["detected_sum"].to(self._device, torch.float64)
        self._count = state["count"].to(self._device, torch.float64)
        for key in ANGLE_STATE:  # a checkpoint written before the angles existed starts them at zero
            if key in state:
                setattr(self, f"_{key}", state[key].to(self._device, torch.float64))
        self._measure_next = bool(state["measure_next"])
        self._last_step = int(state["last_step"])
        self._lr = [float(v) for v in state["lr"]]


def _tensor_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of the whole ``weight`` (in its dtype), as float64 on the weight's device."""
    return weight.detach().norm().to(torch.float64)


def _filter_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output channel of ``weight`` (dim 0), in float64 on the weight's device."""
    return weight.detach().reshape(weight.shape[0], -1).to(torch.float64).norm(dim=1)


def filter_angles(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Angle (radians) between each output channel of ``before`` and of ``after`` (same shape, dim 0 the
    channels), shape (channels,), float64 on their device; NaN for a channel that is zero in either.

    Chord formula 2 atan2(||a - b||, ||a + b||) on the float64 unit vectors a, b: accurate to rounding at every
    angle, where arccos(cos) loses half the digits near 0."""
    a = before.detach().reshape(before.shape[0], -1).to(torch.float64)
    b = after.detach().reshape(after.shape[0], -1).to(torch.float64)
    norm_a, norm_b = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    a, b = a / norm_a, b / norm_b  # 0/0 = NaN for a zero channel, kept as NaN below
    return 2.0 * torch.atan2((a - b).norm(dim=1), (a + b).norm(dim=1))


def _detached(value: Any) -> float | torch.Tensor:
    return value.detach().clone() if torch.is_tensor(value) else float(value)
