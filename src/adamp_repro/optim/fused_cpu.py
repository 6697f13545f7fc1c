"""Fused C++ kernels for the AdamP / SGDP step on fp32 CPU tensors (the default ``foreach=None`` form on CPU).

One call per param group runs the whole step of every eligible parameter inside one OpenMP region:

- the parameters are cut into work chunks (whole rows of a weight, a piece of one long row, or a flat piece of
  a never-projected parameter) and consecutive parameters into batches of about ``BATCH`` elements, so that
  what phase A reads is still in cache when phase B reads it again;
- phase A (candidates, ndim > 1): per output-channel row the sums <g, w>, |g|^2, |w|^2 in double;
- decision (one thread, per weight): the channel test max_r |cos_r| < delta / sqrt(K), then the layer test on
  the summed rows, each cosine computed in double (norms clamped as in ``F.cosine_similarity``) and compared
  in fp32 as the official ``tensor < float`` compares, so the branch is taken inside the kernel: no Python
  ``if`` on a tensor, no sync;
- phase B, one pass over p, g and the state: the moments (or momentum buffer) are updated in the official
  operation order (``mul`` then ``add`` with alpha as one FMA, ``addcmul``, sqrt, true division by
  fp32 sqrt(bc2), + eps, m / denom), then
  * not projected: w <- fma(u, -step, w * decay_plain);
  * channel view, row short enough to sit in L2: the row's update is kept in a small buffer while
    s_r = sum(w_hat * u) accumulates, then u <- u - w_hat * fp32(s_r) and the weight is written;
  * layer view, or a channel row longer than a chunk: the sums accumulate across chunks and phase C
    re-reads the row (or tensor), recomputes u from the stored moments and writes the weight.
  ``w_hat = w / (fp32(|w_r|) + eps)`` and the products are rounded in fp32 as in the official projection; only
  the row sums (double here, fp32 cascade there) round differently, so the result agrees with adamp 0.3.0 to a
  few ulp per step (the fast form's tolerance, tests/test_optim_fused.py).
- SGDP without nesterov projects the momentum buffer itself (``project_buffer=True``, the official aliasing).

The library is plain C++ with a C ABI (no torch headers: it builds in about 2 s) and is compiled on
first use with the system C++ compiler (``$CXX``, default ``g++``) and ``-march=native`` into
``$ADAMP_REPRO_CACHE_DIR`` (default ``~/.cache/adamp_repro``), keyed by a hash of the source, the flags and
the CPU's feature flags; it links the ``libgomp.so.1`` torch has already loaded, so it shares torch's OpenMP
thread pool and ``torch.set_num_threads``. If the build fails, ``load`` warns once and returns None and the
optimizers use the torch multi-tensor form. ``ADAMP_REPRO_FUSED_CPU=0`` disables the kernels.

``build_info`` says what this process built or loaded (compiler, its version, flags, library, cache folder),
or why the kernels were not used; run records keep it (``fused_cpu_build``), since another compiler or another
``-march=native`` CPU may round a few operations differently.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from array import array
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "BATCH",
    "CHUNK",
    "build",
    "build_info",
    "build_seconds",
    "enabled",
    "is_built",
    "library_path",
    "load",
    "step",
    "unavailable_reason",
]

ENV_DISABLE = "ADAMP_REPRO_FUSED_CPU"
ENV_CACHE = "ADAMP_REPRO_CACHE_DIR"
# Work-chunk size (elements): a chunk of the four streams plus the row buffer (~640 KiB) stays in L2.
CHUNK = int(os.environ.get("ADAMP_REPRO_FUSED_CHUNK", 1 << 15))
# Batch size (elements): phase A's reads of w and g (4 MiB) are still in cache when phase B reads them.
BATCH = int(os.environ.get("ADAMP_REPRO_FUSED_BATCH", 1 << 19))
KIND_ADAM, KIND_SGD = 0, 1

_SOURCE = r"""
// Fused AdamP / SGDP step, fp32 CPU. See adamp_repro/optim/fused_cpu.py for the design.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include <omp.h>

