"""AdamP: Adam with the scale-invariance projection and ratio-scaled decoupled weight decay.

Provenance: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights", ICLR 2021, arXiv 2006.08217 (Algorithm 2). Checked against the official package ``adamp==0.3.0``
(clovaai/AdamP, ``adamp.AdamP``), which tests/test_optim_parity.py runs as the oracle; the operation order of
the reference form follows that code.

NOTE: [projection scope] (stated once in ``adamp_repro.optim.projection``): weights with ndim > 1 are tested
against the gradient, in the channel view then the layer view; a passing weight has its update projected and
its weight decay multiplied by ``wd_ratio``. Biases, norm gains and 0-dim parameters are never projected and
get the full ``weight_decay`` of their group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from adamp_repro.optim import fused_cpu
from adamp_repro.optim.base import (
    LOW_PRECISION,
    ProjectedOptimizer,
    compiled_kernel,
    fused_kernels_support,
    projects,
    state_dtype,
    step_tensors,
)
from adamp_repro.optim.hyperparams import HYPERPARAMETERS
from adamp_repro.optim.projection import (
    RowLayout,
    fold_projection,
    has_row_blocks,
    project_reference,
    row_view,
    view_thresholds,
)

__all__ = ["AdamP"]


class AdamP(ProjectedOptimizer):
    r"""AdamP (arXiv 2006.08217, Algorithm 2), numerically matching ``adamp==0.3.0``.

    For each parameter :math:`w` with gradient :math:`g` at step :math:`t`:

    .. math::
        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
        D_t &= \sqrt{v_t} / \sqrt{1-\beta_2^t} + \epsilon \\
        u_t &= m_t / D_t \quad\text{or, with nesterov,}\quad (\beta_1 m_t + (1-\beta_1) g_t) / D_t \\
        u_t &\leftarrow u_t - \hat w\,\langle \hat w, u_t\rangle,\ \ \hat w = w / (\lVert w\rVert + \epsilon),
              \ \ r = \text{wd\_ratio} \quad \text{if } \max_{\text{rows}} |\cos(g_t, w)| < \delta/\sqrt{K}
              \text{ (else } r = 1) \\
        w &\leftarrow w \,(1 - \eta\,\lambda\,r) - \frac{\eta}{1-\beta_1^t}\, u_t

    The test and the projection use the pre-decay weight, rows = output channels then the whole tensor
    (NOTE: [projection scope] in ``projection.py``); decay is decoupled (AdamW style) and applied only when
    :math:`\lambda > 0`.

    Args:
        params: iterable of parameters, (name, parameter) pairs or param-group dicts (each group may
            override any option below).
        lr: learning rate :math:`\eta` (default 1e-3), finite and >= 0.
        betas: :math:`(\beta_1, \beta_2)` of the first and second moment averages (default (0.9, 0.999)),
            each in [0, 1).
        eps: :math:`\epsilon` (default 1e-8), finite and > 0 (nonzero in fp32); added to the denominator, to
            the row norm of :math:`\hat w`, and the norm clamp of the cosine. eps = 0 is refused although the
            official class takes it: :math:`D_t = 0` wherever a gradient entry has been 0 at every step so far
            (a dead unit, an unused embedding row), and the step there is 0/0 = NaN.
        weight_decay: decoupled decay :math:`\lambda` in torch units (multiplied by lr; default 0), finite and
            >= 0.
        delta: threshold :math:`\delta` of the scale-invariance test (default 0.1), finite and > 0.
        wd_ratio: weight-decay multiplier for weights that pass the test (default 0.1), finite and >= 0.
        nesterov: use the Nesterov numerator :math:`\beta_1 m_t + (1-\beta_1) g_t` (default False; no
            NAdam schedule, as in the official code).
        foreach: None (default) -> the fused C++ kernels for fp32 CPU parameters (``fused_cpu``; compiled on
            first use, cached; ``ADAMP_REPRO_FUSED_CPU=0`` disables them) and the multi-tensor fast form for
            the rest; True -> the multi-tensor fast form; False -> one parameter at a time in the official
            operation order (bit-exact with adamp 0.3.0 in fp32).
        compile: True -> per-parameter ``torch.compile`` kernels on CPU (a one-off compile of ~10-30 s; slower
            than the fused default on fp32); falls back to the fast form with a warning if the compiler fails.
        projection: test and project the weights (default True). False: no weight is ever projected and every
            one gets the full decay, w <- w (1 - lr wd) - lr/(1-beta1^t) u_t, i.e. AdamW with this decay (with
            nesterov off); the same as the official class with delta=0, whose test ``max|cos| < 0`` never
            passes. The ablation of the projection alone.

    State per parameter (same keys as the official package): ``step`` (Python int), ``exp_avg``,
    ``exp_avg_sq`` (param strides; param dtype, but fp32 for fp16/bf16 parameters). fp16/bf16 parameters:
    every form computes the update in fp32 and rounds the weight once (NOTE: [low-precision state] in
    ``base.py``). The official code and ``torch.optim.Adam`` keep fp16 moments, where ``v`` underflows to 0
    for typical gradients (|g| ~ 1e-3) and the step becomes m / eps, and eps=1e-8 itself underflows, so a
    zero-gradient row is 0/0. The fast form keeps one extra parameter-sized buffer (two with nesterov) so that
    no weight-sized temporaries are allocated per step.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        foreach: bool | None = None,
        compile: bool = False,
        projection: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            foreach=foreach,
            compile=compile,
            projection=projection,
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        HYPERPARAMETERS["adamp"].check(group)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> None:
        state = self.state[p]
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)

    @staticmethod
    def _decays(group: dict[str, Any]) -> tuple[float, float]:
        """(projected, plain) decay factors in Python double, as the official code computes them."""
        lr, wd = group["lr"], group["weight_decay"]
        if wd > 0:
            return 1 - lr * wd * group["wd_ratio"], 1 - lr * wd
        return 1.0, 1.0

    # --- reference form: official operation order, one parameter --------------------------------------

    def _reference_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        state = self._state_of(p)
        state["step"] += 1
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if p.dtype not in LOW_PRECISION:
            self._reference_math(group, state["step"], p, g, m, v)
            return
        # fp16/bf16: compute in fp32 and round once; m and v are fp32 already (NOTE: [low-precision state]).
        p32, g32, m32, v32 = p.float(), g.float(), m.float(), v.float()
        self._reference_math(group, state["step"], p32, g32, m32, v32)
        p.copy_(p32)
        for kept, computed in ((m, m32), (v, v32)):
            if computed is not kept:
                kept.copy_(computed)

    def _reference_math(
        self, group: dict[str, Any], step: int, p: Tensor, g: Tensor, m: Tensor, v: Tensor
    ) -> None:
        beta1, beta2 = group["betas"]
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
        step_size = group["lr"] / bias_correction1
        if group["nesterov"]:
            perturb = (beta1 * m + (1 - beta1) * g) / denom
        else:
            perturb = m / denom
        decay_projected, decay_plain = self._decays(group)
        if projects(group, p):
            projected = project_reference(p, g, perturb, group["delta"], group["eps"])
            if group["weight_decay"] > 0:
                factor = torch.full((), decay_projected, dtype=p.dtype, device=p.device)
                p.mul_(torch.where(projected, factor, decay_plain))
        elif group["weight_decay"] > 0:
            p.mul_(decay_plain)
        p.add_(perturb, alpha=-step_size)

    # --- fast form: multi-tensor --------------------------------------------------------------------

    def _fast_bucket(
        self, group: dict[str, Any], layout: RowLayout | None, params: list[Tensor], grads: list[Tensor]
    ) -> None:
        states = [self._state_of(p) for p in params]
        for state in states:
            state["step"] += 1
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        device = params[0].device
        if group["nesterov"] or not fused_kernels_support(device, params[0].dtype):
            directions = self._scratch_for(params)
            self._foreach_direction(
                group,
                [s["step"] for s in states],
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                directions,
                self._scratch_for(params, 1),
            )
            self._apply_direction(group, layout, params, grads, directions, *self._decays(group))
            return
        fused_args = dict(beta1=beta1, beta2=beta2, eps=eps, amsgrad=False, maximize=False)
        for candidates in (False, True):
            picked = [i for i, p in enumerate(params) if projects(group, p) == candidates]
            if not picked:
                continue
            part = [params[i] for i in picked]
            tensors = (
                [grads[i] for i in picked],
                [states[i]["exp_avg"] for i in picked],
                [states[i]["exp_avg_sq"] for i in picked],
                [],
                step_tensors([states[i]["step"] for i in picked], device),
            )
            if not candidates:
                # Never projected: the official update is exactly AdamW's (decay, then step), so torch's
                # fused AdamW kernel does it in one pass on the weights themselves.
                torch._fused_adamw_(part, *tensors, lr=lr, weight_decay=wd, **fused_args)
                continue
            # Candidates: torch's fused Adam kernel run on a zeroed buffer in place of the weights leaves
            # exactly -lr/bc1 * m_t/D_t there, with m_t, v_t updated in the same pass.
            directions = self._scratch_for(part)
            torch._foreach_zero_(directions)
            torch._fused_adam_(directions, *tensors, lr=lr, weight_decay=0.0, **fused_args)
            self._apply_direction(
                group, layout, part, [grads[i] for i in picked], directions, *self._decays(group)
            )

    @staticmethod
    def _foreach_direction(
        group: dict[str, Any],
        steps: list[int],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        directions: list[Tensor],
        denoms: list[Tensor],
    ) -> None:
        """directions <- -lr/bc1 * u_t with the official moment and denominator order, batched."""
        beta1, beta2 = group["betas"]
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        for v, denom in zip(exp_avg_sqs, denoms):
            torch.sqrt(v, out=denom)
        torch._foreach_div_(denoms, [math.sqrt(1 - beta2**s) for s in steps])
        torch._foreach_add_(denoms, group["eps"])
        if group["nesterov"]:
            for m, d in zip(exp_avgs, directions):
                torch.mul(m, beta1, out=d)
            torch._foreach_add_(directions, grads, alpha=1 - beta1)
        else:
            torch._foreach_copy_(directions, exp_avgs)
        torch._foreach_div_(directions, denoms)
        torch._foreach_mul_(directions, [-group["lr"] / (1 - beta1**s) for s in steps])

    # --- fused form: C++ kernels for fp32 CPU parameters (fused_cpu) ---------------------------------

    def _fused_cpu_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        beta1, beta2 = group["betas"]
        lr, delta = group["lr"], group["delta"]
        tensors, rows, scalars = [], [], []
        factors: dict[int, tuple[float, float]] = {}
        for p, g in zip(params, grads):
            state = self._state_of(p)
            state["step"] += 1
            step = state["step"]
            if step not in factors:
                # -step size and sqrt(bc2) in Python double, as the official code computes them
                factors[step] = (-(lr / (1 - beta1**step)), math.sqrt(1 - beta2**step))
            tensors.append((p, g, state["exp_avg"], state["exp_avg_sq"]))
            if projects(group, p):
                rows.append(p.shape[0])
                scalars.extend((*factors[step], *view_thresholds(p.shape, delta)))
            else:
                rows.append(0)
                scalars.extend((*factors[step], 0.0, 0.0))
        hyper = (beta1, beta2, group["eps"], *self._decays(group), 0.0, 0.0)
        fused_cpu.step(fused_cpu.KIND_ADAM, tensors, rows, scalars, hyper, group["nesterov"])

    # --- compiled form: one fused kernel pair per parameter (CPU) -------------------------------------

    def _compiled_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        candidate = projects(group, p)
        if not (has_row_blocks(p) if candidate else p.is_contiguous() and p.numel() > 0):
            self._reference_update(group, p, g)  # the kernel writes through views; no copy allowed here
            return
        state = self._state_of(p)
        step = state["step"] + 1
        beta1, beta2 = group["betas"]
        decay_projected, decay_plain = self._decays(group)
        thresholds = view_thresholds(p.shape, group["delta"]) if candidate else (0.0, 0.0)
        scalars = torch.tensor(
            [
                group["lr"] / (1 - beta1**step),
                math.sqrt(1 - beta2**step),
                decay_projected,
                decay_plain,
                *thresholds,
            ],
            dtype=torch.float64,
        )
        tensors = (p, g, state["exp_avg"], state["exp_avg_sq"])
        kernel = compiled_kernel(_adamp_kernel, candidate)
        views = [row_view(t) for t in tensors] if candidate else [t.view(-1) for t in tensors]
        kernel(*views, scalars, beta1, beta2, group["eps"], bool(group["nesterov"]))
        state["step"] = step


