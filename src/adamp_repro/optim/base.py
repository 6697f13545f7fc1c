"""What SGDP and AdamP share: argument checks, the step loop, path selection and the multi-tensor plumbing.

Each optimizer supplies three update forms; ``ProjectedOptimizer.step`` picks one per param group:

- reference (``foreach=False``): one parameter at a time in the official operation order (adamp 0.3.0);
- fused (``foreach=None``, the default, on fp32 CPU parameters): one call into the C++ kernels of
  ``fused_cpu`` (compiled on first use, ~2 s, cached on disk) that runs the test, the projection and the
  update of the whole group, reading weights and gradients twice (the second time from cache) and the
  state once; if they cannot be built the optimizer warns once and uses "fast"; ``ADAMP_REPRO_FUSED_CPU=0``
  turns them off;
- fast (``foreach=True``, and ``None`` on other devices/dtypes): the arithmetic batched across parameters
  with torch's multi-tensor kernels, the row reductions of the test written into one buffer and the test
  itself batched across all weights of a (device, dtype) bucket (``projection.RowLayout``);
- compiled (``compile=True``, CPU): one ``torch.compile``-d kernel per parameter that fuses the moments,
  the row reductions and the update into two passes; if compiling fails the optimizer warns once and
  uses "fast" from then on.

None of them reads a tensor on the host: every data-dependent choice is a ``torch.where`` on the device
(in the fused form, a branch inside the C++ kernel).
The fused, fast and compiled forms need a dense parameter whose gradient and state have its strides (true
for autograd gradients, including channels_last); other parameters take the reference form (and weights whose
output-channel rows are not contiguous blocks take "fast" rather than "fused").
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adamp_repro.optim import fused_cpu
from adamp_repro.optim.projection import (
    RowLayout,
    has_row_blocks,
    is_dense,
    is_projection_candidate,
    projection_row_factors,
    row_statistics,
)

__all__ = ["ProjectedOptimizer", "check_range"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ValueError naming ``value`` and the allowed interval unless low <=/< value </<= high."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Invalid {name}: {value!r}; expected a real number") from None
    too_low = number <= low if low_open else number < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high or number != number:
        left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
        upper = "inf" if high is None else f"{high:g}"
        raise ValueError(f"Invalid {name}: {value!r}; expected a value in {left}{low:g}, {upper}{right}")


class ProjectedOptimizer(Optimizer):
    """Base class of SGDP and AdamP; subclasses implement the per-group update forms."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._reset_caches()
        super().__init__(params, defaults)

    # --- construction and serialisation ---------------------------------------------------------------

    def _reset_caches(self) -> None:
        # Derived from the params alone, rebuilt on demand; never part of state_dict.
        self._layouts: dict[tuple[int, torch.device, torch.dtype], RowLayout] = {}
        self._scratch: tuple[dict[Tensor, Tensor], ...] = ({}, {})
        self._compile_failed = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._late_defaults().items():
                group.setdefault(key, value)
        self._reset_caches()

    def _late_defaults(self) -> dict[str, Any]:
        return {"foreach": None, "compile": False}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._reset_caches()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for p in group["params"]:
                if p.is_complex():
                    raise ValueError(
                        f"{type(self).__name__} does not support complex parameters "
                        f"(got dtype {p.dtype}); expected a real floating dtype"
                    )
                if not p.is_floating_point():
                    raise ValueError(f"Invalid parameter dtype {p.dtype}; expected a floating dtype")
            self._check_group(group)
        except ValueError:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- the step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params, grads = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(
                        f"{type(self).__name__} does not support sparse gradients "
                        f"(parameter of shape {tuple(p.shape)}); expected dense gradients"
                    )
                params.append(p)
                grads.append(p.grad)
            if params:
                self._step_group(index, group, params, grads)
        return loss

    def _step_group(
        self, index: int, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        for p in params:
            if not self.state[p]:
                self._init_state(group, p)
        if group["foreach"] is False:
            for p, g in zip(params, grads):
                self._reference_update(group, p, g)
            return
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for p, g in zip(params, grads):
            if self._fast_eligible(group, p, g):
                bucket = buckets.setdefault((p.device, p.dtype), ([], []))
                bucket[0].append(p)
                bucket[1].append(g)
            else:
                self._reference_update(group, p, g)
        use_compiled = group["compile"] and not self._compile_failed and not torch.compiler.is_compiling()
        # The fused C++ kernels are opaque to torch.compile: a traced step takes the torch form.
        use_fused = (
            group["foreach"] is None
            and not group["compile"]
            and not torch.compiler.is_compiling()
            and fused_cpu.enabled()
        )
        for (device, dtype), (bucket_params, bucket_grads) in buckets.items():
            if use_fused and device.type == "cpu" and dtype == torch.float32 and fused_cpu.load() is not None:
                bucket_params, bucket_grads = self._fused_cpu_bucket(group, bucket_params, bucket_grads)
                if not bucket_params:
                    continue
            if use_compiled and device.type == "cpu":
                self._compiled_bucket(group, bucket_params, bucket_grads)
            else:
                self._fast_bucket(
                    group,
                    self._layout(index, device, dtype, bucket_params, group["delta"]),
                    bucket_params,
                    bucket_grads,
                )

    def _fast_eligible(self, group: dict[str, Any], p: Tensor, g: Tensor) -> bool:
        """Dense parameter whose gradient and state share its strides (what the multi-tensor kernels need)."""
        if g.stride() != p.stride() or not is_dense(p):
            return False
        return all(
            s.stride() == p.stride() for s in self.state[p].values() if isinstance(s, Tensor) and s.dim()
        )

    def _fused_cpu_bucket(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Step the parameters the fused CPU kernels take (fp32, dense, non-empty; candidates with contiguous
        output-channel rows) in one call; return the (params, grads) left for the other forms."""
        taken_params, taken_grads, rest_params, rest_grads = [], [], [], []
        for p, g in zip(params, grads):
            if (
                p.numel() > 0
                and g.dtype == p.dtype
                and (has_row_blocks(p) if is_projection_candidate(p) else True)
            ):
                taken_params.append(p), taken_grads.append(g)
            else:
                rest_params.append(p), rest_grads.append(g)
        if taken_params:
            self._fused_cpu_update(group, taken_params, taken_grads)
        return rest_params, rest_grads

    def _compiled_bucket(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Compiled kernels for the candidates; never-projected parameters take the fast form (their update
        is a single fused torch kernel already). On a compiler failure, warn once and finish in reference."""
        plain = [(p, g) for p, g in zip(params, grads) if not is_projection_candidate(p)]
        if plain:
            self._fast_bucket(group, None, [p for p, _ in plain], [g for _, g in plain])
        candidates = [(p, g) for p, g in zip(params, grads) if is_projection_candidate(p)]
        for position, (p, g) in enumerate(candidates):
            try:
                self._compiled_update(group, p, g)
            except Exception as error:  # noqa: BLE001 - any compiler/toolchain error means "not available"
                warnings.warn(
                    f"{type(self).__name__}(compile=True): torch.compile failed ({type(error).__name__}: "
                    f"{str(error)[:200]}); using the eager fast form from now on",
                    stacklevel=3,
                )
                self._compile_failed = True
                # Compilation happens before a kernel mutates anything, so this parameter is still untouched.
                for q, h in candidates[position:]:
                    self._reference_update(group, q, h)
                return

    # --- multi-tensor helpers -------------------------------------------------------------------------

    def _layout(
        self, index: int, device: torch.device, dtype: torch.dtype, params: Sequence[Tensor], delta: float
    ) -> RowLayout | None:
        candidates = [p for p in params if is_projection_candidate(p)]
        if not candidates:
            return None
        if torch.compiler.is_compiling():
            return RowLayout.build(candidates, delta)
        key = (index, device, dtype)
        layout = self._layouts.get(key)
        if layout is None or not layout.matches(candidates, delta):
            layout = self._layouts[key] = RowLayout.build(candidates, delta)
        return layout

    def _scratch_for(self, params: Sequence[Tensor], slot: int = 0) -> list[Tensor]:
        """One persistent buffer per parameter (same strides); reused because a fresh weight-sized
        allocation on CPU costs more (page faults) than the arithmetic done in it."""
        if torch.compiler.is_compiling():
            return [torch.empty_like(p) for p in params]  # a traced graph plans its own buffers
        cache, buffers = self._scratch[slot], []
        for p in params:
            buffer = cache.get(p)
            if buffer is None or buffer.stride() != p.stride() or buffer.dtype != p.dtype:
                buffer = cache[p] = torch.empty_like(p)
            buffers.append(buffer)
        return buffers

    def _apply_direction(
        self,
        group: dict[str, Any],
        layout: RowLayout | None,
        params: Sequence[Tensor],
        grads: Sequence[Tensor],
        directions: Sequence[Tensor],
        decay_projected: float,
        decay_plain: float,
    ) -> None:
        """p <- decay * p + d - c_r * p, with d the update already scaled by -step size.

        Folding the projection into a per-row factor (decay - c_r) turns the official four passes
        (p_hat, p_hat*u, correction, subtraction) plus decay plus step into one ``addcmul``.
        """
        plain_params, plain_dirs = [], []
        cand_params, cand_grads, cand_dirs = [], [], []
        for p, g, d in zip(params, grads, directions):
            if is_projection_candidate(p):
                cand_params.append(p), cand_grads.append(g), cand_dirs.append(d)
            else:
                plain_params.append(p), plain_dirs.append(d)
        if cand_params:
            stats = row_statistics(layout, cand_params, cand_grads, cand_dirs)
            coef, decay = projection_row_factors(layout, stats, group["eps"], decay_projected, decay_plain)
            factors = decay.index_select(0, layout.segment) - coef
            for p, d, factor in zip(cand_params, cand_dirs, layout.split(factors)):
                torch.addcmul(d, p, factor, out=p)
        if plain_params:
            if decay_plain != 1.0:
                torch._foreach_mul_(plain_params, decay_plain)
            torch._foreach_add_(plain_params, plain_dirs)

    # --- subclass interface ---------------------------------------------------------------------------

    def _init_state(self, group: dict[str, Any], p: Tensor) -> None:
        raise NotImplementedError

    def _reference_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        raise NotImplementedError

    def _fast_bucket(
        self, group: dict[str, Any], layout: RowLayout | None, params: list[Tensor], grads: list[Tensor]
    ) -> None:
        raise NotImplementedError

    def _compiled_update(self, group: dict[str, Any], p: Tensor, g: Tensor) -> None:
        raise NotImplementedError

    def _fused_cpu_update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError


_COMPILED: dict[tuple[Callable[..., Any], bool], Callable[..., Any]] = {}


def compiled_kernel(kernel: Callable[..., Any], rows: bool) -> Callable[..., Any]:
    """``torch.compile`` of ``kernel(*args, rows)``, compiled lazily and shared by every optimizer instance;
    dynamic shapes, so one graph serves all sizes."""
    key = (kernel, rows)
    if key not in _COMPILED:

        def bound(*args: Any) -> Any:
            return kernel(*args, rows)

        # Inductor sizes its thread split from the first (often tiny) weight; without the small minimum chunk
        # every later, large weight would run single-threaded.
        _COMPILED[key] = torch.compile(bound, dynamic=True, fullgraph=True, options={"cpp.min_chunk_size": 1})
    return _COMPILED[key]


def fused_kernels_support(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused Adam/SGD multi-tensor kernels exist for this device and dtype."""
    return device.type in ("cpu", "cuda") and dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
    )


def step_tensors(steps: Sequence[int], device: torch.device) -> list[Tensor]:
    """The fused kernels read the step count from a float tensor; one tensor per distinct count."""
    made: dict[int, Tensor] = {}
    return [made.setdefault(s, torch.full((), float(s), dtype=torch.float32, device=device)) for s in steps]
