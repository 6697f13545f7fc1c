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

Which form stepped which parameters is counted as it happens (``forms_used``: form -> parameter-steps, one
dict increment per bucket and step, no sync), with every fallback and its reason (``form_fallbacks``), so a
run record can name the code that ran. A step traced by ``torch.compile`` (the whole ``step`` compiled from
outside) is not counted: a counter mutated inside a traced graph would make it recompile every step.

None of them reads a tensor on the host: every data-dependent choice is a ``torch.where`` on the device
(in the fused form, a branch inside the C++ kernel).

The fused, fast and compiled forms need a dense parameter whose gradient and state have its strides (true
for autograd gradients, including channels_last); other parameters take the reference form (and weights whose
output-channel rows are not contiguous blocks take "fast" rather than "fused").

NOTE: [low-precision state]
    fp16/bf16 parameters keep their optimizer state (SGDP's ``momentum``, AdamP's ``exp_avg`` and
    ``exp_avg_sq``) in fp32, and every form computes their step in fp32 and rounds the weight once. In fp16
    the official package and ``torch.optim.Adam`` keep the state in the parameter's dtype, where
    ``(1 - beta2) * g**2`` rounds to 0 for |g| below about 5e-3 (beta2 = 0.999) and the step becomes m / eps;
    a bf16 buffer drops every addend under 1/256 of its own magnitude. The reference form upcasts each
    parameter; the other forms step a persistent fp32 working copy of each weight (refreshed from the weight
    every step, never saved) through the fp32 code, so fused, fast and compiled behave as on fp32 weights.
    Cost per fp16/bf16 element: 4 (SGDP) or 8 (AdamP) bytes of state instead of 2 or 4, plus 4 for the
    working copy. ``load_state_dict`` keeps saved fp32 state in fp32 (torch would cast it to the parameter's
    dtype) and upcasts fp16 state saved by the official package; loading ours into the official class casts
    it back, as torch does. What fp32 state cannot fix: a step smaller than half an ulp of the weight is lost
    in the rounding (bf16 weights of magnitude 1 ignore steps under 4e-3); keep fp32 weights (autocast) for
    that.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import required

from adamp_repro.optim import fused_cpu
from adamp_repro.optim.hyperparams import check_flag, check_range
from adamp_repro.optim.projection import (
    RowLayout,
    has_row_blocks,
    is_dense,
    is_projection_candidate,
    projection_row_factors,
    row_statistics,
)

__all__ = ["FORMS", "LOW_PRECISION", "ProjectedOptimizer", "check_flag", "check_range", "state_dtype"]

LOW_PRECISION = (torch.float16, torch.bfloat16)
# The update forms (module docstring), as ``forms_used`` names them.
FUSED_CPU, FAST, REFERENCE, COMPILED = "fused_cpu", "fast", "reference", "compiled"
FORMS = (FUSED_CPU, FAST, REFERENCE, COMPILED)


def state_dtype(param: Tensor) -> torch.dtype:
    """fp32 for fp16/bf16 parameters (NOTE: [low-precision state]), the parameter's dtype otherwise."""
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def _float_hyperparameters(group: dict[str, Any]) -> dict[str, Any]:
    """The group as the update forms read it: one-element tensor hyper-parameters (torch lets lr, weight_decay
    and betas be tensors) as Python floats for this step; the group itself is left as the user set it."""
    floats = {
        key: float(value) for key, value in group.items() if key != "params" and isinstance(value, Tensor)
    }
    betas = group.get("betas")
    if isinstance(betas, (tuple, list)) and any(isinstance(beta, Tensor) for beta in betas):
        floats["betas"] = tuple(float(beta) for beta in betas)
    return {**group, **floats} if floats else group


def projects(group: dict[str, Any], p: Tensor) -> bool:
    """Whether ``p`` is tested (and projected when it passes) in this group: a projection candidate (NOTE:
    [projection scope] in ``projection.py``) in a group with ``projection`` on. With it off, every parameter
    takes the never-projected update: full decoupled decay, the plain step."""
    return bool(group["projection"]) and is_projection_candidate(p)