def _adamp_kernel(
    p: Tensor,
    g: Tensor,
    m: Tensor,
    v: Tensor,
    scalars: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    nesterov: bool,
    rows: bool,
) -> None:
    """One parameter's AdamP step in functional form for Inductor (p, g, m, v are (C, K) rows or flat).

    ``scalars`` (float64): step size, sqrt(bc2), projected decay, plain decay, channel and layer thresholds.
    Computed in fp32 at least; Inductor fuses it into a moments+row-reductions pass and an update pass.
    """
    acc = torch.promote_types(p.dtype, torch.float32)
    p32, g32 = p.to(acc), g.to(acc)
    m32 = m.to(acc) * beta1 + g32 * (1 - beta1)
    v32 = v.to(acc) * beta2 + g32 * g32 * (1 - beta2)
    m.copy_(m32)
    v.copy_(v32)
    denom = v32.sqrt() / scalars[1].to(acc) + eps
    numerator = beta1 * m32 + (1 - beta1) * g32 if nesterov else m32
    direction = -(scalars[0].to(acc)) * (numerator / denom)
    if rows:
        coef, projected = fold_projection(
            p32, g32, direction, scalars[4].to(p.dtype), scalars[5].to(p.dtype), eps
        )
        decay = torch.where(projected, scalars[2], scalars[3]).to(acc)
        p.copy_(p32 * (decay - coef) + direction)
    else:
        p.copy_(p32 * scalars[3].to(acc) + direction)
