"""A torch-free, code-free reader of `torch.save` files (state dicts of tensors).

`torch.save` writes a zip archive: `<name>/data.pkl` (a pickle of the object tree) and one raw
little-endian file `<name>/data/<key>` per tensor storage. Unpickling normally imports and calls
whatever globals the pickle names, so a malicious checkpoint runs code (`os.system`, `eval`).
Here `find_class` resolves only an explicit allowlist, each entry mapped to a local, harmless
stand-in (tensors are rebuilt with numpy from storage + offset + size + stride); any other global
raises CheckpointError naming the file and the global, before anything is called.

The legacy (torch < 1.6, non-zip) format is recognised and refused with a clear message.
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import collections
import dataclasses
import io
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from ptlearn.errors import CheckpointError

PathLike = str | os.PathLike

# The first object of a legacy torch.save stream (torch/serialization.py MAGIC_NUMBER).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_NUMPY_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

# torch's typed storage classes, by the name they are pickled under, and their element type.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}

# torch dtype objects (pickled as globals `torch.<name>`) used by _rebuild_tensor_v3.
_TORCH_DTYPE_NAMES: dict[str, str] = {
    "float64": "float64",
    "double": "float64",
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Stands in for a torch storage class: only its element type matters."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _TorchDtype:
    """Stands in for a torch dtype object (e.g. `torch.float32`)."""

    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A storage read from the archive: a flat array of its element type."""

    key: str
    data: np.ndarray  # [numel]


def _strided_copy(
    flat: np.ndarray, offset: int, size: tuple[int, ...], stride: tuple[int, ...], where: str
) -> np.ndarray:
    """The tensor `flat[offset + sum(i_k * stride_k)]` of shape `size`, copied (own memory)."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise CheckpointError(f"{where}: malformed tensor size {size} / stride {stride}")
    if 0 in size:
        return np.zeros(size, flat.dtype)
    numel = int(np.prod(size, dtype=np.int64)) if len(size) < 64 else -1
    # A state dict's tensors own their storage: one larger than it (stride 0 over a few
    # elements) would be materialised, from a small file, into any amount of memory.
    if numel < 0 or numel > flat.size:
        raise CheckpointError(
            f"{where}: a tensor of size {size} ({numel} elements) from a storage of "
            f"{flat.size}: stride tricks that a checkpoint never needs; the file is malformed"
        )
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    # as_strided does no bounds checks: a lying header must not read past the storage.
    if offset < 0 or last >= flat.size:
        raise CheckpointError(
            f"{where}: tensor of size {size}, stride {stride}, offset {offset} reaches element "
            f"{last} of a storage of {flat.size}: the file is truncated or corrupt"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * flat.itemsize for s in stride)
    )
    return np.array(view, copy=True)


class _Unpickler(pickle.Unpickler):
    """Resolves only allowlisted globals; storages come from `load_storage(key, dtype, numel)`."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        source: str,
        load_storage: Callable[[str, np.dtype, int], np.ndarray] | None,
    ) -> None:
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage
        self._storages: dict[str, _Storage] = {}
        self._allowed = self._allowlist()

    def _allowlist(self) -> dict[tuple[str, str], Any]:
        """(module, name) -> the local object that stands in for it."""
        allowed: dict[tuple[str, str], Any] = {
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch", "Size"): tuple,
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("builtins", "set"): set,
            ("builtins", "frozenset"): frozenset,
            ("builtins", "slice"): slice,
            # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
            ("_codecs", "encode"): _codecs.encode,
            # Transformer Engine layers keep an `_extra_state` BytesIO in Megatron state dicts.
            ("_io", "BytesIO"): io.BytesIO,
        }
        for name, dtype in _STORAGE_DTYPES.items():
            allowed[("torch", name)] = _StorageType(_NUMPY_DTYPES[dtype])
        for module in ("torch", "torch.storage"):
            allowed[(module, "UntypedStorage")] = _StorageType(_NUMPY_DTYPES["uint8"])
            allowed[(module, "TypedStorage")] = _StorageType(_NUMPY_DTYPES["uint8"])
        for name, dtype in _TORCH_DTYPE_NAMES.items():
            allowed[("torch", name)] = _TorchDtype(_NUMPY_DTYPES[dtype])
        return allowed

    def find_class(self, module: str, name: str) -> Any:
        """The stand-in for an allowlisted global; CheckpointError for anything else."""
        # Protocol-2 pickles (torch's) may spell Python 3 names the Python 2 way (__builtin__).
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self._source}: refused to load global {module}.{name}: a weights file only "
                "needs tensors and plain containers, and this one asks to import other code "
                "(possibly malicious). Do not load it; get the checkpoint from a trusted source "
                "or as safetensors"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        """('storage', storage type, key, location, numel) -> the storage's flat array."""
        if self._load_storage is None:
            raise CheckpointError(
                f"{self._source}: the pickle refers to tensor storages but is not inside a "
                "torch.save zip archive"
            )
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: storage {key} has no known element type")
        if numel < 0:
            raise CheckpointError(f"{self._source}: storage {key} has {numel} elements")
        if key not in self._storages:
            self._storages[key] = _Storage(key, self._load_storage(key, storage_type.dtype, numel))
        return self._storages[key]

    def _rebuild_tensor(
        self, storage: Any, offset: int, size: Any, stride: Any, *_unused: Any
    ) -> np.ndarray:
        """torch._utils._rebuild_tensor(_v2): storage, offset, size, stride -> ndarray."""
        if not isinstance(storage, _Storage):
            raise CheckpointError(f"{self._source}: tensor without a storage")
        where = f"{self._source}: storage {storage.key}"
        return _strided_copy(storage.data, int(offset), tuple(size), tuple(stride), where)

    def _rebuild_tensor_v3(
        self,
        storage: Any,
        offset: int,
        size: Any,
        stride: Any,
        requires_grad: Any,
        hooks: Any,
        dtype: Any,
        *_unused: Any,
    ) -> np.ndarray:
        """torch._utils._rebuild_tensor_v3: an untyped (byte) storage plus an explicit dtype."""
        if not isinstance(storage, _Storage) or not isinstance(dtype, _TorchDtype):
            raise CheckpointError(f"{self._source}: malformed _rebuild_tensor_v3 arguments")
        raw = storage.data.view(np.uint8)
        usable = raw.size - raw.size % dtype.dtype.itemsize
        flat = raw[:usable].view(dtype.dtype)
        where = f"{self._source}: storage {storage.key}"
        return _strided_copy(flat, int(offset), tuple(size), tuple(stride), where)


