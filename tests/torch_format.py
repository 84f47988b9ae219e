"""A torch-free writer of `torch.save` zip files, so tests can make .bin / .ckpt checkpoints.

It emits the same pickle opcodes torch does for a state dict (protocol 2: GLOBAL
torch._utils._rebuild_tensor_v2, a persistent id ('storage', torch.<Type>Storage, key, 'cpu',
numel) per storage, size / stride tuples, an empty OrderedDict of hooks) and the zip layout
`<name>/data.pkl`, `<name>/byteorder`, `<name>/data/<key>`, `<name>/version`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}


@dataclasses.dataclass
class StridedTensor:
    """A tensor viewing `storage` (1-D) at `offset` with `shape` and `stride` (in elements).

    Two StridedTensors with the same `storage` object share one storage in the file, as torch
    writes tied weights and views.
    """

    storage: np.ndarray
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    # The element count the pickle claims for the storage (a hostile file's lie); default: true.
    declared_numel: int | None = None

    def to_numpy(self) -> np.ndarray:
        """The values this tensor holds, as an ordinary array."""
        flat = self.storage
        return np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * flat.itemsize for s in self.stride),
        ).copy()


class _Emitter:
    """Writes pickle opcodes by hand (pickle.dumps would need the real torch globals)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        # id(storage) -> (key, flat data, the storage itself: kept alive so ids are not reused).
        self.storages: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}

    def op(self, code: bytes) -> None:
        self.out.write(code)

    def global_(self, module: str, name: str) -> None:
        self.op(pickle.GLOBAL + f"{module}\n{name}\n".encode())

    def str_(self, s: str) -> None:
        data = s.encode("utf-8")
        self.op(pickle.BINUNICODE + struct.pack("<I", len(data)) + data)

    def int_(self, i: int) -> None:
        if -(2**31) <= i < 2**31:
            self.op(pickle.BININT + struct.pack("<i", i))
        else:
            data = i.to_bytes(9, "little", signed=True)
            self.op(pickle.LONG1 + bytes([len(data)]) + data)

    def tuple_(self, items: tuple) -> None:
        if not items:
            self.op(pickle.EMPTY_TUPLE)
            return
        self.op(pickle.MARK)
        for item in items:
            self.value(item)
        self.op(pickle.TUPLE)

    def tensor(self, t: StridedTensor) -> None:
        flat = np.ascontiguousarray(t.storage).reshape(-1)
        entry = (str(len(self.storages)), flat, t.storage)
        key = self.storages.setdefault(id(t.storage), entry)[0]
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(pickle.MARK)
        # Persistent id tuple, resolved by the reader's persistent_load.
        self.op(pickle.MARK)
        self.str_("storage")
        self.global_("torch", _STORAGE_NAMES[flat.dtype])
        self.str_(key)
        self.str_("cpu")
        self.int_(flat.size if t.declared_numel is None else t.declared_numel)
        self.op(pickle.TUPLE + pickle.BINPERSID)
        self.int_(t.offset)
        self.tuple_(tuple(t.shape))
        self.tuple_(tuple(t.stride))
        self.op(pickle.NEWFALSE)
        self.global_("collections", "OrderedDict")
        self.op(pickle.EMPTY_TUPLE + pickle.REDUCE)
        self.op(pickle.TUPLE + pickle.REDUCE)

    def value(self, v: Any) -> None:
        if isinstance(v, np.ndarray):
            contiguous = np.ascontiguousarray(v)
            strides = tuple(int(s) for s in np.cumprod((1, *contiguous.shape[::-1]))[-2::-1])
            self.tensor(StridedTensor(contiguous.reshape(-1), 0, v.shape, strides[: v.ndim]))
        elif isinstance(v, StridedTensor):
            self.tensor(v)
        elif isinstance(v, Mapping):
            self.op(pickle.EMPTY_DICT)
            if v:
                self.op(pickle.MARK)
                for key, item in v.items():
                    self.str_(str(key))
                    self.value(item)
                self.op(pickle.SETITEMS)
        elif isinstance(v, bool):
            self.op(pickle.NEWTRUE if v else pickle.NEWFALSE)
        elif isinstance(v, int):
            self.int_(v)
        elif isinstance(v, str):
            self.str_(v)
        elif isinstance(v, tuple):
            self.tuple_(v)
        elif v is None:
            self.op(pickle.NONE)
        else:
            raise TypeError(f"torch_format cannot write {type(v).__name__}")


def torch_pickle_bytes(tree: Any) -> tuple[bytes, dict[str, np.ndarray]]:
    """(data.pkl bytes, {storage key: flat array}) for a tree of arrays / StridedTensors."""
    emitter = _Emitter()
    emitter.op(pickle.PROTO + bytes([2]))
    emitter.value(tree)
    emitter.op(pickle.STOP)
    return emitter.out.getvalue(), {k: a for k, a, _ in emitter.storages.values()}


def write_torch_zip(
    path: str | os.PathLike,
    data_pkl: bytes,
    storages: Mapping[str, np.ndarray],
    name: str = "archive",
    byteorder: str = "little",
) -> None:
    """A torch.save zip archive from a data.pkl and its storages."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", data_pkl)
        z.writestr(f"{name}/byteorder", byteorder)
        for key, flat in storages.items():
            order = ">" if byteorder == "big" else "<"
            z.writestr(f"{name}/data/{key}", flat.astype(flat.dtype.newbyteorder(order)).tobytes())
        z.writestr(f"{name}/version", "3\n")


def save(
    tree: Any, path: str | os.PathLike, name: str = "archive", byteorder: str = "little"
) -> None:
    """Like torch.save(tree, path) for nested dicts of numpy arrays / StridedTensors / scalars."""
    data_pkl, storages = torch_pickle_bytes(tree)
    write_torch_zip(path, data_pkl, storages, name=name, byteorder=byteorder)
