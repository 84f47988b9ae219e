"""Test set-up: 8 simulated CPU devices, set before JAX is imported anywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """The project's ../shared folder (data, reference outputs); skips when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the shared data and reference outputs are not here")
    return SHARED


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), loaded once; skips when not installed."""
    from ptlearn.checkpoints import load_model
    from ptlearn.errors import CheckpointError

    try:
        return load_model("default")
    except CheckpointError as err:
        pytest.skip(str(err))
