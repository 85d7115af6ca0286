"""Studies: the application layer over :mod:`lowbit.runs`.

``demo`` (LBW-Net's workflow end to end), ``compare`` (every method on one FP32 detector),
``sweep_mu`` (LBW-Net's mu by retraining), ``datafree`` (bit-efficient data-free quantization)
and ``mixed`` (mixed-precision planning), with the
shared ``methods`` catalogue, ``rows`` machinery and ``report`` formatting. No study imports
another study (checked by ``lint-imports``, see ``.importlinter``).
"""
