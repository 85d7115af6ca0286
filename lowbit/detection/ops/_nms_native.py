"""Optional C kernel for greedy NMS on float32 CPU boxes (private; used by :mod:`.nms`).

:func:`lowbit.detection.ops.nms` on a few hundred boxes spent most of its time in Python and
in small elementwise torch ops (the RPN's 600-1000 proposals per image: about 5-10 ms at one
thread, 10-15 % of a training step of the demo's R-FCN). The kernel here runs the same greedy
pass in one C loop over boxes already sorted by decreasing score.

Same decisions as the torch path, bit for bit: each IoU is computed with the same float32
operations in the same order (``iw = min(x2) - max(x1)`` clamped at 0, likewise ``ih``,
``inter = iw * ih``, ``union = (area_r + area_c) - inter``, ``inter / union``), compiled with
``-ffp-contract=off`` (no fused multiply-adds), and compared with the same float32 threshold;
IEEE arithmetic rounds each operation the same way in C as in torch's kernels. A zero union
gives 0/0 = NaN, which never suppresses, as there; a pair without overlap (``iw`` or ``ih``
at most 0) is skipped, as its IoU 0 (or NaN) is never above a threshold >= 0. Built and
cached like the quantizers' kernels (:func:`lowbit.quant._native.build_cached`); unavailable
(no compiler, ``LOWBIT_NATIVE=0``) means the torch path.
"""

from __future__ import annotations

import ctypes
import threading

import torch
from torch import Tensor

_SRC = r"""
#include <stdint.h>
#include <stdlib.h>

/* Greedy NMS over n boxes sorted by decreasing score (float32 x1 y1 x2 y2 rows). cls: one
   category per box or NULL (any two boxes compete). removed: n zeroed bytes (scratch).
   keep: receives the kept positions in order; returns how many. */
int64_t lb_nms(const float *b, const int64_t *cls, int64_t n, float thr, uint8_t *removed,
               int64_t *keep) {
    float *area = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!area) return -1;
    for (int64_t i = 0; i < n; i++) {
        const float *p = b + 4 * i;
        area[i] = (p[2] - p[0]) * (p[3] - p[1]);
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (removed[i]) continue;
        keep[k++] = i;
        const float *r = b + 4 * i;
        const float rx1 = r[0], ry1 = r[1], rx2 = r[2], ry2 = r[3], ra = area[i];
        for (int64_t j = i + 1; j < n; j++) {
            if (removed[j]) continue;
            if (cls && cls[j] != cls[i]) continue;
            const float *c = b + 4 * j;
            /* no overlap: inter = 0, and 0 / union (0 or NaN) is never > thr >= 0 */
            const float iw = (rx2 < c[2] ? rx2 : c[2]) - (rx1 > c[0] ? rx1 : c[0]);
            if (!(iw > 0.0f)) continue;
            const float ih = (ry2 < c[3] ? ry2 : c[3]) - (ry1 > c[1] ? ry1 : c[1]);
            if (!(ih > 0.0f)) continue;
            const float inter = iw * ih;
            const float uni = (ra + area[j]) - inter;
            if (inter / uni > thr) removed[j] = 1;
        }
    }
    free(area);
    return k;
}
"""

_lock = threading.Lock()
_state: dict[str, object] = {"tried": False, "lib": None, "status": "not loaded yet"}


def _build() -> ctypes.CDLL:
    from lowbit.quant._native import build_cached

    cdll = build_cached("nms", _SRC)
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    cdll.lb_nms.argtypes = [p, p, i64, ctypes.c_float, p, p]
    cdll.lb_nms.restype = i64
    return cdll


def lib() -> ctypes.CDLL | None:
    """The loaded kernel, compiling it on the first call; ``None`` when unavailable."""
    from lowbit.quant._native import load_once

    return load_once(_state, _lock, _build)


def status() -> str:
    """Why :func:`lib` is or is not available ("loaded", "disabled by ...", "unavailable: ...")."""
    return str(_state["status"])


def greedy(sorted_boxes: Tensor, thr: float, sorted_idx: Tensor | None) -> Tensor | None:
    """Kept positions (int64, increasing) of the greedy pass over ``sorted_boxes``
    (``float32[N, 4]`` CPU, finite, sorted by decreasing score) with float32 threshold
    ``thr`` and optional categories ``sorted_idx`` ``[N]``; ``None`` when the kernel does not
    apply (other dtype or device, not loaded): the caller takes its torch path."""
    if sorted_boxes.dtype != torch.float32 or sorted_boxes.device.type != "cpu":
        return None
    if sorted_idx is not None and sorted_idx.device.type != "cpu":
        return None
    cdll = lib()
    if cdll is None:
        return None
    n = sorted_boxes.shape[0]
    b = sorted_boxes.contiguous()
    c = None if sorted_idx is None else sorted_idx.to(torch.int64).contiguous()
    removed = torch.zeros(n, dtype=torch.uint8)
    keep = torch.empty(n, dtype=torch.int64)
    k = int(cdll.lb_nms(b.data_ptr(), None if c is None else c.data_ptr(), n,
                        ctypes.c_float(thr), removed.data_ptr(), keep.data_ptr()))
    if k < 0:
        return None
    return keep[:k].clone()
