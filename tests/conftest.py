"""Test set-up: 8 simulated CPU devices and a compilation cache, set before JAX is imported
anywhere."""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
# JAX's persistent compilation cache, inherited by the subprocesses the tests start: the same
# tiny-model steps compile once instead of in every command (a 2-step train command: 19 s ->
# 8 s). Keys are the programs themselves, so a changed program never meets a stale entry.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"ptlearn-test-xla-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(2**30))

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"

# The files of the longest tests, handed to the workers first so none of them is the tail.
LONGEST_FIRST = (
    "test_readme_commands.py",
    "test_gemma3.py",
    "test_train.py",
    "test_export.py",
    "test_sweep.py",
    "test_readme.py",
    "test_train_sharded.py",
    "test_deep_prompts.py",
    "test_api.py",
)


def pytest_collection_modifyitems(items):
    """Longest files first (a stable sort: the order inside each file stays)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
