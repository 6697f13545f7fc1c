"""Norm growth of scale-invariant weights under GD, momentum GD and projected momentum GD, with closed forms.

For a scale-invariant loss f (f(c w) = f(w) for c > 0) the gradient is orthogonal to w: w . grad f(w) = 0
(arXiv 2006.08217v3, Sec. 2). With heavy-ball momentum in PyTorch's convention (no dampening),

    p_t = beta p_{t-1} + grad f(w_t),   p_{-1} = 0,   w_{t+1} = w_t - eta p_t,

the squared norm evolves exactly as (derivation in docs/paper.md §4.4):

    GD (beta = 0):   ||w_{t+1}||^2 = ||w_t||^2 + eta^2 ||grad f(w_t)||^2
    momentum:        w_t . p_t     = -eta sum_{k=0}^{t-1} beta^{t-k} ||p_k||^2
                     ||w_{t+1}||^2 = ||w_t||^2 + eta^2 ||p_t||^2
                                     + 2 eta^2 sum_{k=0}^{t-1} beta^{t-k} ||p_k||^2
    projection:      ||w_{t+1}||^2 = ||w_t||^2 + eta^2 ||Pi_{w_t}(p_t)||^2,  Pi_w(x) = x - (w_hat . x) w_hat

The GD line is what a review of the paper cites as its Lemma 2.1; the momentum line is what we believe its
Lemma 2.2 states. The v3 wording of both could not be retrieved here (docs/paper.md §4.4), so the suite checks the
formulas against simulation, not against the paper's text. The history term 2 eta^2 sum beta^{t-k} ||p_k||^2
is why momentum grows norms much faster than GD: with ||p_k|| ~ P it approaches 2 eta^2 P^2 beta / (1 - beta)
per step, 18 times the eta^2 P^2 term at beta 0.9.

Everything here is float64 NumPy: the closed forms are exact, so simulation and formula agree to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

GradFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SphereQuadratic:
    """A scale-invariant test loss on R^d: f(w) = 1/2 ||A w_hat - b||^2 with w_hat = w / ||w||.

    ``A`` is (m, d), ``b`` is (m,). The gradient, (I - w_hat w_hat^T) A^T (A w_hat - b) / ||w||, is orthogonal
    to w by construction, as for any function of w_hat alone.
    """

    A: np.ndarray
    b: np.ndarray

    @classmethod
    def random(cls, dim: int = 8, rows: int = 12, seed: int = 0) -> SphereQuadratic:
        rng = np.random.default_rng(seed)
        return cls(rng.standard_normal((rows, dim)), rng.standard_normal(rows))

    def loss(self, w: np.ndarray) -> float:
        residual = self.A @ (w / np.linalg.norm(w)) - self.b
        return 0.5 * float(residual @ residual)

    def grad(self, w: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(w)
        w_hat = w / norm
        g_hat = self.A.T @ (self.A @ w_hat - self.b)
        return (g_hat - w_hat * (w_hat @ g_hat)) / norm


@dataclass(frozen=True)
class Trajectory:
    """A simulated run: ``weights`` (T+1, d) w_0..w_T, ``grads`` (T, d), ``updates`` (T, d) p_t as applied
    (after the projection when ``projected``)."""

    weights: np.ndarray
    grads: np.ndarray
    updates: np.ndarray
    lr: float
    momentum: float
    projected: bool

    @property
    def norms(self) -> np.ndarray:
        """||w_t||_2 for t = 0..T, shape (T+1,)."""
        return np.linalg.norm(self.weights, axis=1)


def project_tangent(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pi_w(x) = x - (w_hat . x) w_hat: the part of x orthogonal to w (the paper's projection, Sec. 3)."""
    w_hat = w / np.linalg.norm(w)
    return x - w_hat * (w_hat @ x)


def simulate(
    grad_fn: GradFn, w0: np.ndarray, lr: float, momentum: float = 0.0, steps: int = 100, project: bool = False
) -> Trajectory:
    """Heavy-ball GD in PyTorch's convention (``torch.optim.SGD`` with dampening 0, no nesterov); with
    ``project`` the momentum buffer is kept as is and only the applied update is projected, as SGDP does."""
    w = np.asarray(w0, dtype=np.float64).copy()
    buf = np.zeros_like(w)
    weights, grads, updates = [w.copy()], [], []
    for _ in range(steps):
        g = grad_fn(w)
        buf = momentum * buf + g
        update = project_tangent(w, buf) if project else buf
        w = w - lr * update
        weights.append(w.copy())
        grads.append(g)
        updates.append(update)
    return Trajectory(np.array(weights), np.array(grads), np.array(updates), lr, momentum, project)


def gd_norm_sq(norm0_sq: float, lr: float, grad_norms_sq: np.ndarray) -> np.ndarray:
    """||w_t||^2 for t = 0..T under plain GD: ||w_0||^2 + eta^2 sum_{k<t} ||g_k||^2. Shape (T+1,)."""
    return norm0_sq + lr**2 * np.concatenate([[0.0], np.cumsum(grad_norms_sq)])


def momentum_radial_products(lr: float, momentum: float, update_norms_sq: np.ndarray) -> np.ndarray:
    """w_t . p_t = -eta sum_{k=0}^{t-1} beta^{t-k} ||p_k||^2 for t = 0..T-1, from ``update_norms_sq`` (T,)."""
    out = np.zeros_like(update_norms_sq)
    for t in range(1, len(update_norms_sq)):
        # Recurrence form: w_t.p_t = beta (w_{t-1}.p_{t-1} - eta ||p_{t-1}||^2), because w_t.grad_t = 0
        # and w_t = w_{t-1} - eta p_{t-1}; unrolled, it is the sum in the docstring.
        out[t] = momentum * (out[t - 1] - lr * update_norms_sq[t - 1])
    return out


def momentum_norm_sq(norm0_sq: float, lr: float, momentum: float, update_norms_sq: np.ndarray) -> np.ndarray:
    """||w_t||^2 for t = 0..T under momentum GD, by the closed form in the module docstring. Shape (T+1,).

    Written as the explicit sum (not the recurrence) so that it checks the formula as stated.
    """
    steps = len(update_norms_sq)
    out = np.empty(steps + 1)
    out[0] = norm0_sq
    for t in range(steps):
        k = np.arange(t)
        history = np.sum(momentum ** (t - k) * update_norms_sq[:t])
        out[t + 1] = out[t] + lr**2 * update_norms_sq[t] + 2 * lr**2 * history
    return out


def projected_norm_sq(norm0_sq: float, lr: float, projected_update_norms_sq: np.ndarray) -> np.ndarray:
    """||w_t||^2 for t = 0..T when each update is projected: second-order growth as in GD. Shape (T+1,)."""
    return gd_norm_sq(norm0_sq, lr, projected_update_norms_sq)
