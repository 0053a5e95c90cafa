"""The host CPU: its feature flags and the width of its widest vector registers."""

from __future__ import annotations

import functools
import platform

from convgen.dtypes import lanes


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """Feature flags from /proc/cpuinfo (empty where it is not available)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def vector_bits() -> int:
    """512 with AVX-512F, 256 with AVX, else 128 (SSE2 / NEON baseline)."""
    flags = cpu_flags()
    if platform.machine() in ("x86_64", "AMD64") and "avx512f" in flags:
        return 512
    if "avx" in flags or "avx2" in flags:
        return 256
    return 128


def vector_lanes(dtype: str) -> int:
    """Lanes of the widest vector register for ``dtype`` (16 fp32 lanes on AVX-512)."""
    return lanes(dtype, vector_bits())