namespace {

enum Mode : int { NONE = 0, CHANNEL = 1, LAYER = 2 };

struct Desc {
  float* p;
  const float* g;
  float* a;  // exp_avg (Adam) or momentum buffer (SGD)
  float* b;  // exp_avg_sq (Adam), unused (SGD)
  int64_t n, rows, K, row0;  // rows == 0: never projected
  float alpha;               // -step size, as the official add_(alpha=) casts it
  float sb2;                 // fp32 sqrt(1 - beta2^t) (Adam)
  float thr_c, thr_l;        // fp32 thresholds of the two views
  int mode;
  bool two_sweep;
  float nf_layer;            // fp32 |w| + eps of the layer view
  double s_layer;            // layer-view sum(w_hat * u)
};

struct Chunk {
  int32_t t;
  int64_t begin, end;
};

struct Hyper {
  float b1, c1, b2, c2, eps;  // Adam: beta1, 1-beta1, beta2, 1-beta2, eps
  float mu, damp;             // SGD: momentum, 1-dampening
  float decay_proj, decay_plain;
  double eps_d;
};

// ---------------------------------------------------------------------------------------------- Adam
template <bool NEST>
inline float adam_dir(float g, float m, float v, float b1, float c1, float sb2, float eps) {
  const float den = std::sqrt(v) / sb2 + eps;
  const float num = NEST ? b1 * m + c1 * g : m;
  return num / den;
}

template <bool NEST>
inline float adam_elem(float g, float& m, float& v, const float b1, const float c1, const float b2,
                       const float c2, const float sb2, const float eps) {
  const float mn = std::fma(g, c1, m * b1);  // m.mul_(beta1).add_(g, alpha=1-beta1)
  const float vn = std::fma(c2 * g, g, v * b2);  // v.mul_(beta2).addcmul_(g, g, value=1-beta2): ATen fuses
                                                 // value*g1*g2 + self into one FMA
  m = mn;
  v = vn;
  return adam_dir<NEST>(g, mn, vn, b1, c1, sb2, eps);
}

template <bool NEST>
struct AdamK {
  static void none(const Desc& d, int64_t i0, int64_t i1, const Hyper& h, float) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict m = d.a;
    float* __restrict v = d.b;
    const float b1 = h.b1, c1 = h.c1, b2 = h.b2, c2 = h.c2, eps = h.eps, sb2 = d.sb2, alpha = d.alpha;
    const float dec = h.decay_plain;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float u = adam_elem<NEST>(g[i], m[i], v[i], b1, c1, b2, c2, sb2, eps);
      p[i] = std::fma(u, alpha, p[i] * dec);
    }
  }
  // Whole rows [r0, r1) of a channel-view weight; each row's update is kept in ubuf (K <= chunk).
  static void rows(const Desc& d, int64_t r0, int64_t r1, const float* nf, const Hyper& h, float* ubuf) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict m = d.a;
    float* __restrict v = d.b;
    float* __restrict u = ubuf;
    const float b1 = h.b1, c1 = h.c1, b2 = h.b2, c2 = h.c2, eps = h.eps, sb2 = d.sb2, alpha = d.alpha;
    const float dec = h.decay_proj;
    const int64_t K = d.K;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * K;
      const float n = nf[r];
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = base + j;
        const float x = adam_elem<NEST>(g[i], m[i], v[i], b1, c1, b2, c2, sb2, eps);
        u[j] = x;
        s += (double)((p[i] / n) * x);
      }
      const float sf = (float)s;
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = base + j;
        const float x = u[j] - (p[i] / n) * sf;
        p[i] = std::fma(x, alpha, p[i] * dec);
      }
    }
  }
  static double sweep1(const Desc& d, int64_t i0, int64_t i1, float n, const Hyper& h) {
    const float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict m = d.a;
    float* __restrict v = d.b;
    const float b1 = h.b1, c1 = h.c1, b2 = h.b2, c2 = h.c2, eps = h.eps, sb2 = d.sb2;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; ++i) {
      const float x = adam_elem<NEST>(g[i], m[i], v[i], b1, c1, b2, c2, sb2, eps);
      s += (double)((p[i] / n) * x);
    }
    return s;
  }
  static void sweep2(const Desc& d, int64_t i0, int64_t i1, float n, float sf, const Hyper& h) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    const float* __restrict m = d.a;
    const float* __restrict v = d.b;
    const float b1 = h.b1, c1 = h.c1, eps = h.eps, sb2 = d.sb2, alpha = d.alpha, dec = h.decay_proj;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float x = adam_dir<NEST>(g[i], m[i], v[i], b1, c1, sb2, eps) - (p[i] / n) * sf;
      p[i] = std::fma(x, alpha, p[i] * dec);
    }
  }
};

