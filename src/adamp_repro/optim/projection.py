"""The scale-invariance test and projection of SGDP/AdamP, in the three forms the optimizers use.

Paper: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
ICLR 2021, arXiv 2006.08217 (Algorithms 1-2, the cosine test with delta / sqrt(dim w)). Numerics are those of
the official package ``adamp==0.3.0`` (clovaai/AdamP), which the tests use as the oracle.

NOTE: [projection scope]
    Only parameters with ``ndim > 1`` and at least one element are candidates. For each candidate the test
    compares the *raw gradient* with the *pre-decay weight*: first in the channel view (rows = dim 0, so one
    row per output channel, row length K = numel / shape[0]), then, if that fails, in the layer view (one row
    of length numel). A view passes when ``max_rows |cos(g_row, w_row)| < delta / sqrt(K)``, compared in the
    parameter's dtype. On the first passing view the update loses its radial part row by row,
    ``u <- u - w_hat * <w_hat, u>`` with ``w_hat = w / (||w_row|| + eps)``, and the parameter's decoupled
    weight decay is scaled by ``wd_ratio``. Parameters with ``ndim <= 1`` (biases, norm gains, scalars) and
    candidates that fail both views keep ratio 1: they get the full weight decay of their param group
    (set that group's ``weight_decay`` to 0 to exempt them, see ``param_groups``).

Forms:
- ``scale_invariance_test``: the test alone on one tensor (both views' max |cos| and verdicts), in the official
  operation order; ``project_reference`` runs it, and the weight diagnostics (``train.diagnostics``) report it.
- ``project_reference``: one tensor, the official operation order (``F.cosine_similarity`` on the two views,
  p_hat rounded, then p_hat * u, row sums, then subtraction), bit-exact with adamp 0.3.0 in fp32. The branch
  on the test is a device-side ``torch.where``: no host-device sync.
- ``RowLayout`` / ``row_statistics`` / ``projection_row_factors``: the multi-tensor form. Four row reductions
  per weight (|w_r|, |g_r|, <g_r, w_r>, <w_r, d_r>) are written into one stats buffer; the tests, layer sums
  and coefficients for *all* weights of a bucket are then a dozen batched ops (segment max / segment sums
  over the concatenated rows). Algebraically equal to the reference, rounding differs by a few ulp.
- ``fold_projection``: the same algebra on one weight's (C, K) rows, written for ``torch.compile``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "RowLayout",
    "ScaleInvarianceTest",
    "fold_projection",
    "has_row_blocks",
    "is_dense",
    "is_projection_candidate",
    "project_reference",
    "projection_row_factors",
    "row_statistics",
    "row_view",
    "scale_invariance_test",
    "view_thresholds",
]


def is_projection_candidate(param: Tensor) -> bool:
    """True for the weights the test runs on: ndim > 1 and non-empty (NOTE: [projection scope])."""
    return param.dim() > 1 and param.numel() > 0


def view_thresholds(shape: Sequence[int], delta: float) -> tuple[float, float]:
    """(channel, layer) thresholds delta / sqrt(K) in Python double, K the row length of each view."""
    numel = math.prod(shape)
    return delta / math.sqrt(numel // shape[0]), delta / math.sqrt(numel)


class ScaleInvarianceTest(NamedTuple):
    """The test of one weight (NOTE: [projection scope]): 0-dim tensors on the weight's device."""

    channel_cos: Tensor  # max over output channels of |cos(g_row, w_row)|, in the weight's dtype
    layer_cos: Tensor  # |cos(g, w)| over the whole tensor
    channel: Tensor  # bool: the channel view passes
    layer: Tensor  # bool: the layer view passes (checked whatever the channel view gave)

    @property
    def passed(self) -> Tensor:
        """True when the channel view or, failing that, the layer view passes: the weight is projected."""
        return self.channel | self.layer


