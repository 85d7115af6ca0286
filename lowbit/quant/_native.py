"""Optional C kernels for the float32 fast path of :mod:`lowbit.quant.pot` (private).

The fast path of :func:`lowbit.quant.lbw_exact_many` makes two elementwise passes over the
weights: a histogram of the top 16 magnitude bits of every float32 (counts only), and a
lookup of each weight's signed half-octave key in a 1024-entry table. In torch each pass is
several ops (shift, mask, bincount with its own min/max passes; shift, add, index_select),
single-threaded where bincount is. The two kernels here do each pass in one loop over the
bit patterns, split over threads (POSIX threads, one slice of every tensor per thread).

Integer arithmetic only (bit patterns in, counts or table entries out), so the results are
the torch path's bit for bit; nothing here decides anything.

:func:`lowbit.quant.pot.lbw_approx` (the mu scheme) has three more: max |x| per segment (its
pattern also flags Inf/NaN), per-level counts and float64 sums of |x| (level = how many of
the scheme's thresholds lie at or below |x|, by exact comparisons on the bit patterns; the
sums' order is free, the caller certifies its decision against any order), and the table
lookup by sign and level. A segment is a tensor or one channel row.

The C source below is compiled with the system C compiler (``$CC``, else ``cc``/``gcc``) on
first use into a per-user cache directory (``$LOWBIT_NATIVE_CACHE``, else
``$XDG_CACHE_HOME/lowbit/native`` or ``~/.cache/lowbit/native``), keyed by a hash of the
source, flags and compiler, written atomically (concurrent first calls are safe), and loaded
with :mod:`ctypes`. Portable flags (no ``-march=native``), so a cache shared between machines
stays valid. Anything that fails (no compiler, read-only disk, a compile error, a timeout,
``LOWBIT_NATIVE=0`` in the environment) leaves :func:`lib` returning ``None`` and the callers
use their torch code; :func:`status` says why.
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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

_SRC = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <math.h>

#define NB 65536   /* fine magnitude keys: (bits >> 15) & 0xFFFF */
#define NSUB 4     /* interleaved sub-histograms (repeated bins do not serialise) */
#define MAXT 64

typedef struct {
    const uint32_t *const *xs;
    uint32_t *const *outs;
    const int64_t *lens;
    const uint32_t *tab;
    uint32_t **parts;   /* [nt * g] counts of keys lo..hi of one slice */
    int32_t *lohi;      /* [nt * g][2] */
    int64_t g, scan_from;
    int nt, t, err;
} job_t;

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef MULTIVERSION
#define MULTIVERSION
#endif

/* Counts of keys a..b-1 of x into the NSUB interleaved sub-histograms h. */
static void count_slice(const uint32_t *x, int64_t a, int64_t b, uint32_t *h) {
    int64_t i = a;
    for (; i + 4 <= b; i += 4) {
        h[(x[i] >> 15) & 0xFFFFu]++;
        h[NB + ((x[i + 1] >> 15) & 0xFFFFu)]++;
        h[2 * NB + ((x[i + 2] >> 15) & 0xFFFFu)]++;
        h[3 * NB + ((x[i + 3] >> 15) & 0xFFFFu)]++;
    }
    for (; i < b; i++) h[(x[i] >> 15) & 0xFFFFu]++;
}

/* Smallest and largest magnitude bit pattern of x[a..b-1] (short slices: from cache). */
MULTIVERSION static void minmax_slice(const uint32_t *x, int64_t a, int64_t b,
                                      int32_t *mn_, int32_t *mx_) {
    int32_t mn = 0x7FFFFFFF, mx = 0;
    for (int64_t i = a; i < b; i++) {
        int32_t m = (int32_t)(x[i] & 0x7FFFFFFFu);
        mn = m < mn ? m : mn;
        mx = m > mx ? m : mx;
    }
    *mn_ = mn; *mx_ = mx;
}

/* First and last 128-key block with a count in any sub-histogram (long slices: scanning
   the histogram costs less than a min/max over the elements). */
MULTIVERSION static void scan_blocks(const uint32_t *h, int32_t *lo, int32_t *hi) {
    int32_t l = -1, u = -1;
    for (int32_t blk = 0; blk < NB / 128; blk++) {
        uint32_t acc = 0;
        for (int s = 0; s < NSUB; s++) {
            const uint32_t *p = h + (int64_t)s * NB + blk * 128;
            for (int k = 0; k < 128; k++) acc |= p[k];
        }
        if (acc) {
            if (l < 0) l = blk;
            u = blk;
        }
    }
    *lo = l; *hi = u;
}

static void *count_worker(void *arg) {
    job_t *j = (job_t *)arg;
    uint32_t *h = (uint32_t *)calloc((size_t)NB * NSUB, sizeof(uint32_t));
    if (!h) { j->err = 1; return NULL; }
    for (int64_t g = 0; g < j->g; g++) {
        int64_t a = j->lens[g] * j->t / j->nt, b = j->lens[g] * (j->t + 1) / j->nt;
        int64_t slot = (int64_t)j->t * j->g + g;
        int32_t *lh = j->lohi + 2 * slot;
        if (a >= b) { lh[0] = NB; lh[1] = -1; continue; }
        const uint32_t *x = j->xs[g];
        uint32_t lo, hi;
        if (b - a < j->scan_from) {
            int32_t mn, mx;
            minmax_slice(x, a, b, &mn, &mx);
            count_slice(x, a, b, h);
            lo = (uint32_t)mn >> 15; hi = (uint32_t)mx >> 15;
        } else {
            int32_t bl, bh;
            count_slice(x, a, b, h);
            scan_blocks(h, &bl, &bh);
            if (bl < 0) { j->err = 1; bl = bh = 0; }  /* cannot happen: b > a counts */
            lo = (uint32_t)bl * 128; hi = (uint32_t)bh * 128 + 127;
        }
        uint32_t *p = (uint32_t *)malloc((size_t)(hi - lo + 1) * sizeof(uint32_t));
        for (uint32_t k = lo; k <= hi; k++) {
            if (p) p[k - lo] = h[k] + h[NB + k] + h[2 * NB + k] + h[3 * NB + k];
            h[k] = h[NB + k] = h[2 * NB + k] = h[3 * NB + k] = 0;
        }
        if (!p) { j->err = 1; lh[0] = NB; lh[1] = -1; continue; }
        j->parts[slot] = p;
        lh[0] = (int32_t)lo; lh[1] = (int32_t)hi;
    }
    free(h);
    return NULL;
}

static void *lookup_worker(void *arg) {
    job_t *j = (job_t *)arg;
    for (int64_t g = 0; g < j->g; g++) {
        int64_t a = j->lens[g] * j->t / j->nt, b = j->lens[g] * (j->t + 1) / j->nt;
        const uint32_t *x = j->xs[g];
        uint32_t *o = j->outs[g];
        const uint32_t *tb = j->tab + 1024 * g;
        /* signed key (bits >> 22, arithmetic) + 512 == (bits >> 22, logical) ^ 512 */
        for (int64_t i = a; i < b; i++) o[i] = tb[(x[i] >> 22) ^ 512u];
    }
    return NULL;
}

/* run(fn, base, nt): nt copies of *base (slice t of nt), fn on each, slice 0 on this thread and
   the others on POSIX threads (a slice whose thread cannot start runs here); returns the OR of
   the slices' err flags. One definition per job type. */
#define DEFINE_RUN(NAME, JOB)                                                                  \
static int NAME(void *(*fn)(void *), const JOB *base, int nt) {                               \
    JOB jobs[MAXT];                                                                            \
    pthread_t th[MAXT];                                                                        \
    int started[MAXT];                                                                         \
    for (int t = 0; t < nt; t++) {                                                             \
        jobs[t] = *base; jobs[t].nt = nt; jobs[t].t = t; jobs[t].err = 0;                      \
    }                                                                                          \
    for (int t = 1; t < nt; t++) started[t] = pthread_create(&th[t], NULL, fn, &jobs[t]) == 0; \
    fn(&jobs[0]);                                                                              \
    int err = jobs[0].err;                                                                     \
    for (int t = 1; t < nt; t++) {                                                             \
        if (started[t]) pthread_join(th[t], NULL);                                             \
        else fn(&jobs[t]);                                                                     \
        err |= jobs[t].err;                                                                    \
    }                                                                                          \
    return err;                                                                                \
}
DEFINE_RUN(run, job_t)

static int clamp_threads(int nt) { return nt < 1 ? 1 : nt > MAXT ? MAXT : nt; }

/* Fine counts of g non-empty float32 tensors in two calls. lb_count_begin counts (threads)
   and returns a handle (NULL: out of memory) and, in c0_w, the column window: fine keys
   [c0 * 128, c0 * 128 + w), c0 the first 128-key block any tensor occupies, w up to the end
   of the last one. lb_count_end writes the int64 rows [g][w] into fold (NULL: only frees)
   and frees the handle. */
typedef struct {
    uint32_t **parts;
    int32_t *lohi;
    int64_t g, start, w;
    int nt;
} counts_t;

static void counts_free(counts_t *c) {
    if (!c) return;
    if (c->parts)
        for (int64_t i = 0; i < (int64_t)c->nt * c->g; i++) free(c->parts[i]);
    free(c->parts);
    free(c->lohi);
    free(c);
}

void *lb_count_begin(const uint32_t *const *xs, const int64_t *lens, int64_t g, int nt,
                     int64_t scan_from, int64_t *c0_w) {
    nt = clamp_threads(nt);
    counts_t *c = (counts_t *)calloc(1, sizeof(counts_t));
    if (!c) return NULL;
    c->g = g; c->nt = nt;
    c->parts = (uint32_t **)calloc((size_t)nt * g, sizeof(uint32_t *));
    c->lohi = (int32_t *)malloc((size_t)nt * g * 2 * sizeof(int32_t));
    int err = !c->parts || !c->lohi;
    if (!err) {
        job_t base = {xs, NULL, lens, NULL, c->parts, c->lohi, g, scan_from, nt, 0, 0};
        err = run(count_worker, &base, nt);
    }
    if (err) { counts_free(c); return NULL; }
    int64_t lo = NB, hi = -1;
    for (int64_t i = 0; i < (int64_t)nt * g; i++) {
        if (c->lohi[2 * i] < lo) lo = c->lohi[2 * i];
        if (c->lohi[2 * i + 1] > hi) hi = c->lohi[2 * i + 1];
    }
    if (hi < lo) { lo = 0; hi = 0; }
    c->start = lo / 128 * 128;
    c->w = (hi / 128 + 1) * 128 - c->start;
    c0_w[0] = lo / 128; c0_w[1] = c->w;
    return c;
}

void lb_count_end(void *handle, int64_t *fold) {
    counts_t *c = (counts_t *)handle;
    if (c && fold) {
        for (int64_t r = 0; r < c->g; r++) {
            int64_t *f = fold + r * c->w;
            memset(f, 0, (size_t)c->w * sizeof(int64_t));
            for (int t = 0; t < c->nt; t++) {
                int64_t slot = (int64_t)t * c->g + r;
                const uint32_t *p = c->parts[slot];
                int32_t lo = c->lohi[2 * slot], hi = c->lohi[2 * slot + 1];
                for (int64_t k = lo; k <= hi; k++) f[k - c->start] += p[k - lo];
            }
        }
    }
    counts_free(c);
}

/* float64 statistics of one float32 tensor over its 1024 signed half-octave keys, exactly
   as torch.bincount(key, weights=...) makes them: each bin's sums in element order, the
   square rounded to float64 before it is added (no contraction: -ffp-contract=off). */
void lb_stats(const uint32_t *xs, int64_t n, int64_t *cnt, double *s1, double *s2) {
    const float *x = (const float *)xs;
    memset(cnt, 0, 1024 * sizeof(int64_t));
    memset(s1, 0, 1024 * sizeof(double));
    memset(s2, 0, 1024 * sizeof(double));
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = (xs[i] >> 22) ^ 512u;
        double d = (double)x[i];
        double q = d * d;
        cnt[k] += 1;
        s1[k] += d;
        s2[k] += q;
    }
}

/* ---- lbw_approx (the mu scheme, eq. 2.8): levels by exact threshold comparisons ----

   Segment g has nb[g] = n ascending thresholds bnd[g * 64 + j] (float32 bit patterns of
   non-negative values, so integer order is float order) and, when fast[g], the bit pattern
   mb[g] of a normal mu with bnd[j] == mu * 2**(j + 1 - n) for j >= 1 (all normal): then the
   level index  #{j : bnd[j] <= |x|}  follows from the bit distance to mu with a single
   comparison against bnd[0]; otherwise a binary search over bnd. Either way the index equals
   torch.searchsorted(bnd, |x|, right=True) exactly. */
static inline int mu_level(uint32_t ab, const uint32_t *b, int n, int fast, uint32_t mb) {
    if (fast) {
        int32_t d = (int32_t)mb - (int32_t)ab;
        int32_t c = d <= 0 ? 0 : (int32_t)(((uint32_t)d + 0x7FFFFFu) >> 23);
        int32_t lo = (int32_t)(ab >= b[0]);
        return c <= n - 2 ? n - c : lo;
    }
    int lo = 0, hi = n;
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        if (b[mid] <= ab) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* The fast case without branches: k = floor((|x| - mu) / 2**23) + n on the bit patterns,
   n at or above mu, (|x| >= bnd[0]) at or below level 1. */
static inline int32_t mu_level_fast(uint32_t ab, int32_t base, int32_t n, uint32_t b0) {
    int32_t k = ((int32_t)ab - base) >> 23;  /* base = mu bits - n * 2**23: arithmetic shift */
    k = k > n ? n : k;
    int32_t lo = (int32_t)(ab >= b0);
    return k <= 1 ? lo : k;
}

MULTIVERSION static void mu_lookup_fast(const uint32_t *x, uint32_t *o, int64_t a, int64_t b,
                                        int32_t base, int32_t n, uint32_t b0,
                                        const uint32_t *tb, int32_t m) {
    for (int64_t i = a; i < b; i++) {
        uint32_t xi = x[i];
        uint32_t ab = xi & 0x7FFFFFFFu;
        int32_t k = mu_level_fast(ab, base, n, b0);
        uint32_t v = tb[k + (int32_t)((xi >> 31) ^ 1u) * m];
        o[i] = v & (0u - (uint32_t)(ab != 0));
    }
}

typedef struct {
    const uint32_t *const *xs;
    uint32_t *const *outs;
    const int64_t *lens;
    const uint32_t *bnd, *mb, *tab;
    const int32_t *nb;
    const int8_t *fast;
    uint32_t *amax;     /* [nt][g] */
    int64_t *cnt;       /* [nt][g][m] */
    double *sum;        /* [nt][g][m] */
    int64_t g, m;
    int nt, t, err;
} mu_job_t;

MULTIVERSION static uint32_t absmax_slice(const uint32_t *x, int64_t a, int64_t b) {
    uint32_t mx = 0;
    for (int64_t i = a; i < b; i++) {
        uint32_t v = x[i] & 0x7FFFFFFFu;
        mx = v > mx ? v : mx;
    }
    return mx;
}

static void *mu_absmax_worker(void *arg) {
    mu_job_t *j = (mu_job_t *)arg;
    for (int64_t g = 0; g < j->g; g++) {
        int64_t a = j->lens[g] * j->t / j->nt, b = j->lens[g] * (j->t + 1) / j->nt;
        j->amax[(int64_t)j->t * j->g + g] = absmax_slice(j->xs[g], a, b);
    }
    return NULL;
}

static void *mu_stats_worker(void *arg) {
    mu_job_t *j = (mu_job_t *)arg;
    int64_t hc[4][65];
    double hs[4][65];
    for (int64_t g = 0; g < j->g; g++) {
        int64_t a = j->lens[g] * j->t / j->nt, b = j->lens[g] * (j->t + 1) / j->nt;
        const uint32_t *x = j->xs[g];
        const float *xf = (const float *)x;
        const uint32_t *bd = j->bnd + 64 * g;
        int n = j->nb[g], fast = j->fast[g];
        uint32_t mb = j->mb[g];
        memset(hc, 0, sizeof(hc));
        memset(hs, 0, sizeof(hs));
        int64_t i = a;
        if (fast) {
            int32_t base = (int32_t)mb - n * 0x800000;
            uint32_t b0 = bd[0];
            for (; i + 4 <= b; i += 4) {
                for (int s = 0; s < 4; s++) {
                    uint32_t ab = x[i + s] & 0x7FFFFFFFu;
                    int32_t k = mu_level_fast(ab, base, n, b0);
                    hc[s][k] += 1;
                    hs[s][k] += fabs((double)xf[i + s]);
                }
            }
        }
        /* four interleaved accumulator sets: repeated levels do not serialise */
        for (; i + 4 <= b; i += 4) {
            for (int s = 0; s < 4; s++) {
                uint32_t ab = x[i + s] & 0x7FFFFFFFu;
                int k = mu_level(ab, bd, n, fast, mb);
                hc[s][k] += 1;
                hs[s][k] += fabs((double)xf[i + s]);
            }
        }
        for (; i < b; i++) {
            uint32_t ab = x[i] & 0x7FFFFFFFu;
            int k = mu_level(ab, bd, n, fast, mb);
            hc[0][k] += 1;
            hs[0][k] += fabs((double)xf[i]);
        }
        int64_t *c = j->cnt + ((int64_t)j->t * j->g + g) * j->m;
        double *su = j->sum + ((int64_t)j->t * j->g + g) * j->m;
        for (int k = 0; k < j->m; k++) {
            c[k] = hc[0][k] + hc[1][k] + hc[2][k] + hc[3][k];
            su[k] = (hs[0][k] + hs[1][k]) + (hs[2][k] + hs[3][k]);
        }
    }
    return NULL;
}

static void *mu_lookup_worker(void *arg) {
    mu_job_t *j = (mu_job_t *)arg;
    for (int64_t g = 0; g < j->g; g++) {
        int64_t a = j->lens[g] * j->t / j->nt, b = j->lens[g] * (j->t + 1) / j->nt;
        const uint32_t *x = j->xs[g];
        uint32_t *o = j->outs[g];
        const uint32_t *bd = j->bnd + 64 * g;
        const uint32_t *tb = j->tab + 2 * j->m * g;  /* [2][m]: negatives, positives */
        int n = j->nb[g], fast = j->fast[g];
        uint32_t mb = j->mb[g];
        int64_t m = j->m;
        if (fast) {
            mu_lookup_fast(x, o, a, b, (int32_t)mb - n * 0x800000, n, bd[0], tb, (int32_t)m);
            continue;
        }
        /* branch-free (signs are random): positives read the second half of the table */
        for (int64_t i = a; i < b; i++) {
            uint32_t ab = x[i] & 0x7FFFFFFFu;
            int k = mu_level(ab, bd, n, fast, mb);
            uint32_t v = tb[(int64_t)k + (int64_t)((x[i] >> 31) ^ 1u) * m];
            o[i] = v & (0u - (uint32_t)(ab != 0));  /* +-0 quantizes to +0 (sign(0) = 0) */
        }
    }
    return NULL;
}

DEFINE_RUN(mu_run, mu_job_t)

/* amax[t * g + i] = largest |x| bit pattern of thread t's slice of segment i (0 if empty). */
int lb_mu_absmax(const uint32_t *const *xs, const int64_t *lens, int64_t g, uint32_t *amax,
                 int nt) {
    nt = clamp_threads(nt);
    mu_job_t base = {xs, NULL, lens, NULL, NULL, NULL, NULL, NULL, amax, NULL, NULL, g, 0,
                     nt, 0, 0};
    return mu_run(mu_absmax_worker, &base, nt);
}

/* Per-level counts and float64 sums of |x| of thread t's slice of segment i, at
   cnt/sum[(t * g + i) * m + level], level = mu_level (0..nb[i]). */
int lb_mu_stats(const uint32_t *const *xs, const int64_t *lens, int64_t g,
                const uint32_t *bnd, const int32_t *nb, const int8_t *fast,
                const uint32_t *mb, int64_t m, int64_t *cnt, double *sum, int nt) {
    nt = clamp_threads(nt);
    mu_job_t base = {xs, NULL, lens, bnd, mb, NULL, nb, fast, NULL, cnt, sum, g, m, nt, 0, 0};
    return mu_run(mu_stats_worker, &base, nt);
}

/* outs[i][k] = tab[i][sign][level] (bit patterns; tab is [g][2][m], negatives first), +0
   for +-0 inputs. */
int lb_mu_lookup(const uint32_t *const *xs, uint32_t *const *outs, const int64_t *lens,
                 int64_t g, const uint32_t *bnd, const int32_t *nb, const int8_t *fast,
                 const uint32_t *mb, int64_t m, const uint32_t *tab, int nt) {
    nt = clamp_threads(nt);
    mu_job_t base = {xs, outs, lens, bnd, mb, tab, nb, fast, NULL, NULL, NULL, g, m, nt, 0, 0};
    return mu_run(mu_lookup_worker, &base, nt);
}

/* outs[i][k] = tab[i * 1024 + signed half-octave key of xs[i][k]], bit patterns. */
int lb_lookup_many(const uint32_t *const *xs, uint32_t *const *outs, const int64_t *lens,
                   int64_t g, const uint32_t *tab, int nt) {
    job_t base = {xs, outs, lens, tab, NULL, NULL, g, 0, clamp_threads(nt), 0, 0};
    return run(lookup_worker, &base, clamp_threads(nt));
}
"""