// ----------------------------------------------------------------------------------------------- SGD
// PBUF: without nesterov the update is the buffer itself and the projection rewrites it (official aliasing).
template <bool NEST, bool PBUF>
struct SgdK {
  static inline float elem(float g, float& buf, const float mu, const float damp) {
    const float bn = std::fma(g, damp, buf * mu);  // buf.mul_(momentum).add_(g, alpha=1-dampening)
    buf = bn;
    return NEST ? g + mu * bn : bn;
  }
  static void none(const Desc& d, int64_t i0, int64_t i1, const Hyper& h, float) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict buf = d.a;
    const float mu = h.mu, damp = h.damp, alpha = d.alpha, dec = h.decay_plain;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float x = elem(g[i], buf[i], mu, damp);
      p[i] = std::fma(x, alpha, p[i] * dec);
    }
  }
  static void rows(const Desc& d, int64_t r0, int64_t r1, const float* nf, const Hyper& h, float* ubuf) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict buf = d.a;
    float* __restrict u = ubuf;
    const float mu = h.mu, damp = h.damp, alpha = d.alpha, dec = h.decay_proj;
    const int64_t K = d.K;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t base = r * K;
      const float n = nf[r];
      double s = 0.0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = base + j;
        const float x = elem(g[i], buf[i], mu, damp);
        u[j] = x;
        s += (double)((p[i] / n) * x);
      }
      const float sf = (float)s;
#pragma omp simd
      for (int64_t j = 0; j < K; ++j) {
        const int64_t i = base + j;
        const float x = u[j] - (p[i] / n) * sf;
        if (PBUF) buf[i] = x;
        p[i] = std::fma(x, alpha, p[i] * dec);
      }
    }
  }
  static double sweep1(const Desc& d, int64_t i0, int64_t i1, float n, const Hyper& h) {
    const float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict buf = d.a;
    const float mu = h.mu, damp = h.damp;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = i0; i < i1; ++i) {
      const float x = elem(g[i], buf[i], mu, damp);
      s += (double)((p[i] / n) * x);
    }
    return s;
  }
  static void sweep2(const Desc& d, int64_t i0, int64_t i1, float n, float sf, const Hyper& h) {
    float* __restrict p = d.p;
    const float* __restrict g = d.g;
    float* __restrict buf = d.a;
    const float mu = h.mu, alpha = d.alpha, dec = h.decay_proj;
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) {
      const float bn = buf[i];
      const float x = (NEST ? g[i] + mu * bn : bn) - (p[i] / n) * sf;
      if (PBUF) buf[i] = x;
      p[i] = std::fma(x, alpha, p[i] * dec);
    }
  }
};

// ------------------------------------------------------------------------------------------- driver
inline void row_sums(const float* __restrict p, const float* __restrict g, int64_t i0, int64_t i1,
                     double* out) {
  double gp = 0.0, gg = 0.0, pp = 0.0;
#pragma omp simd reduction(+ : gp, gg, pp)
  for (int64_t i = i0; i < i1; ++i) {
    const double x = p[i], y = g[i];
    gp += y * x;
    gg += y * y;
    pp += x * x;
  }
  out[0] = gp;
  out[1] = gg;
  out[2] = pp;
}

inline float cosine(double gp, double gg, double pp, double eps) {
  // F.cosine_similarity (torch >= ~1.12): each vector divided by max(norm, eps), then the dot product.
  return (float)(std::fabs(gp) / (std::max(std::sqrt(gg), eps) * std::max(std::sqrt(pp), eps)));
}