def _rebuild_parameter(data: Any, *_unused: Any) -> Any:
    """torch._utils._rebuild_parameter: an nn.Parameter is just its data here."""
    return data


def _archive_prefix(names: list[str], source: str) -> str:
    """The top folder of a torch zip (the saved file's stem, e.g. 'archive/')."""
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError(
            f"{source}: a zip file but not a torch.save archive (expected one <name>/data.pkl, "
            f"found {len(pickles)})"
        )
    return pickles[0][: -len("data.pkl")]


# torch.save stores members uncompressed; a deflated storage inflating 50x is built to.
MAX_COMPRESSION_RATIO = 50
RATIO_FREE_BYTES = 64 * 2**20


def _check_member_size(info: zipfile.ZipInfo, need: int, source: str) -> None:
    """Raises CheckpointError unless the zip member holds the `need` bytes its tensor asks for
    and does not inflate beyond a ratio weights never compress to."""
    if info.file_size < need:
        raise CheckpointError(
            f"{source}: storage {info.filename} holds {info.file_size} bytes, the pickle asks "
            f"for {need}: the file is truncated or its tensor sizes are forged"
        )
    if need > RATIO_FREE_BYTES and need > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise CheckpointError(
            f"{source}: storage {info.filename} inflates {info.compress_size} bytes to {need} "
            f"(more than {MAX_COMPRESSION_RATIO}x): an archive built to exhaust memory, not "
            "a checkpoint"
        )