class ProjectedOptimizer(Optimizer):
    """Base class of SGDP and AdamP; subclasses implement the per-group update forms."""

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._reset_caches()
        self._reset_form_counts()
        super().__init__(params, defaults)

    # --- which form ran -------------------------------------------------------------------------------

    def _reset_form_counts(self) -> None:
        # This process's steps only: never part of state_dict, so a resumed run counts its own segment.
        self._form_counts: dict[str, int] = {}
        self._fallbacks: list[dict[str, Any]] = []
        self._fallback_seen: set[tuple[str, str]] = set()
        self._steps_taken = 0

    def forms_used(self) -> dict[str, int]:
        """Parameter-steps taken by each update form since construction (``FORMS`` names: ``fused_cpu``,
        ``fast``, ``reference``, ``compiled``), forms never used left out; a copy. One step of a model with N
        parameters that have gradients adds N in all."""
        return dict(self._form_counts)

    def form_fallbacks(self) -> list[dict[str, Any]]:
        """Each time a form the settings asked for was unavailable, once per kind: ``{"from": form, "to": form,
        "reason": str, "step": int}`` (``step``: the 1-based ``step()`` call where it first happened); a copy."""
        return [dict(event) for event in self._fallbacks]

    def _count(self, form: str, n: int) -> None:
        if n and not torch.compiler.is_compiling():
            self._form_counts[form] = self._form_counts.get(form, 0) + n

    def _fallback(self, wanted: str, used: str, reason: str) -> None:
        """Record a fallback once per (wanted, used) pair; later steps cost one set lookup."""
        if (wanted, used) in self._fallback_seen or torch.compiler.is_compiling():
            return
        self._fallback_seen.add((wanted, used))
        self._fallbacks.append({"from": wanted, "to": used, "reason": reason, "step": self._steps_taken})

    # --- construction and serialisation ---------------------------------------------------------------

    def _reset_caches(self) -> None:
        # Derived from the params alone, rebuilt on demand; never part of state_dict.
        self._layouts: dict[tuple[int, torch.device, torch.dtype], RowLayout] = {}
        self._scratch: tuple[dict[Tensor, Tensor], ...] = ({}, {})
        self._working: dict[Tensor, Tensor] = {}  # fp16/bf16 parameter -> its fp32 working copy
        self._owners: dict[Tensor, Tensor] = {}  # working copy -> parameter (whose state it uses)
        self._compile_failed = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self._late_defaults().items():
                group.setdefault(key, value)
        # deepcopy/pickle make a new sentinel object; torch tests ``default is required``.
        for key, value in self.defaults.items():
            if isinstance(value, type(required)):
                self.defaults[key] = required
        self._reset_caches()
        if not hasattr(self, "_form_counts"):  # pickled before the counters existed
            self._reset_form_counts()

    def _late_defaults(self) -> dict[str, Any]:
        return {"foreach": None, "compile": False, "projection": True}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, after checking every saved group's values as the constructor does (nothing is
        changed when one is refused); fp16/bf16 parameters get their saved state in fp32 (NOTE:
        [low-precision state]) where torch would round it to the parameter's dtype."""
        saved_groups = state_dict["param_groups"]
        for saved in saved_groups:
            self._check_group({**self._late_defaults(), **saved})
        low_precision_state = {
            p: state_dict["state"][saved_id]
            for group, saved in zip(self.param_groups, saved_groups)
            for p, saved_id in zip(group["params"], saved["params"])
            if p.dtype in LOW_PRECISION and saved_id in state_dict["state"]
        }
        super().load_state_dict(state_dict)
        for p, saved_state in low_precision_state.items():
            for key, value in saved_state.items():
                if key != "step" and isinstance(value, Tensor) and value.is_floating_point():
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32, copy=True)
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
        if not torch.compiler.is_compiling():
            self._steps_taken += 1
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
                self._step_group(index, _float_hyperparameters(group), params, grads)
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
            self._count(REFERENCE, len(params))
            return
        buckets: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
        for p, g in zip(params, grads):
            if self._fast_eligible(group, p, g):
                bucket = buckets.setdefault((p.device, p.dtype), ([], []))
                bucket[0].append(p)
                bucket[1].append(g)
            else:
                self._reference_update(group, p, g)
                self._count(REFERENCE, 1)
        for (device, dtype), (bucket_params, bucket_grads) in buckets.items():
            if dtype not in LOW_PRECISION:
                self._step_bucket(index, group, device, dtype, bucket_params, bucket_grads)
            elif torch.compiler.is_compiling():
                # A traced step plans its own buffers: no persistent working copies there.
                for p, g in zip(bucket_params, bucket_grads):
                    self._reference_update(group, p, g)
            else:
                # NOTE: [low-precision state]: the fp32 code on fp32 copies, then one rounding per weight.
                copies = self._working_copies(bucket_params)
                grads32 = [g.to(torch.float32) for g in bucket_grads]
                self._step_bucket(index, group, device, dtype, copies, grads32)
                torch._foreach_copy_(bucket_params, copies)

    def _step_bucket(
        self,
        index: int,
        group: dict[str, Any],
        device: torch.device,
        dtype: torch.dtype,
        params: list[Tensor],
        grads: list[Tensor],
    ) -> None:
        """One (device, dtype) bucket through the fused, compiled or fast form; ``dtype`` keys the layout
        cache (the parameters' own dtype; ``params`` may be their fp32 working copies)."""
        use_compiled = group["compile"] and not self._compile_failed and not torch.compiler.is_compiling()
        # The fused C++ kernels are opaque to torch.compile: a traced step takes the torch form.
        use_fused = (
            group["foreach"] is None
            and not group["compile"]
            and not torch.compiler.is_compiling()
            and fused_cpu.enabled()
        )
        compute_dtype = params[0].dtype
        fused_here = group["foreach"] is None and device.type == "cpu" and compute_dtype == torch.float32
        if use_fused and fused_here and fused_cpu.load() is not None:
            params, grads = self._fused_cpu_bucket(group, params, grads)
            if not params:
                return
        elif fused_here and not group["compile"] and (FUSED_CPU, FAST) not in self._fallback_seen:
            self._fallback(FUSED_CPU, FAST, fused_cpu.unavailable_reason() or "traced by torch.compile")
        if use_compiled and device.type == "cpu":
            self._compiled_bucket(group, params, grads)
        else:
            layout = (
                self._layout(index, device, dtype, params, group["delta"]) if group["projection"] else None
            )
            self._fast_bucket(group, layout, params, grads)
            self._count(FAST, len(params))

    def _working_copies(self, params: Sequence[Tensor]) -> list[Tensor]:
        """fp32 copies of fp16/bf16 parameters (same strides), refreshed from the parameters; persistent
        buffers, as in ``_scratch_for``. ``_state_of(copy)`` is the parameter's state."""
        copies = []
        for p in params:
            copy = self._working.get(p)
            if copy is None or copy.stride() != p.stride() or copy.device != p.device:
                if copy is not None:
                    self._owners.pop(copy, None)
                copy = self._working[p] = torch.empty_like(p, dtype=torch.float32)
                self._owners[copy] = p
            copies.append(copy)
        torch._foreach_copy_(copies, list(params))
        return copies

    def _state_of(self, p: Tensor) -> dict[str, Any]:
        """The state of ``p``, or of the parameter whose fp32 working copy ``p`` is."""
        return self.state[self._owners.get(p, p)]

    def _fast_eligible(self, group: dict[str, Any], p: Tensor, g: Tensor) -> bool:
        """Dense parameter whose gradient and state share its strides (what the multi-tensor kernels need) and
        whose state has the dtype ``_init_state`` gives it (the C++ kernels read it as that type); anything
        else, such as state a user put there by hand, takes the reference form."""
        if g.stride() != p.stride() or not is_dense(p):
            return False
        return all(
            s.stride() == p.stride() and s.dtype == state_dtype(p)
            for s in self.state[p].values()
            if isinstance(s, Tensor) and s.dim()
        )

    def _fused_cpu_bucket(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Step the parameters the fused CPU kernels take (fp32, dense, non-empty; candidates with contiguous
        output-channel rows) in one call; return the (params, grads) left for the other forms."""
        taken_params, taken_grads, rest_params, rest_grads = [], [], [], []
        for p, g in zip(params, grads):
            if p.numel() > 0 and g.dtype == p.dtype and (has_row_blocks(p) if projects(group, p) else True):
                taken_params.append(p), taken_grads.append(g)
            else:
                rest_params.append(p), rest_grads.append(g)
        if taken_params:
            self._fused_cpu_update(group, taken_params, taken_grads)
            self._count(FUSED_CPU, len(taken_params))
        return rest_params, rest_grads

    def _compiled_bucket(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Compiled kernels for the candidates; never-projected parameters take the fast form (their update
        is a single fused torch kernel already). On a compiler failure, warn once and finish in reference."""
        plain = [(p, g) for p, g in zip(params, grads) if not projects(group, p)]
        if plain:
            self._fast_bucket(group, None, [p for p, _ in plain], [g for _, g in plain])
            self._count(FAST, len(plain))
        candidates = [(p, g) for p, g in zip(params, grads) if projects(group, p)]
        for position, (p, g) in enumerate(candidates):
            try:
                self._compiled_update(group, p, g)
            except Exception as error:  # noqa: BLE001 - any compiler/toolchain error means "not available"
                reason = f"torch.compile failed ({type(error).__name__}: {str(error)[:200]})"
                warnings.warn(
                    f"{type(self).__name__}(compile=True): {reason}; using the eager fast form from now on",
                    stacklevel=3,
                )
                self._compile_failed = True
                self._fallback(COMPILED, REFERENCE, reason + "; the rest of this step")
                self._fallback(COMPILED, FAST, reason + "; every later step")
                # Compilation happens before a kernel mutates anything, so this parameter is still untouched.
                for q, h in candidates[position:]:
                    self._reference_update(group, q, h)
                self._count(COMPILED, position)
                self._count(REFERENCE, len(candidates) - position)
                return
        self._count(COMPILED, len(candidates))

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
            if projects(group, p):
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
