"""What machine a run ran on, in one line, so every wall time in a run record, a benchmark or
a report sits beside it: the same config trains about three times slower on a 2-core AVX2
CPU (float32) than on one with AVX512-BF16 (bf16), and a table that mixes them must say so.
"""

from __future__ import annotations

import functools
import os
import pathlib
from collections.abc import Sequence
from typing import Any

# The CPU features that decide training speed, fastest first (Linux's /proc/cpuinfo names).
SIMD_LEVELS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its flags) from /proc/cpuinfo; ("", {}) where it cannot be read."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not name:
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name, flags


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    return _cpuinfo()[1]


def cpu_description() -> str:
    """e.g. "AMD EPYC, 2 CPUs, avx512_bf16": model name, CPU count, fastest SIMD level."""
    name, flags = _cpuinfo()
    simd = next((level for level in SIMD_LEVELS if level in flags), "no avx2")
    return f"{name or 'unknown CPU'}, {os.cpu_count()} CPUs, {simd}"


def describe(devices: Sequence[Any]) -> str:
    """The machine a run's `devices` (jax devices) make: the CPU's description, or the
    accelerators' kind and count, e.g. "NVIDIA H200 x8"."""
    accelerators = [d for d in devices if d.platform != "cpu"]
    if not accelerators:
        return cpu_description()
    kinds = sorted({d.device_kind for d in accelerators})
    return f"{' + '.join(kinds)} x{len(accelerators)}"