def _read_zip(path: PathLike, source: str) -> Any:
    """The object tree of a torch.save zip archive, tensors as numpy arrays."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = _archive_prefix(names, source)
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise CheckpointError(f"{source}: unknown byteorder {byteorder!r}")

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            member = f"{prefix}data/{key}"
            try:
                info = archive.getinfo(member)
            except KeyError:
                raise CheckpointError(f"{source}: storage {member} is missing") from None
            need = numel * dtype.itemsize
            _check_member_size(info, need, source)
            with archive.open(info) as f:  # only the bytes the pickle asks for, never the rest
                raw = f.read(need)
            stored = dtype.newbyteorder(">" if byteorder == "big" else "<")
            return np.frombuffer(raw, stored, count=numel).astype(dtype, copy=False)

        with archive.open(f"{prefix}data.pkl") as f:
            return _unpickle(f, source, load_storage)


def _unpickle(
    f: io.BufferedIOBase,
    source: str,
    load_storage: Callable[[str, np.dtype, int], np.ndarray] | None,
) -> Any:
    """One pickle from `f` through the allowlisting unpickler."""
    try:
        return _Unpickler(f, source, load_storage).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{source}: corrupt or unsupported pickle ({e})") from e


def read_torch_pickle(path: PathLike) -> Any:
    """The object saved by `torch.save` at `path`: dicts / lists / scalars, tensors as ndarrays.

    Tensors come back as numpy arrays of their own dtype (bfloat16 as ml_dtypes.bfloat16),
    copied out of the archive, with their saved shape whatever their strides were.
    """
    source = os.fspath(path)
    if not os.path.isfile(source):
        raise CheckpointError(f"{source}: file not found")
    try:
        if zipfile.is_zipfile(source):
            return _read_zip(source, source)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{source}: unreadable zip archive ({e})") from e
    # Not a zip: a plain pickle stream (legacy torch.save or something else); still never
    # resolve a global outside the allowlist, even to find out what it is.
    with open(source, "rb") as f:
        first = _unpickle(f, source, None)
    if first == _LEGACY_MAGIC:
        raise CheckpointError(
            f"{source}: saved in torch's legacy (pre-1.6) format, which ptlearn does not read; "
            "re-save it with a recent torch (`torch.save(torch.load(p), p)`) or convert it to "
            "safetensors"
        )
    raise CheckpointError(f"{source}: not a torch.save file (neither a zip archive nor legacy)")


# A state dict has one path per tensor: more (dicts that share children) is a crafted file.
MAX_STATE_DICT_ENTRIES = 1_000_000


def flatten_state_dict(
    tree: Any, prefix: str = "", source: str = "<state dict>"
) -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {'a.b.c': array}; non-tensor leaves (ints, strings) are dropped.

    A dict inside itself (a cycle) or reached twice (shared children, whose paths double at
    each level: 40 levels make 2^40) is a CheckpointError, as is more than
    MAX_STATE_DICT_ENTRIES entries visited.
    """
    flat: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    visited = 0
    stack: list[tuple[Any, str]] = [(tree, prefix)]
    while stack:
        node, path = stack.pop()
        visited += 1
        if visited > MAX_STATE_DICT_ENTRIES:
            raise CheckpointError(
                f"{source}: more than {MAX_STATE_DICT_ENTRIES} entries in the state dict"
            )
        if isinstance(node, Mapping):
            if id(node) in seen:
                raise CheckpointError(
                    f"{source}: the dict at {path[:-1] or '<root>'!r} appears twice (shared or "
                    "cyclic): not a state dict"
                )
            seen.add(id(node))
            stack.extend((value, f"{path}{key}.") for key, value in reversed(node.items()))
        elif isinstance(node, np.ndarray):
            flat[path[:-1]] = node
    return flat


def load_torch_file(path: PathLike) -> dict[str, np.ndarray]:
    """The tensors of a `torch.save`d state dict as {dotted name: ndarray}.

    A Lightning / NeMo wrapper `{"state_dict": {...}}` is unwrapped (its other entries, such as
    optimizer state, are skipped); other nested dicts are flattened with '.'-joined keys, as
    torch names nested module parameters. Non-tensor leaves (step counters, BytesIO extra state)
    are not weights and are dropped. Use `read_torch_pickle` for the raw object tree.
    """
    tree = read_torch_pickle(path)
    if not isinstance(tree, Mapping):
        raise CheckpointError(
            f"{os.fspath(path)}: holds a {type(tree).__name__}, not a state dict of tensors"
        )
    if isinstance(tree.get("state_dict"), Mapping):
        tree = tree["state_dict"]
    return flatten_state_dict(tree, source=os.fspath(path))