_FLAGS = ["-O3", "-shared", "-fPIC", "-pthread", "-ffp-contract=off"]
# Below this many elements per thread a thread costs more than it saves.
_PER_THREAD = 1 << 16
# A slice at least this long finds its key range by scanning its histogram (cheaper than a
# min/max over its elements); shorter ones take the min/max. Same counts either way.
_SCAN_FROM = 1 << 15
# Slices are counted in uint32: tensors at or above this size take the torch path.
_MAX_NUMEL = 1 << 31

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "lib": None, "status": "not loaded yet"}


def _cache_dirs() -> list[Path]:
    """Where the built library may live: the user's cache directory, else a private
    per-user folder under the system temp directory."""
    env = os.environ.get("LOWBIT_NATIVE_CACHE")
    if env:
        return [Path(env)]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return [Path(base) / "lowbit" / "native",
            Path(tempfile.gettempdir()) / f"lowbit-native-{uid}"]


def _private_dir(d: Path) -> Path:
    """``d`` created if needed; refused unless it is ours and nobody else may write to it
    (we load code from it)."""
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = d.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise PermissionError(f"{d} is not a private directory of this user")
    return d


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc"):
        if cc and shutil.which(cc):
            return shutil.which(cc)
    return None


def _compile(cc: str, out_dir: Path, so: Path, stem: str, source: str,
             flags: Sequence[str]) -> None:
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src = Path(tmp) / f"{stem}.c"
        src.write_text(source)
        tmp_so = Path(tmp) / f"{stem}.so"
        res = subprocess.run([cc, *flags, "-o", str(tmp_so), str(src)],
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0 or not tmp_so.exists():
            raise OSError(f"{cc} failed ({res.returncode}): {res.stderr.strip()[:500]}")
        os.replace(tmp_so, so)  # atomic: a concurrent build writes the same bytes


def native_disabled() -> bool:
    """True when ``LOWBIT_NATIVE`` (0 / false / no / off) turns every C kernel off."""
    return os.environ.get("LOWBIT_NATIVE", "1").strip() in ("0", "false", "no", "off")


def build_cached(stem: str, source: str, flags: Sequence[str] = tuple(_FLAGS)) -> ctypes.CDLL:
    """Compile C ``source`` into a shared library in the per-user cache (see the module
    docstring; file ``{stem}_{hash}.so``, keyed by source, flags, compiler and platform) unless
    it is there already, and load it. Raises RuntimeError (no compiler, no usable cache
    directory, compile errors) for the caller to fall back to its torch code. Also used by
    :mod:`lowbit.detection.ops` for its NMS kernel."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc)")
    tag = hashlib.sha256("\0".join([source, cc, *flags, platform.machine(),
                                    platform.system()]).encode()).hexdigest()[:16]
    errors = []
    for cand in _cache_dirs():
        try:
            out_dir = _private_dir(cand)
            so = out_dir / f"{stem}_{tag}.so"
            if not so.exists():
                _compile(cc, out_dir, so, stem, source, flags)
            break
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"{cand}: {e}")
    else:
        raise RuntimeError("; ".join(errors))
    return ctypes.CDLL(str(so))


def _build() -> ctypes.CDLL:
    lib = build_cached("pot", _SRC, _FLAGS)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.lb_count_begin.argtypes = [p, p, i64, ctypes.c_int, i64, p]
    lib.lb_count_begin.restype = p
    lib.lb_count_end.argtypes = [p, p]
    lib.lb_count_end.restype = None
    lib.lb_lookup_many.argtypes = [p, p, p, i64, p, ctypes.c_int]
    lib.lb_lookup_many.restype = ctypes.c_int
    lib.lb_stats.argtypes = [p, i64, p, p, p]
    lib.lb_stats.restype = None
    lib.lb_mu_absmax.argtypes = [p, p, i64, p, ctypes.c_int]
    lib.lb_mu_absmax.restype = ctypes.c_int
    lib.lb_mu_stats.argtypes = [p, p, i64, p, p, p, p, i64, p, p, ctypes.c_int]
    lib.lb_mu_stats.restype = ctypes.c_int
    lib.lb_mu_lookup.argtypes = [p, p, p, i64, p, p, p, p, i64, p, ctypes.c_int]
    lib.lb_mu_lookup.restype = ctypes.c_int
    return lib


def load_once(state: dict[str, object], lock: threading.Lock,
              build: Callable[[], ctypes.CDLL]) -> ctypes.CDLL | None:
    """``state["lib"]``, calling ``build`` on the first call only (under ``lock``); records
    in ``state["status"]`` "loaded", "disabled by LOWBIT_NATIVE" or "unavailable: <error>"
    (any failure leaves ``None``: the caller's torch path). ``state`` starts as
    ``{"tried": False, "lib": None, "status": "not loaded yet"}``."""
    if not state["tried"]:
        with lock:
            if not state["tried"]:
                if native_disabled():
                    state["status"] = "disabled by LOWBIT_NATIVE"
                else:
                    try:
                        state["lib"] = build()
                        state["status"] = "loaded"
                    except Exception as e:  # noqa: BLE001 -- any failure: the torch path
                        state["status"] = f"unavailable: {type(e).__name__}: {e}"
                state["tried"] = True
    return state["lib"]  # type: ignore[return-value]


def lib() -> ctypes.CDLL | None:
    """The loaded kernels, compiling them on the first call; ``None`` when unavailable."""
    return load_once(_state, _lock, _build)


def status() -> str:
    """Why :func:`lib` is or is not available ("loaded", "disabled by ...", "unavailable: ...")."""
    return str(_state["status"])


def usable(xs: Sequence[Tensor]) -> bool:
    """Whether the kernels apply to ``xs`` (flat contiguous CPU float32) and are loaded."""
    return (all(x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()
                and 0 < x.numel() < _MAX_NUMEL for x in xs)
            and len(xs) > 0 and lib() is not None)


def _threads(xs: Sequence[Tensor]) -> int:
    total = sum(x.numel() for x in xs)
    return max(1, min(torch.get_num_threads(), total // _PER_THREAD))


def _ptrs(ts: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def count_many(xs: Sequence[Tensor]) -> tuple[Tensor, int] | None:
    """Fine counts of flat float32 tensors as ``_fine_counts_many`` returns them, or ``None``
    (kernels unavailable or failed: the caller takes its torch path)."""
    lb = lib()
    if lb is None:
        return None
    g = len(xs)
    lens = torch.tensor([x.numel() for x in xs], dtype=torch.int64)
    c0_w = torch.zeros(2, dtype=torch.int64)
    handle = lb.lb_count_begin(_ptrs(xs), lens.data_ptr(), g, _threads(xs), _SCAN_FROM,
                               c0_w.data_ptr())
    if not handle:
        return None
    fold = None
    try:
        c0, w = c0_w.tolist()
        fold = torch.empty(g, w, dtype=torch.int64)
    finally:  # frees the handle whatever happens; writes the rows if fold was allocated
        lb.lb_count_end(handle, None if fold is None else fold.data_ptr())
    return fold, c0


def lookup_many(xs: Sequence[Tensor], tab: Tensor) -> list[Tensor] | None:
    """``tab[g]`` (float32 ``[G, 1024]``) at each element's signed half-octave key, as
    ``_lookup_many`` returns it, or ``None`` (kernels unavailable or failed)."""
    lb = lib()
    if lb is None:
        return None
    tab = tab.to(torch.float32).contiguous()
    lens = torch.tensor([x.numel() for x in xs], dtype=torch.int64)
    outs = [torch.empty_like(x) for x in xs]
    if lb.lb_lookup_many(_ptrs(xs), _ptrs(outs), lens.data_ptr(), len(xs), tab.data_ptr(),
                         _threads(xs)):
        return None
    return outs


def stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """``(cnt int64, s1 float64, s2 float64)``, each ``Tensor[1024]``: ``torch.bincount`` of
    the signed half-octave keys ``(bits >> 22) + 512`` of flat float32 ``x`` with no weights,
    weights ``x.double()`` and weights ``x.double() ** 2`` (bit for bit: one sequential pass,
    as bincount adds), or ``None`` when the kernels are unavailable."""
    lb = lib()
    if lb is None:
        return None
    cnt = torch.empty(1024, dtype=torch.int64)
    s1 = torch.empty(1024, dtype=torch.float64)
    s2 = torch.empty(1024, dtype=torch.float64)
    lb.lb_stats(x.data_ptr(), x.numel(), cnt.data_ptr(), s1.data_ptr(), s2.data_ptr())
    return cnt, s1, s2



def _threads_for(total: int) -> int:
    return max(1, min(torch.get_num_threads(), total // _PER_THREAD))


def mu_absmax(ptrs: Tensor, lens: Tensor) -> Tensor | None:
    """``Tensor[G]`` int32: the largest ``|x|`` bit pattern (sign bit cleared) of each of G
    float32 segments (``ptrs``/``lens``: int64 ``[G]`` data addresses and lengths, all > 0)
    -- ``x.abs().amax().view(int32)`` for finite ``x``; a value at or above ``0x7F800000``
    means Inf/NaN -- or ``None`` (kernels unavailable)."""
    lb = lib()
    if lb is None:
        return None
    g = ptrs.numel()
    nt = _threads_for(int(lens.sum()))
    amax = torch.zeros(nt, g, dtype=torch.int32)
    lb.lb_mu_absmax(ptrs.data_ptr(), lens.data_ptr(), g, amax.data_ptr(), nt)
    return amax.amax(0)


def mu_stats(ptrs: Tensor, lens: Tensor, bnd: Tensor, nb: Tensor, fast: Tensor, mb: Tensor,
             m: int) -> tuple[Tensor, Tensor] | None:
    """Per-level ``(count int64, sum |x| float64)``, each ``Tensor[G, m]``, of G float32
    segments (as :func:`mu_absmax`) under the thresholds of :func:`lowbit.quant.pot.lbw_approx`:
    an element's level is the number of thresholds ``<= |x|`` (``torch.searchsorted(...,
    right=True)``). ``bnd``: int32 ``[G, 64]`` threshold bit patterns (the first ``nb[g]``
    used), ``nb`` int32 ``[G]``, ``fast`` int8 ``[G]``, ``mb`` int32 ``[G]`` (see the C
    source). The sums' order of addition is unspecified (the caller certifies its decision
    against any order). ``None`` when the kernels are unavailable."""
    lb = lib()
    if lb is None:
        return None
    g = ptrs.numel()
    nt = _threads_for(int(lens.sum()))
    cnt = torch.empty(nt, g, m, dtype=torch.int64)
    sm = torch.empty(nt, g, m, dtype=torch.float64)
    lb.lb_mu_stats(ptrs.data_ptr(), lens.data_ptr(), g, bnd.data_ptr(), nb.data_ptr(),
                   fast.data_ptr(), mb.data_ptr(), m, cnt.data_ptr(), sm.data_ptr(), nt)
    if nt == 1:
        return cnt[0], sm[0]
    return cnt.sum(0), sm.sum(0)


def mu_lookup(ptrs: Tensor, out_ptrs: Tensor, lens: Tensor, bnd: Tensor, nb: Tensor,
              fast: Tensor, mb: Tensor, m: int, tab: Tensor) -> bool:
    """Writes ``tab[g, sign, level]`` (float32 ``[G, 2, m]``, negatives first; level as
    :func:`mu_stats`) of each element of segment ``g`` to ``out_ptrs[g]``, ``+0`` for
    ``+-0``. False when the kernels are unavailable (nothing written)."""
    lb = lib()
    if lb is None:
        return False
    tab = tab.to(torch.float32).contiguous()
    lb.lb_mu_lookup(ptrs.data_ptr(), out_ptrs.data_ptr(), lens.data_ptr(), ptrs.numel(),
                    bnd.data_ptr(), nb.data_ptr(), fast.data_ptr(), mb.data_ptr(), m,
                    tab.data_ptr(), _threads_for(int(lens.sum())))
    return True