void decide(Desc& d, const double* stats, float* nf, double* acc, const Hyper& h, int64_t chunk) {
  d.mode = NONE;
  d.two_sweep = false;
  if (d.rows == 0) return;
  const double* st = stats + 3 * d.row0;
  float cmax = 0.0f;
  bool nan = false;
  double gp = 0.0, gg = 0.0, pp = 0.0;
  for (int64_t r = 0; r < d.rows; ++r) {
    const float c = cosine(st[3 * r], st[3 * r + 1], st[3 * r + 2], h.eps_d);
    nan |= std::isnan(c);
    cmax = std::max(cmax, c);
    gp += st[3 * r];
    gg += st[3 * r + 1];
    pp += st[3 * r + 2];
  }
  if (!nan && cmax < d.thr_c) {
    d.mode = CHANNEL;
    d.two_sweep = d.K > chunk;
    for (int64_t r = 0; r < d.rows; ++r) {
      nf[d.row0 + r] = (float)std::sqrt(st[3 * r + 2]) + h.eps;
      acc[d.row0 + r] = 0.0;
    }
    return;
  }
  const float c = cosine(gp, gg, pp, h.eps_d);
  if (!std::isnan(c) && c < d.thr_l) {
    d.mode = LAYER;
    d.two_sweep = true;
    d.nf_layer = (float)std::sqrt(pp) + h.eps;
    d.s_layer = 0.0;
  }
}

template <class Kern>
void run(std::vector<Desc>& ds, const Hyper& h, int nthreads, int64_t chunk, int64_t batch) {
  const int64_t N = (int64_t)ds.size();
  int64_t R = 0;
  for (auto& d : ds) {
    d.K = d.rows > 0 ? d.n / d.rows : 0;
    d.row0 = R;
    R += d.rows;
  }
  std::vector<double> stats(3 * R, 0.0), acc(R, 0.0);
  std::vector<float> nf(R, 0.0f);
  std::vector<Chunk> chunks;
  std::vector<int64_t> first_chunk(N + 1, 0);
  std::vector<int64_t> bounds{0};  // batches: tensors [bounds[b], bounds[b+1])
  int64_t in_batch = 0;
  for (int64_t t = 0; t < N; ++t) {
    const Desc& d = ds[t];
    first_chunk[t] = (int64_t)chunks.size();
    if (d.rows == 0 || d.K > chunk) {
      // flat pieces; for a long-row weight, pieces inside one row
      const int64_t span = d.rows == 0 ? d.n : d.K;
      const int64_t pieces = (span + chunk - 1) / chunk;
      for (int64_t base = 0; base < d.n; base += span)
        for (int64_t k = 0; k < pieces; ++k)
          chunks.push_back({(int32_t)t, base + span * k / pieces, base + span * (k + 1) / pieces});
    } else {
      const int64_t per = std::max<int64_t>(1, chunk / d.K);
      for (int64_t r = 0; r < d.rows; r += per)
        chunks.push_back({(int32_t)t, r * d.K, std::min(d.rows, r + per) * d.K});
    }
    in_batch += d.n;
    if (in_batch >= batch || t == N - 1) {
      bounds.push_back(t + 1);
      in_batch = 0;
    }
  }
  first_chunk[N] = (int64_t)chunks.size();
  const int64_t B = (int64_t)bounds.size() - 1;
  std::vector<char> any_two(B, 0);

#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> ubuf(chunk);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t c0 = first_chunk[bounds[b]], c1 = first_chunk[bounds[b + 1]];
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = c0; c < c1; ++c) {
        const Chunk& ch = chunks[c];
        const Desc& d = ds[ch.t];
        if (d.rows == 0) continue;
        if (d.K > chunk) {  // a piece of one row: add into the row's sums
          double part[3];
          row_sums(d.p, d.g, ch.begin, ch.end, part);
          double* out = stats.data() + 3 * (d.row0 + ch.begin / d.K);
          for (int k = 0; k < 3; ++k) {
#pragma omp atomic
            out[k] += part[k];
          }
        } else {
          for (int64_t r = ch.begin / d.K; r < ch.end / d.K; ++r)
            row_sums(d.p, d.g, r * d.K, (r + 1) * d.K, stats.data() + 3 * (d.row0 + r));
        }
      }
