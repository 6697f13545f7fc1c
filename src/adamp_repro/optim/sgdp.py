"""SGDP: momentum SGD with the scale-invariance projection and ratio-scaled decoupled weight decay.

Provenance: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv 2006.08217 (Algorithm 1). Checked against the official package ``adamp==0.3.0``
(clovaai/AdamP, ``adamp.SGDP``), which tests/test_optim_parity.py runs as the oracle; the operation order of
the reference form follows that code.

NOTE: [projection scope] (stated once in ``adamp_repro.optim.projection``): weights with ndim > 1 are tested
against the gradient, in the channel view then the layer view; a passing weight has its update projected and
its weight decay multiplied by ``wd_ratio``. Biases, norm gains and 0-dim parameters are never projected and
get the full ``weight_decay`` of their group. Without nesterov the update *is* the momentum buffer, and the
official code projects it in place, so the stored momentum is the projected one (kept by default here,
``project_buffer=False`` projects a copy as timm >= PR #2675 does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required

from adamp_repro.optim import fused_cpu
from adamp_repro.optim.base import (
    LOW_PRECISION,
    ProjectedOptimizer,
    compiled_kernel,
    fused_kernels_support,
    projects,
    state_dtype,
)
from adamp_repro.optim.hyperparams import HYPERPARAMETERS
from adamp_repro.optim.projection import (
    RowLayout,
    fold_projection,
    has_row_blocks,
    project_reference,
    projection_row_factors,
    row_statistics,
    row_view,
    view_thresholds,
)

__all__ = ["SGDP"]


class SGDP(ProjectedOptimizer):
    r"""SGDP (arXiv 2006.08217, Algorithm 1), numerically matching ``adamp==0.3.0``.

    For each parameter :math:`w` with gradient :math:`g` (buffer :math:`b_0 = 0`):

    .. math::
        b_t &= \mu\, b_{t-1} + (1-\tau)\, g_t \\
        d_t &= g_t + \mu\, b_t \ \text{(nesterov)} \quad\text{or}\quad d_t = b_t \\
        d_t &\leftarrow d_t - \hat w\,\langle \hat w, d_t\rangle,\ \ \hat w = w / (\lVert w\rVert + \epsilon),
              \ \ r = \text{wd\_ratio} \quad \text{if } \max_{\text{rows}} |\cos(g_t, w)| < \delta/\sqrt{K}
              \text{ (else } r = 1) \\
        w &\leftarrow w\,\bigl(1 - \eta\,\lambda\,r / (1-\mu)\bigr) - \eta\, d_t

    The decay is decoupled and divided by :math:`1-\mu` so its strength matches L2 decay seen through the
    momentum buffer; it applies only when :math:`\lambda > 0`. The first step gives :math:`(1-\tau) g_1`
    (``torch.optim.SGD`` gives :math:`g_1`; they differ only with dampening).

    Args:
        params: iterable of parameters, (name, parameter) pairs or param-group dicts (each group may
            override any option below).
        lr: learning rate :math:`\eta`, finite and >= 0. Required, as in the official class: torch's
            ``required`` sentinel is the default, so ``SGDP([{"params": ps, "lr": 0.1}])`` works and a group
            with no lr of its own and no default raises torch's "didn't specify a value" error.
        momentum: :math:`\mu` in [0, 1) (default 0; 1 would divide the decay by zero).
        dampening: :math:`\tau` in [0, 1] (default 0).
        weight_decay: decoupled decay :math:`\lambda` in torch units (default 0), finite and >= 0.
        nesterov: Nesterov momentum (default False); needs momentum > 0 and dampening 0.
        eps: added to the row norm of :math:`\hat w` and the norm clamp of the cosine (default 1e-8), finite
            and >= 0 (0 gives no NaN: a zero row makes its cosine NaN, which fails the test, so no zero norm
            is ever divided by).
        delta: threshold :math:`\delta` of the scale-invariance test (default 0.1), finite and > 0.
        wd_ratio: weight-decay multiplier for weights that pass the test (default 0.1), finite and >= 0.
        foreach: None (default) -> the fused C++ kernels for fp32 CPU parameters (``fused_cpu``; compiled on
            first use, cached; ``ADAMP_REPRO_FUSED_CPU=0`` disables them) and the multi-tensor fast form for
            the rest; True -> the multi-tensor fast form; False -> one parameter at a time in the official
            operation order (bit-exact with adamp 0.3.0 in fp32).
        compile: True -> per-parameter ``torch.compile`` kernels on CPU; falls back to the fast form with a
            warning if the compiler fails.
        project_buffer: without nesterov, project the momentum buffer in place as adamp 0.3.0 does (default
            True); False projects a copy and keeps the plain heavy-ball buffer.
        projection: test and project the weights (default True). False: no weight is ever projected and
            every one gets the full decay, w <- w (1 - lr wd / (1 - momentum)) - lr d_t, i.e. momentum SGD with
            this decoupled decay (``torch.optim.SGD`` itself at weight_decay 0); the same as the official class
            with delta=0, whose test ``max|cos| < 0`` never passes. The ablation of the projection alone.

    State per parameter (same key as the official package): ``momentum`` (allocated even when momentum is 0,
    as there), in fp32 for fp16/bf16 parameters, whose step every form computes in fp32 and rounds once
    (NOTE: [low-precision state] in ``base.py``; ``torch.optim.SGD`` keeps the buffer in the param dtype).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = required,  # type: ignore[assignment]  # torch's sentinel, as in adamp.SGDP
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        foreach: bool | None = None,
        compile: bool = False,
        project_buffer: bool = True,
        projection: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
            foreach=foreach,
            compile=compile,
            project_buffer=project_buffer,
            projection=projection,
        )
        super().__init__(params, defaults)

    def _late_defaults(self) -> dict[str, Any]:
        return {**super()._late_defaults(), "project_buffer": True}

    def _check_group(self, group: dict[str, Any]) -> None:
        HYPERPARAMETERS["sgdp"].check(group)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"Invalid nesterov with momentum={group['momentum']!r} and dampening="
                f"{group['dampening']!r}; nesterov requires momentum > 0 and dampening = 0"
            )

    def _init_state(self, group: dict[str, Any], p: Tensor) -> None:
        buffer = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
        self.state[p]["momentum"] = buffer

    @staticmethod
    def _decays(group: dict[str, Any]) -> tuple[float, float]:
        """(projected, plain) decay factors in Python double, as the official code computes them."""
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        if wd > 0:
            return 1 - lr * wd * group["wd_ratio"] / (1 - momentum), 1 - lr * wd * 1 / (1 - momentum)
        return 1.0, 1.0

    # --- reference form: official operation order, one parameter --------------------------------------

    def _reference_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        buf = self._state_of(p)["momentum"]
        if p.dtype not in LOW_PRECISION:
            self._reference_math(group, p, g, buf)
            return
        p32, buf32 = p.float(), buf.float()  # the buffer is fp32 already (NOTE: [low-precision state])
        self._reference_math(group, p32, g.float(), buf32)
        p.copy_(p32)
        if buf32 is not buf:
            buf.copy_(buf32)

    def _reference_math(self, group: dict[str, Any], p: Tensor, g: Tensor, buf: Tensor) -> None:
        momentum = group["momentum"]
        buf.mul_(momentum).add_(g, alpha=1 - group["dampening"])
        if group["nesterov"]:
            d_p = g + momentum * buf
        else:
            d_p = buf if group["project_buffer"] else buf.clone()
        decay_projected, decay_plain = self._decays(group)
        if projects(group, p):
            projected = project_reference(p, g, d_p, group["delta"], group["eps"])
            if group["weight_decay"] > 0:
                factor = torch.full((), decay_projected, dtype=p.dtype, device=p.device)
                p.mul_(torch.where(projected, factor, decay_plain))
        elif group["weight_decay"] > 0:
            p.mul_(decay_plain)
        p.add_(d_p, alpha=-group["lr"])

    # --- fast form: multi-tensor --------------------------------------------------------------------

    def _fast_bucket(
        self, group: dict[str, Any], layout: RowLayout | None, params: list[Tensor], grads: list[Tensor]
    ) -> None:
        bufs = [self._state_of(p)["momentum"] for p in params]
        # torch.optim.SGD's fused kernel has the official buffer update when momentum > 0 (the buffer starts
        # at zero and is_first_step=False); with momentum 0 it would skip the buffer the official code keeps.
        fused = group["momentum"] > 0 and fused_kernels_support(params[0].device, params[0].dtype)
        plain = [i for i, p in enumerate(params) if not projects(group, p)]
        candidates = [i for i, p in enumerate(params) if projects(group, p)]
        if plain:
            self._plain_step(
                group, [params[i] for i in plain], [grads[i] for i in plain], [bufs[i] for i in plain], fused
            )
        if not candidates:
            return
        params, grads, bufs = ([seq[i] for i in candidates] for seq in (params, grads, bufs))
        if group["nesterov"] or not group["project_buffer"]:
            directions = self._scaled_directions(group, params, grads, bufs, fused)
            self._apply_direction(group, layout, params, grads, directions, *self._decays(group))
        else:
            self._update_buffers(group, grads, bufs)
            self._apply_to_buffers(group, layout, params, grads, bufs, *self._decays(group))

    def _plain_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        fused: bool,
    ) -> None:
        """Never-projected parameters: w <- decay_plain * w - lr * d (official order: decay, then step)."""
        lr, decay_plain = group["lr"], self._decays(group)[1]
        if group["weight_decay"] > 0:
            torch._foreach_mul_(params, decay_plain)
        if fused:
            torch._fused_sgd_(
                params,
                grads,
                bufs,
                weight_decay=0.0,
                momentum=group["momentum"],
                lr=lr,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=False,
                is_first_step=False,
            )
        elif group["nesterov"]:
            torch._foreach_add_(params, self._scaled_directions(group, params, grads, bufs, fused))
        else:
            self._update_buffers(group, grads, bufs)
            torch._foreach_add_(params, bufs, alpha=-lr)

    def _scaled_directions(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        fused: bool,
    ) -> list[Tensor]:
        """Update the buffers; return -lr * d_t in scratch buffers (d_t = g + mu b_t, or a copy of b_t)."""
        momentum, lr = group["momentum"], group["lr"]
        directions = self._scratch_for(params)
        if fused:
            # The fused SGD kernel on a zeroed buffer in place of the weights: one pass updates the momentum
            # and leaves -lr * d_t in the buffer.
            torch._foreach_zero_(directions)
            torch._fused_sgd_(
                directions,
                grads,
                bufs,
                weight_decay=0.0,
                momentum=momentum,
                lr=lr,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=False,
                is_first_step=False,
            )
            return directions
        self._update_buffers(group, grads, bufs)
        for g, b, d in zip(grads, bufs, directions):
            if group["nesterov"]:
                torch.add(g, b, alpha=momentum, out=d)
            else:
                d.copy_(b)
        torch._foreach_mul_(directions, -lr)
        return directions

    @staticmethod
    def _update_buffers(group: dict[str, Any], grads: list[Tensor], bufs: list[Tensor]) -> None:
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])

    def _apply_to_buffers(
        self,
        group: dict[str, Any],
        layout: RowLayout,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        decay_projected: float,
        decay_plain: float,
    ) -> None:
        """Official non-nesterov SGDP on candidates: project the buffers in place, w <- decay * w - lr * b."""
        stats = row_statistics(layout, params, grads, bufs)
        coef, decay = projection_row_factors(layout, stats, group["eps"], decay_projected, decay_plain)
        for p, b, c in zip(params, bufs, layout.split(coef)):
            b.addcmul_(p, c, value=-1)
        if group["weight_decay"] > 0:
            for p, factor in zip(params, decay.unbind()):
                p.mul_(factor)
        torch._foreach_add_(params, bufs, alpha=-group["lr"])

    # --- fused form: C++ kernels for fp32 CPU parameters (fused_cpu) ---------------------------------

    def _fused_cpu_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        lr, delta = group["lr"], group["delta"]
        tensors, rows, scalars = [], [], []
        for p, g in zip(params, grads):
            tensors.append((p, g, self._state_of(p)["momentum"], None))
            if projects(group, p):
                rows.append(p.shape[0])
                scalars.extend((-lr, 1.0, *view_thresholds(p.shape, delta)))
            else:
                rows.append(0)
                scalars.extend((-lr, 1.0, 0.0, 0.0))
        hyper = (0.0, 0.0, group["eps"], *self._decays(group), group["momentum"], group["dampening"])
        fused_cpu.step(
            fused_cpu.KIND_SGD,
            tensors,
            rows,
            scalars,
            hyper,
            group["nesterov"],
            project_buffer=bool(group["project_buffer"]) and not group["nesterov"],
        )

    # --- compiled form: one fused kernel pair per parameter (CPU) -------------------------------------

    def _compiled_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        candidate = projects(group, p)
        if not (has_row_blocks(p) if candidate else p.is_contiguous() and p.numel() > 0):
            self._reference_update(group, p, g)  # the kernel writes through views; no copy allowed here
            return
        thresholds = view_thresholds(p.shape, group["delta"]) if candidate else (0.0, 0.0)
        scalars = torch.tensor([group["lr"], *self._decays(group), *thresholds], dtype=torch.float64)
        tensors = (p, g, self._state_of(p)["momentum"])
        views = [row_view(t) for t in tensors] if candidate else [t.view(-1) for t in tensors]
        options = (
            float(group["momentum"]),
            float(group["dampening"]),
            float(group["eps"]),
            bool(group["nesterov"]),
            bool(group["project_buffer"]),
        )
        compiled_kernel(_sgdp_kernel, candidate)(*views, scalars, *options)


def _sgdp_kernel(
    p: Tensor,
    g: Tensor,
    buf: Tensor,
    scalars: Tensor,
    momentum: float,
    dampening: float,
    eps: float,
    nesterov: bool,
    project_buffer: bool,
    rows: bool,
) -> None:
    """One parameter's SGDP step in functional form for Inductor (tensors are (C, K) rows or flat).

    ``scalars`` (float64): lr, projected decay, plain decay, channel and layer thresholds.
    """
    acc = torch.promote_types(p.dtype, torch.float32)
    p32, g32 = p.to(acc), g.to(acc)
    buf32 = buf.to(acc) * momentum + g32 * (1 - dampening)
    direction = g32 + momentum * buf32 if nesterov else buf32
    lr = scalars[0].to(acc)
    if rows:
        coef, projected = fold_projection(
            p32, g32, direction, scalars[3].to(p.dtype), scalars[4].to(p.dtype), eps
        )
        direction = direction - coef * p32
        decay = torch.where(projected, scalars[1], scalars[2]).to(acc)
    else:
        decay = scalars[2].to(acc)
    buf.copy_(direction if not nesterov and project_buffer else buf32)
    p.copy_(p32 * decay - lr * direction)
