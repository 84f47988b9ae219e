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


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(the CPU's model name, its flags) from /proc/cpuinfo's text. The name carries the CPU
    family and model, since a virtual machine's name is often only "AMD EPYC": family 25
    model 17 (Zen 4) and family 26 (Zen 5) train at different speeds under the same name."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's lines; all are alike
    name = fields.get("model name", "")
    if name and "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name, frozenset(fields.get("flags", "").split())


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """parse_cpuinfo of this machine; ("", {}) where /proc/cpuinfo cannot be read."""
    try:
        return parse_cpuinfo(pathlib.Path("/proc/cpuinfo").read_text())
    except OSError:
        return "", frozenset()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    return _cpuinfo()[1]


def cpu_name() -> str:
    """This CPU's model name with its family and model (parse_cpuinfo), or "unknown CPU"."""
    return _cpuinfo()[0] or "unknown CPU"


def cpu_description() -> str:
    """e.g. "AMD EPYC (family 26, model 2), 2 CPUs, avx512_bf16": model name, CPU count,
    fastest SIMD level."""
    simd = next((level for level in SIMD_LEVELS if level in cpu_flags()), "no avx2")
    return f"{cpu_name()}, {os.cpu_count()} CPUs, {simd}"


def describe(devices: Sequence[Any]) -> str:
    """The machine a run's `devices` (jax devices) make: the CPU's description, or the
    accelerators' kind and count, e.g. "NVIDIA H200 x8"."""
    accelerators = [d for d in devices if d.platform != "cpu"]
    if not accelerators:
        return cpu_description()
    kinds = sorted({d.device_kind for d in accelerators})
    return f"{' + '.join(kinds)} x{len(accelerators)}"