#pragma omp single
      {
        for (int64_t t = bounds[b]; t < bounds[b + 1]; ++t) {
          decide(ds[t], stats.data(), nf.data(), acc.data(), h, chunk);
          any_two[b] |= ds[t].two_sweep;
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t c = c0; c < c1; ++c) {
        const Chunk& ch = chunks[c];
        Desc& d = ds[ch.t];
        if (d.mode == NONE) {
          Kern::none(d, ch.begin, ch.end, h, 0.0f);
        } else if (!d.two_sweep) {
          Kern::rows(d, ch.begin / d.K, ch.end / d.K, nf.data() + d.row0, h, ubuf.data());
        } else if (d.mode == CHANNEL) {
          const int64_t r = d.row0 + ch.begin / d.K;
          const double s = Kern::sweep1(d, ch.begin, ch.end, nf[r], h);
#pragma omp atomic
          acc[r] += s;
        } else {
          const double s = Kern::sweep1(d, ch.begin, ch.end, d.nf_layer, h);
#pragma omp atomic
          d.s_layer += s;
        }
      }
      if (any_two[b]) {
#pragma omp for schedule(dynamic, 1)
        for (int64_t c = c0; c < c1; ++c) {
          const Chunk& ch = chunks[c];
          const Desc& d = ds[ch.t];
          if (!d.two_sweep) continue;
          if (d.mode == CHANNEL) {
            const int64_t r = d.row0 + ch.begin / d.K;
            Kern::sweep2(d, ch.begin, ch.end, nf[r], (float)acc[r], h);
          } else {
            Kern::sweep2(d, ch.begin, ch.end, d.nf_layer, (float)d.s_layer, h);
          }
        }
      }
    }
  }
}

}  // namespace

