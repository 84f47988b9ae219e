"""The torch-free torch.save reader: tensors come back exact, and no pickle runs code."""

import builtins
import os
import pickle

import ml_dtypes
import numpy as np
import pytest
import torch_format

from ptlearn.checkpoints import torch_pickle
from ptlearn.errors import CheckpointError


def test_round_trip_dtypes_nesting_and_state_dict_unwrapping(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((4,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
        "mask": np.array([True, False, True]),
        "scalar": np.array(2.5, np.float32),
    }
    path = tmp_path / "model.ckpt"
    torch_format.save(
        {"state_dict": {"enc": tensors}, "epoch": 3, "optimizer_states": {}}, path, name="model"
    )
    loaded = torch_pickle.load_torch_file(path)
    assert sorted(loaded) == sorted(f"enc.{k}" for k in tensors)
    for key, want in tensors.items():
        got = loaded[f"enc.{key}"]
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)
    raw = torch_pickle.read_torch_pickle(path)
    assert raw["epoch"] == 3


def test_non_contiguous_views_shared_storage_and_big_endian(tmp_path):
    storage = np.arange(40, dtype=np.float32)
    tree = {
        # A transposed [4, 5] matrix: stride (1, 4), as torch saves `w.t()`.
        "transposed": torch_format.StridedTensor(storage, 0, (5, 4), (1, 5)),
        # A view into the same storage with an offset and a step.
        "every_other": torch_format.StridedTensor(storage, 3, (2, 3), (12, 2)),
    }
    for byteorder in ("little", "big"):
        path = tmp_path / f"{byteorder}.bin"
        data_pkl, storages = torch_format.torch_pickle_bytes(tree)
        assert len(storages) == 1
        torch_format.write_torch_zip(path, data_pkl, storages, byteorder=byteorder)
        loaded = torch_pickle.load_torch_file(path)
        for key, view in tree.items():
            np.testing.assert_array_equal(loaded[key], view.to_numpy())
        np.testing.assert_array_equal(loaded["transposed"], storage[:20].reshape(4, 5).T)


def test_out_of_bounds_stride_and_missing_storage_are_errors(tmp_path):
    storage = np.zeros(10, np.float32)  # 9 elements from offset 2 end past its 10
    path = tmp_path / "bad.bin"
    torch_format.save({"w": torch_format.StridedTensor(storage, 2, (3, 3), (3, 1))}, path)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        torch_pickle.load_torch_file(path)

    data_pkl, _ = torch_format.torch_pickle_bytes({"w": np.ones(3, np.float32)})
    torch_format.write_torch_zip(path, data_pkl, {})
    with pytest.raises(CheckpointError, match="missing"):
        torch_pickle.load_torch_file(path)


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evals:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return builtins.eval, (self.code,)


def test_plain_pickle_calling_os_system_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _RunsCommand(f"touch {marker}")}, protocol=2))
    with pytest.raises(CheckpointError) as err:
        torch_pickle.load_torch_file(path)
    assert f"global {os.system.__module__}.system" in str(err.value)
    assert str(path) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_zip_whose_data_pkl_calls_eval_or_system_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payloads = {
        "builtins.eval": _Evals(f"open({str(marker)!r}, 'w')"),
        f"{os.system.__module__}.system": _RunsCommand(f"touch {marker}"),
    }
    for name, payload in payloads.items():
        path = tmp_path / "evil.bin"
        # Real storages beside the evil data.pkl, so the archive looks like a genuine checkpoint.
        _, storages = torch_format.torch_pickle_bytes({"w": np.ones(2, np.float32)})
        evil = pickle.dumps([payload], protocol=protocol)
        torch_format.write_torch_zip(path, evil, storages)
        with pytest.raises(CheckpointError, match=f"refused to load global {name}"):
            torch_pickle.load_torch_file(path)
        assert not marker.exists()


def test_legacy_format_and_non_torch_files_get_clear_errors(tmp_path):
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001))
    with pytest.raises(CheckpointError, match="legacy"):
        torch_pickle.load_torch_file(legacy)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=str(text)):
        torch_pickle.load_torch_file(text)
    with pytest.raises(CheckpointError, match="not found"):
        torch_pickle.load_torch_file(tmp_path / "absent.bin")


def test_small_files_that_would_allocate_without_bound_are_refused(tmp_path):
    """A 1-element storage viewed with stride 0 as 10^9 elements, and 40 levels of dicts that
    share their children (2^40 paths): each a few hundred bytes, each refused at once."""
    import time

    path = tmp_path / "stride0.bin"
    one = np.ones(1, np.float32)
    torch_format.save(
        {"w": torch_format.StridedTensor(one, 0, (1000, 1000, 1000), (0, 0, 0))}, path
    )
    assert path.stat().st_size < 2000
    started = time.time()
    with pytest.raises(CheckpointError, match="1000000000 elements\\) from a storage of 1"):
        torch_pickle.load_torch_file(path)
    assert time.time() - started < 5

    node = {"step": 1}
    for _ in range(40):
        node = {"a": node, "b": node}  # pickle's memo writes each dict once
    path = tmp_path / "shared.bin"
    torch_format.write_torch_zip(path, pickle.dumps(node, protocol=2), {})
    assert path.stat().st_size < 5000
    started = time.time()
    with pytest.raises(CheckpointError, match="appears twice"):
        torch_pickle.load_torch_file(path)
    assert time.time() - started < 5
