"""lowbit: low bit-width CNNs and object detectors."""

__version__ = "0.1.0"