extern "C" {

int adamp_fused_abi_version() { return 1; }

// kind 0 = AdamP, 1 = SGDP. Per tensor i: ptrs[4i..4i+3] = p, g, state a, state b (0 for SGD);
// sizes[2i] = numel, sizes[2i+1] = rows (0: never projected); scal[4i..4i+3] = -step size, sqrt(bc2),
// channel threshold, layer threshold. hyper = beta1, beta2, eps, decay_projected, decay_plain, momentum,
// dampening (all Python doubles). flags: bit 0 nesterov, bit 1 project_buffer.
int adamp_fused_step(int kind, int64_t n, const uint64_t* ptrs, const int64_t* sizes, const double* scal,
                     const double* hyper, int flags, int nthreads, int64_t chunk, int64_t batch) {
  if (n <= 0) return 0;
  if (chunk < 1 || batch < 1 || nthreads < 1) return 1;
  std::vector<Desc> ds((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    Desc& d = ds[i];
    d.p = reinterpret_cast<float*>(ptrs[4 * i]);
    d.g = reinterpret_cast<const float*>(ptrs[4 * i + 1]);
    d.a = reinterpret_cast<float*>(ptrs[4 * i + 2]);
    d.b = reinterpret_cast<float*>(ptrs[4 * i + 3]);
    d.n = sizes[2 * i];
    d.rows = sizes[2 * i + 1];
    if (d.n <= 0 || d.rows < 0 || (d.rows > 0 && d.n % d.rows != 0)) return 2;
    d.alpha = (float)scal[4 * i];
    d.sb2 = (float)scal[4 * i + 1];
    d.thr_c = (float)scal[4 * i + 2];
    d.thr_l = (float)scal[4 * i + 3];
    d.mode = NONE;
    d.two_sweep = false;
    d.nf_layer = 0.0f;
    d.s_layer = 0.0;
  }
  Hyper h;
  h.b1 = (float)hyper[0];
  h.c1 = (float)(1.0 - hyper[0]);
  h.b2 = (float)hyper[1];
  h.c2 = (float)(1.0 - hyper[1]);
  h.eps = (float)hyper[2];
  h.eps_d = hyper[2];
  h.decay_proj = (float)hyper[3];
  h.decay_plain = (float)hyper[4];
  h.mu = (float)hyper[5];
  h.damp = (float)(1.0 - hyper[6]);
  const bool nest = flags & 1, pbuf = flags & 2;
  if (kind == 0) {
    if (nest) run<AdamK<true>>(ds, h, nthreads, chunk, batch);
    else run<AdamK<false>>(ds, h, nthreads, chunk, batch);
  } else if (kind == 1) {
    if (nest) run<SgdK<true, false>>(ds, h, nthreads, chunk, batch);
    else if (pbuf) run<SgdK<false, true>>(ds, h, nthreads, chunk, batch);
    else run<SgdK<false, false>>(ds, h, nthreads, chunk, batch);
  } else {
    return 3;
  }
  return 0;
}

}  // extern "C"
"""

_FLAGS = (
    "-O3",
    "-march=native",
    "-std=c++17",
    "-fopenmp",
    "-ffp-contract=off",  # no hidden FMAs: the official ops round each product (explicit fma where ATen fuses)
    "-fno-math-errno",  # lets sqrtf vectorise (IEEE sqrt all the same)
    "-fPIC",
    "-shared",
)

_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "error": None, "build_seconds": None, "compiler_version": None}


def enabled() -> bool:
    """False when ``ADAMP_REPRO_FUSED_CPU`` is set to 0/false/no/off."""
    return os.environ.get(ENV_DISABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("flags"):
                    return line.strip()
    except OSError:
        pass
    return platform.machine() + platform.processor()


def cache_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "adamp_repro"
    )
    return Path(root) / "fused_cpu"


def library_path() -> Path:
    """Where the library for this source, these flags, this compiler name and this CPU lives."""
    key = "\n".join((_SOURCE, " ".join(_FLAGS), _compiler(), _cpu_signature()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"adamp_fused_{digest}.so"


def is_built() -> bool:
    """True if the library is already in the cache (loading it then costs milliseconds, not a compile)."""
    return library_path().exists()


def build(force: bool = False) -> float:
    """Compile the library into the cache (atomically); return the seconds spent compiling (0 if cached)."""
    target = library_path()
    if target.exists() and not force:
        return 0.0
    compiler = _compiler()
    if shutil.which(compiler) is None:
        raise RuntimeError(f"C++ compiler {compiler!r} not found (set $CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as temp:
        source = Path(temp) / "adamp_fused.cpp"
        source.write_text(_SOURCE)
        output = Path(temp) / target.name
        result = subprocess.run(
            [compiler, *_FLAGS, str(source), "-o", str(output)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed ({result.returncode}): {result.stderr.strip()[-800:]}")
        os.replace(output, target)  # atomic: concurrent builders (pytest-xdist) never see a partial file
    return time.perf_counter() - start


def build_seconds() -> float | None:
    """Seconds this process spent compiling the library (0.0 if it came from the cache; None if not loaded)."""
    return _state["build_seconds"]


def load(warn: bool = True) -> ctypes.CDLL | None:
    """The library, built on first use; None (and one warning) if it cannot be built or loaded."""
    if _state["lib"] is not None or _state["tried"]:
        return _state["lib"]
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        try:
            seconds = build()
            lib = ctypes.CDLL(str(library_path()))
            if lib.adamp_fused_abi_version() != 1:
                raise RuntimeError("stale library (ABI version mismatch)")
            fn = lib.adamp_fused_step
            fn.restype = ctypes.c_int
            fn.argtypes = [
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_void_p,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int64,
                ctypes.c_int64,
            ]
            _state["lib"], _state["build_seconds"] = lib, seconds
        except Exception as error:  # noqa: BLE001 - any toolchain or loader error means "not available"
            _state["error"] = f"{type(error).__name__}: {error}"
            if warn:
                warnings.warn(
                    f"adamp_repro fused CPU kernels unavailable ({_state['error'][:300]}); "
                    "using the torch multi-tensor form",
                    stacklevel=3,
                )
        finally:
            _state["tried"] = True
    return _state["lib"]


def unavailable_reason() -> str | None:
    """Why the fused kernels are not used in this process: disabled by ``ADAMP_REPRO_FUSED_CPU``, or the first
    line of the build or load error; None when they are loaded or not yet tried."""
    if not enabled():
        return f"disabled by {ENV_DISABLE}={os.environ.get(ENV_DISABLE)}"
    error = (_state.get("error") or "").strip()
    return error.splitlines()[0][:300] if error else None


def _compiler_version(compiler: str) -> str | None:
    """The first line of ``<compiler> --version`` (asked once per process), or None if it does not run."""
    if _state.get("compiler_version") is None:
        try:
            result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30)
            lines = result.stdout.strip().splitlines()
            _state["compiler_version"] = lines[0] if result.returncode == 0 and lines else ""
        except (OSError, subprocess.SubprocessError):
            _state["compiler_version"] = ""
    return _state.get("compiler_version") or None


def build_info() -> dict:
    """What the fused kernels of this process are, for a run record (JSON-ready; nothing is built here).

    ``status``: ``disabled`` (``reason``: the variable that turned them off), ``loaded`` (built in this
    process, ``compiled_s`` > 0, or taken from the cache, 0.0), ``failed`` (``reason``: the first line of the
    error) or ``not_loaded`` (enabled, never asked for: no fp32 CPU step of the default form ran). Always:
    ``compiler`` (``$CXX`` as given), ``compiler_path``, ``compiler_version`` (first line of ``--version``),
    ``flags`` (``-march=native`` among them: the library is tuned to the CPU that built it), ``torch`` (the
    torch whose OpenMP runtime it shares; no torch headers are compiled in), ``library`` (the file name: a hash
    of source, flags, compiler and CPU) and ``cache_dir`` (home folder written ``~``).
    """
    compiler = _compiler()
    path = shutil.which(compiler)
    home = os.path.expanduser("~")
    folder = str(cache_dir())
    if home not in ("", "/", "~") and (folder == home or folder.startswith(home + os.sep)):
        folder = "~" + folder[len(home) :]
    if not enabled():  # what the optimizers do now, even if an earlier step loaded the library
        status, reason = "disabled", unavailable_reason()
    elif _state["lib"] is not None:
        status, reason = "loaded", None
    elif _state.get("error"):
        status, reason = "failed", unavailable_reason()
    else:
        status, reason = "not_loaded", None
    return {
        "status": status,
        "reason": reason,
        "compiled_s": _state.get("build_seconds"),
        "compiler": compiler,
        "compiler_path": path,
        "compiler_version": _compiler_version(path) if path else None,
        "flags": list(_FLAGS),
        "torch": torch.__version__,
        "library": library_path().name,
        "cache_dir": folder,
    }


def step(
    kind: int,
    tensors: Sequence[tuple[Tensor, Tensor, Tensor, Tensor | None]],
    rows: Sequence[int],
    scalars: Sequence[float],
    hyper: Sequence[float],
    nesterov: bool,
    project_buffer: bool = False,
) -> None:
    """Run one fused step. ``tensors``: (param, grad, state a, state b or None), dense fp32 with equal strides;
    ``rows``: shape[0] for projection candidates (their rows must be contiguous blocks), 0 otherwise;
    ``scalars``: 4 per tensor (-step size, fp32-cast sqrt(bc2), channel and layer thresholds);
    ``hyper``: beta1, beta2, eps, decay_projected, decay_plain, momentum, dampening."""
    lib = _state["lib"]
    if lib is None:
        raise RuntimeError("fused CPU kernels are not loaded; call fused_cpu.load() first")
    ptrs = array("Q")
    for p, g, a, b in tensors:
        ptrs.extend((p.data_ptr(), g.data_ptr(), a.data_ptr(), 0 if b is None else b.data_ptr()))
    sizes = array("q")
    for (p, _, _, _), r in zip(tensors, rows):
        sizes.extend((p.numel(), r))
    scal = array("d", scalars)
    hyp = array("d", hyper)
    status = lib.adamp_fused_step(
        kind,
        len(tensors),
        ptrs.buffer_info()[0],
        sizes.buffer_info()[0],
        scal.buffer_info()[0],
        hyp.buffer_info()[0],
        int(bool(nesterov)) | (2 if project_buffer else 0),
        max(1, torch.get_num_threads()),
        CHUNK,
        BATCH,
    )
    if status != 0:
        raise RuntimeError(f"adamp_fused_step failed with status {status}")
