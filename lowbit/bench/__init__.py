"""Benchmarks behind ``lowbit bench``: quantizer speed (``quantizers``), the digits CNN
accuracy table (``digits``), QAT step overhead (``qat``) and int8 deployment latency
(``deploy``). Every speed figure is a ratio measured in one run."""