def _view_shapes(param: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (rows, -1) shapes of the channel view and the layer view."""
    return (param.shape[0], -1), (1, -1)


def _view_test(param_rows: Tensor, grad_rows: Tensor, threshold: float, eps: float) -> tuple[Tensor, Tensor]:
    """(max over rows of |cos(g_row, w_row)|, passed) of one view, as the official code computes them."""
    cosine = F.cosine_similarity(grad_rows, param_rows, dim=1, eps=eps).abs_().max()
    # tensor < Python float compares in the tensor's dtype, as the official `if` does.
    return cosine, cosine < threshold


def scale_invariance_test(param: Tensor, grad: Tensor, delta: float, eps: float) -> ScaleInvarianceTest:
    """The SGDP/AdamP test of ``grad`` against the weight ``param`` (ndim > 1, non-empty), without the
    projection: both views, in adamp 0.3.0's operation order (``F.cosine_similarity`` on the views, thresholds
    delta / sqrt(K) from ``view_thresholds``), so the verdicts are those ``project_reference`` acts on. No host
    sync."""
    views = [
        _view_test(param.reshape(shape), grad.reshape(shape), threshold, eps)
        for shape, threshold in zip(_view_shapes(param), view_thresholds(param.shape, delta))
    ]
    (channel_cos, channel), (layer_cos, layer) = views
    return ScaleInvarianceTest(channel_cos, layer_cos, channel, layer)


def project_reference(param: Tensor, grad: Tensor, update: Tensor, delta: float, eps: float) -> Tensor:
    """Project ``update`` in place as adamp 0.3.0 does; return the 0-dim bool tensor "projected".

    ``param`` is the pre-decay weight (ndim > 1, non-empty); ``update`` is modified in place (for SGDP without
    nesterov that is the momentum buffer itself, as in the official code). Both views are always computed and
    the result is selected on the device, so the selected values equal the official branch bit for bit
    while no Python ``if`` reads a tensor. ``reshape`` rather than ``view`` keeps channels_last weights
    working (the copy is in logical order, so the sums match the contiguous layout exactly). The test is
    ``scale_invariance_test``'s, view by view.
    """
    expand = (-1,) + (1,) * (param.dim() - 1)
    passed, corrections = [], []
    for shape, threshold in zip(_view_shapes(param), view_thresholds(param.shape, delta)):
        param_rows = param.reshape(shape)
        passed.append(_view_test(param_rows, grad.reshape(shape), threshold, eps)[1])
        param_hat = param / param_rows.norm(dim=1).view(expand).add_(eps)
        row_sums = (param_hat * update).reshape(shape).sum(dim=1).view(expand)
        corrections.append(param_hat * row_sums)
    channel, layer = passed
    update.sub_(torch.where(channel, corrections[0], torch.where(layer, corrections[1], 0.0)))
    return channel | layer


def row_view(x: Tensor) -> Tensor:
    """``x`` as (shape[0], K) rows without a copy when its memory allows, else a logical-order copy.

    A channels_last weight keeps every output channel in one contiguous block (permuted inside), so the rows
    can be read in storage order; a row sum is order-free up to rounding. Callers that pair rows of two
    tensors must pass tensors with equal strides (the optimizers check ``grad.stride() == param.stride()``).
    """
    rows = x.shape[0]
    if x.is_contiguous():
        return x.view(rows, -1)
    if has_row_blocks(x):
        length = x.numel() // rows
        return x.as_strided((rows, length), (length, 1))
    return x.reshape(rows, -1)


def has_row_blocks(x: Tensor) -> bool:
    """True if every dim-0 slice of x is one contiguous block (dense, dim 0 outermost), so ``row_view``
    returns a view that writes through."""
    if x.is_contiguous():
        return True
    if x.shape[0] > 1 and x.stride(0) != x.numel() // x.shape[0]:
        return False
    return is_dense(x)


def is_dense(x: Tensor) -> bool:
    """True if x covers its storage span without gaps or overlaps (any dim order), as fused kernels need."""
    expected = 1
    for size, stride in sorted(zip(x.shape, x.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


@dataclass
class RowLayout:
    """Where each candidate weight's rows sit in the concatenated row axis of one bucket (one dtype/device).

    ``segment[r]`` is the weight index of row r; thresholds are stored in the weights' dtype so the test
    compares in that dtype, as the official ``cosine.max() < float`` does.
    """

    params: tuple[Tensor, ...]
    rows: list[int]
    factor_shapes: list[tuple[int, ...]]
    segment: Tensor
    lengths: Tensor
    threshold_channel: Tensor
    threshold_layer: Tensor
    delta: float

    @classmethod
    def build(cls, params: Sequence[Tensor], delta: float) -> RowLayout:
        device, dtype = params[0].device, params[0].dtype
        rows = [p.shape[0] for p in params]
        segment = torch.repeat_interleave(
            torch.arange(len(params)), torch.tensor(rows), output_size=sum(rows)
        )
        segment = segment.to(device)
        thresholds = [view_thresholds(p.shape, delta) for p in params]
        channel = torch.tensor([t[0] for t in thresholds], dtype=torch.float64).to(device=device, dtype=dtype)
        layer = torch.tensor([t[1] for t in thresholds], dtype=torch.float64).to(device=device, dtype=dtype)
        shapes = [(p.shape[0],) + (1,) * (p.dim() - 1) for p in params]
        lengths = torch.tensor(rows, device=device)
        return cls(tuple(params), rows, shapes, segment, lengths, channel, layer, delta)

    def matches(self, params: Sequence[Tensor], delta: float) -> bool:
        return (
            delta == self.delta
            and len(params) == len(self.params)
            and all(a is b for a, b in zip(params, self.params))
        )

    def split(self, per_row: Tensor) -> list[Tensor]:
        """Per-row values (R,) -> one broadcastable (C, 1, ...) view per weight."""
        return [part.view(shape) for part, shape in zip(per_row.split(self.rows), self.factor_shapes)]


# Row chunk for the CPU reductions: big enough to amortise the per-call cost, small enough (4 MiB of fp32)
# that the product written to the chunk buffer is read back from cache rather than memory.
CHUNK_ELEMENTS = 1 << 20


def row_statistics(
    layout: RowLayout, params: Sequence[Tensor], grads: Sequence[Tensor], directions: Sequence[Tensor]
) -> Tensor:
    """(4, R) row stats [|w_r|, |g_r|, <g_r, w_r>, <w_r, d_r>] in fp32 (fp64 for fp64 weights).

    Written straight into one buffer. On CPU the four reductions run chunk by chunk of rows, so a chunk of
    w, g and d is read from memory once and the other reductions hit cache; the dot products go through a
    small reused buffer because a fresh weight-sized temporary costs more (page faults) than the arithmetic.
    """
    acc = torch.promote_types(params[0].dtype, torch.float32)
    device = params[0].device
    stats = torch.empty(4, sum(layout.rows), dtype=acc, device=device)
    chunk = torch.empty(CHUNK_ELEMENTS, dtype=acc, device=device) if device.type == "cpu" else None
    start = 0
    for p, g, d, count in zip(params, grads, directions, layout.rows):
        p_rows, g_rows, d_rows = row_view(p), row_view(g), row_view(d)
        length = p_rows.shape[1]
        step = count if chunk is None else max(1, CHUNK_ELEMENTS // length)
        for first in range(0, count, step):
            last = min(count, first + step)
            out = stats[:, start + first : start + last]
            rows = (p_rows[first:last], g_rows[first:last], d_rows[first:last])
            product = None if chunk is None else chunk[: (last - first) * length].view(last - first, length)
            _chunk_statistics(*rows, out, product)
        start += count
    return stats


def _chunk_statistics(p: Tensor, g: Tensor, d: Tensor, out: Tensor, product: Tensor | None) -> None:
    acc = out.dtype
    torch.linalg.vector_norm(p, dim=1, dtype=acc, out=out[0])
    torch.linalg.vector_norm(g, dim=1, dtype=acc, out=out[1])
    for index, (x, y) in ((2, (g, p)), (3, (p, d))):
        if product is None or x.dtype != acc:
            torch.sum(x * y, dim=1, dtype=acc, out=out[index])
        else:
            torch.mul(x, y, out=product)
            torch.sum(product, dim=1, out=out[index])


def projection_row_factors(
    layout: RowLayout, stats: Tensor, eps: float, decay_projected: float, decay_plain: float
) -> tuple[Tensor, Tensor]:
    """Per-row projection coefficient c_r and per-weight decay factor, all on the device.

    With d the (scaled) update, the projected update is ``d - c_r * w`` where ``c_r = <w_r, d_r> / n_r^2`` and
    ``n_r = |w_r| + eps`` on the passing view (layer view: sums over all rows), 0 when no view passes.
    Returns ``(coef (R,), decay (N,))``; decay is ``decay_projected`` where a view passed, else
    ``decay_plain`` (both computed by the caller in Python double, as the official code does).
    """
    p_norm, g_norm, gp, pd = stats.unbind(0)
    segment, lengths, dtype = layout.segment, layout.lengths, layout.threshold_channel.dtype
    # index_select / segment_reduce rather than x[segment] / index_add_: on CPU the latter take milliseconds
    # for ~30k rows, the former tens of microseconds. unsafe=True: the lengths are valid by construction
    # (RowLayout), and the safe form checks them with .item() calls, i.e. host syncs on CUDA.
    spread = lambda per_weight: per_weight.index_select(0, segment)  # noqa: E731 - (N,) -> (R,)
    # |<g, w>| / (max(|g|, eps) max(|w|, eps)): F.cosine_similarity's definition since torch ~1.12.
    cos_channel = gp.abs() / (g_norm.clamp_min(eps) * p_norm.clamp_min(eps))
    channel = (
        torch.segment_reduce(cos_channel, "max", lengths=lengths, unsafe=True).to(dtype)
        < layout.threshold_channel
    )
    per_row = torch.stack((p_norm * p_norm, g_norm * g_norm, gp, pd), dim=1)
    p_sq, g_sq, gp_sum, pd_sum = torch.segment_reduce(
        per_row, "sum", lengths=lengths, axis=0, unsafe=True
    ).unbind(1)
    p_norm_layer, g_norm_layer = p_sq.sqrt(), g_sq.sqrt()
    cos_layer = gp_sum.abs() / (g_norm_layer.clamp_min(eps) * p_norm_layer.clamp_min(eps))
    layer = (cos_layer.to(dtype) < layout.threshold_layer) & ~channel
    coef_channel = pd / (p_norm + eps).square()
    coef_layer = spread(pd_sum / (p_norm_layer + eps).square())
    coef = torch.where(spread(channel), coef_channel, torch.where(spread(layer), coef_layer, 0.0))
    decay = torch.where(
        channel | layer,
        torch.full((len(layout.rows),), decay_projected, dtype=stats.dtype, device=stats.device),
        decay_plain,
    )
    return coef, decay


def fold_projection(
    p_rows: Tensor,
    g_rows: Tensor,
    d_rows: Tensor,
    threshold_channel: Tensor,
    threshold_layer: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """Single-weight version of ``projection_row_factors`` for compiled kernels: ``(coef (C, 1), projected)``.

    Inputs are (C, K) rows in the compute dtype; thresholds are 0-dim tensors in the weight's dtype.
    """
    dtype = threshold_channel.dtype
    p_sq = (p_rows * p_rows).sum(1)
    g_sq = (g_rows * g_rows).sum(1)
    gp = (g_rows * p_rows).sum(1)
    pd = (p_rows * d_rows).sum(1)
    p_norm = p_sq.sqrt()
    cos_channel = gp.abs() / (g_sq.sqrt().clamp_min(eps) * p_norm.clamp_min(eps))
    channel = cos_channel.max().to(dtype) < threshold_channel
    p_norm_layer = p_sq.sum().sqrt()
    cos_layer = gp.sum().abs() / (g_sq.sum().sqrt().clamp_min(eps) * p_norm_layer.clamp_min(eps))
    layer = (cos_layer.to(dtype) < threshold_layer) & ~channel
    coef = torch.where(
        channel,
        pd / (p_norm + eps).square(),
        torch.where(layer, pd.sum() / (p_norm_layer + eps).square(), 0.0),
    )
    return coef.unsqueeze(1), channel | layer
