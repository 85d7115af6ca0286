"""Real-data evidence (scikit-learn digits): LBW QAT accuracy against FP32, fixed seeds."""

from __future__ import annotations

from lowbit.bench.digits import run_digits_bench


def test_lbw_qat_on_digits_close_to_fp32() -> None:
    res = run_digits_bench(quick=True, rows=("fp32", "lbw-exact-6", "lbw-exact-2"),
                           progress=False, verbose=False)
    acc = {r["name"]: r["test_acc"] for r in res["rows"]}
    assert acc["fp32"] > 95.0
    assert acc["lbw-exact-6"] >= acc["fp32"] - 1.0
    assert acc["lbw-exact-2"] >= acc["fp32"] - 5.0
    mem = {r["name"]: r for r in res["rows"]}
    # 16,272 conv weights at b bits (+ 4-byte exponent each) vs 4 bytes in FP32
    assert mem["lbw-exact-2"]["quantized_bytes"] == 16272 * 2 // 8 + 4 * 4
    assert mem["lbw-exact-6"]["quantized_bytes"] == 16272 * 6 // 8 + 4 * 4
    assert mem["fp32"]["compression"] == 1.0
