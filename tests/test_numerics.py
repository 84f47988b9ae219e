"""`auto` numerics: the fastest precision, weight storage and remat for the run's devices."""

import dataclasses
import logging

import pytest

from ptlearn import config_lib, machine, numerics
from ptlearn.configs import common


@dataclasses.dataclass
class _Device:
    platform: str
    device_kind: str = "cpu"


def _auto_config():
    config = config_lib.base_config()
    common.fastest_numerics(config)
    return config


@pytest.mark.parametrize(
    "platform, bf16_cpu, expected",
    [
        ("cpu", True, {"precision": "bf16", "weights": "bfloat16", "remat": "full"}),
        ("cpu", False, {"precision": "32", "weights": "float32", "remat": "full"}),
        ("gpu", False, {"precision": "bf16", "weights": "bfloat16", "remat": "full"}),
    ],
)
def test_auto_resolves_per_device_kind(monkeypatch, caplog, platform, bf16_cpu, expected):
    monkeypatch.setattr(numerics, "cpu_has_bf16", lambda: bf16_cpu)
    config = _auto_config()
    with caplog.at_level(logging.WARNING, logger="ptlearn.numerics"):
        resolved, chosen = numerics.resolve(config, [_Device(platform)] * 2)
    assert resolved.trainer.precision == expected["precision"]
    assert resolved.model.frozen_weights_dtype == expected["weights"]
    assert resolved.model.activations_checkpoint_granularity == expected["remat"]
    assert chosen["trainer.precision"] == expected["precision"]
    assert config.trainer.precision == "auto"  # the user's config is left as written
    notices = [r.getMessage() for r in caplog.records]
    assert ("no bf16 hardware" in " ".join(notices)) == (platform == "cpu" and not bf16_cpu)


def test_explicit_numerics_are_kept():
    config = config_lib.base_config()
    config.trainer.precision = "bf16-true"
    resolved, chosen = numerics.resolve(config, [_Device("cpu")])
    assert chosen == {} and resolved.trainer.precision == "bf16-true"
    assert resolved.model.frozen_weights_dtype == "float32"


def test_shipped_configs_use_auto():
    for name in ("sentiment_ptuning", "sentiment_prompt_tuning", "multitask"):
        config = config_lib.load_config(name, "model=tiny")
        assert config.trainer.precision == "auto", name
        assert config.model.activations_checkpoint_granularity == "auto", name


def test_this_machines_cpu_flags_are_read():
    assert isinstance(numerics.cpu_has_bf16(), bool)
    assert numerics.cpu_has_bf16() == bool(machine.cpu_flags() & {"avx512_bf16", "amx_bf16"})


def test_the_machine_is_the_cpu_or_the_accelerators(monkeypatch):
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("AMD EPYC", frozenset({"avx2", "fma"})))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 2)
    assert machine.describe([_Device("cpu")] * 8) == "AMD EPYC, 2 CPUs, avx2"
    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("", frozenset({"avx512f", "avx512_bf16"})))
    assert machine.cpu_description() == "unknown CPU, 2 CPUs, avx512_bf16"
    gpus = [_Device("gpu", "NVIDIA H200")] * 8
    assert machine.describe(gpus) == "NVIDIA H200 x8"


def test_cpuinfo_names_the_cpu_family_and_model():
    """Two Zen generations share the model name "AMD EPYC" on these VMs: family and model tell
    them apart."""
    cpu = (
        "processor\t: {}\ncpu family\t: 25\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fma {}\n"
    )
    text = "\n".join([cpu.format(0, 17, "avx2"), cpu.format(1, 99, "sse")])  # the first counts
    assert machine.parse_cpuinfo(text) == ("AMD EPYC (family 25, model 17)", {"fma", "avx2"})
    assert machine.parse_cpuinfo("model name\t: Some CPU\n") == ("Some CPU", frozenset())
    assert machine.parse_cpuinfo("") == ("", frozenset())
