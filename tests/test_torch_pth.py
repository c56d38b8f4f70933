"""The torch-free .pth reader: zip and legacy layouts, strides/offsets/dtypes, refusal of
unsafe pickles, clear errors for truncated files. Test files are written here by hand
(the pickle/zip structure torch.save produces), so torch is never needed."""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from bt_jax.porting.torch_pth import TorchPthError, UnsafePickleError, read_pth


class _Global:
    """Pickled as the global `module.name` without importing it (torch is not installed)."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):   # pickle insists that a reduce function is callable
        raise AssertionError("never called")


class _Storage:
    def __init__(self, key, kind, data):
        self.key, self.kind, self.data = key, kind, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride))

    def __reduce__(self):
        storage, offset, size, stride = self.args
        return (_Global("torch._utils", "_rebuild_tensor_v2"),
                (storage, offset, size, stride, False, collections.OrderedDict()))


class _Param:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        return (_Global("torch._utils", "_rebuild_parameter"),
                (self.tensor, True, collections.OrderedDict()))


class _Writer(pickle._Pickler):
    """Pure-Python pickler that writes _Global as a GLOBAL opcode and storages as persistent ids."""
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy

    def _save_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())

    dispatch[_Global] = _save_global

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            kind = _Global("torch", obj.kind)
            if self.legacy:
                return ("storage", kind, obj.key, "cpu", obj.data.size, None)
            return ("storage", kind, obj.key, "cpu", obj.data.size)
        return None


def _dump(obj, f, legacy):
    _Writer(f, legacy).dump(obj)


def _storages(obj, found=None):
    found = {} if found is None else found
    if isinstance(obj, _Tensor):
        found[obj.args[0].key] = obj.args[0]
    elif isinstance(obj, _Param):
        _storages(obj.tensor, found)
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, found)
    return found


def write_pth(path, obj, *, legacy=False):
    """Write `obj` (dicts of _Tensor/_Param) like torch.save (zip) or torch<1.6 (legacy)."""
    storages = _storages(obj)
    if legacy:
        with open(path, "wb") as f:
            for head in (0x1950A86A20F9469CFC6C, 1001,
                         {"protocol_version": 1001, "little_endian": True,
                          "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(head, f, protocol=2)
            _dump(obj, f, legacy=True)
            pickle.dump(list(storages), f, protocol=2)
            for st in storages.values():
                f.write(struct.pack("<q", st.data.size))
                f.write(st.data.astype(st.data.dtype.newbyteorder("<")).tobytes())
    else:
        buf = io.BytesIO()
        _dump(obj, buf, legacy=False)
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", buf.getvalue())
            zf.writestr("archive/byteorder", "little")
            for st in storages.values():
                zf.writestr(f"archive/data/{st.key}", st.data.tobytes())
            zf.writestr("archive/version", "3\n")
    return path


def _state():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    big = np.arange(40, dtype=np.float32)
    h = rng.normal(size=(6,)).astype(np.float16)
    steps = np.array([7], np.int64)
    s_w, s_big = _Storage("0", "FloatStorage", w), _Storage("1", "FloatStorage", big)
    s_h, s_n = _Storage("2", "HalfStorage", h), _Storage("3", "LongStorage", steps)
    state = collections.OrderedDict()
    state["conv.weight"] = _Param(_Tensor(s_w, 0, w.shape, (27, 9, 3, 1)))
    # a transposed view with an offset into a shared storage: (5, 4) from element 3, strides (1, 5)
    state["shared.t"] = _Tensor(s_big, 3, (5, 4), (1, 5))
    state["shared.row"] = _Tensor(s_big, 10, (10,), (1,))
    state["half"] = _Tensor(s_h, 0, (2, 3), (3, 1))
    state["bn.num_batches_tracked"] = _Tensor(s_n, 0, (), ())
    expected = {"conv.weight": w, "shared.t": big[3:23].reshape(4, 5).T, "shared.row": big[10:20],
                "half": h.reshape(2, 3), "bn.num_batches_tracked": np.array(7, np.int64)}
    return state, expected


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_roundtrip_strides_offsets_dtypes(tmp_path, legacy):
    state, expected = _state()
    path = write_pth(tmp_path / "m.pth", state, legacy=legacy)
    assert zipfile.is_zipfile(path) != legacy
    got = read_pth(path)
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.writeable      # copies, not views into the file buffer


def test_nested_checkpoint_is_flattened(tmp_path):
    state, expected = _state()
    path = write_pth(tmp_path / "ckpt.pth", {"state_dict": state, "epoch": 3})
    got = read_pth(path)
    assert set(got) == {f"state_dict.{k}" for k in expected}   # 'epoch' is no tensor


class _Evil:
    def __reduce__(self):
        return (_Global("os", "system"), (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    state, _ = _state()
    state["payload"] = evil
    path = write_pth(tmp_path / "evil.pth", state, legacy=legacy)
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        read_pth(path)
    assert not marker.exists()
    # the same payload really would run under a plain unpickler: the test file is live
    if not legacy:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read("archive/data.pkl")
        assert b"os\nsystem" in raw


def test_builtins_eval_refused(tmp_path):
    payload = pickle.PROTO + b"\x02" + pickle.GLOBAL + b"builtins\neval\n" + \
        pickle.BINUNICODE + struct.pack("<I", 8) + b"1/0+0+0 " + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    path = tmp_path / "eval.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        read_pth(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_file_names_the_file(tmp_path, legacy):
    state, _ = _state()
    path = write_pth(tmp_path / "full.pth", state, legacy=legacy)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 5, 40):
        short = tmp_path / f"short_{cut}.pth"
        short.write_bytes(data[:cut])
        with pytest.raises(TorchPthError, match=f"short_{cut}.pth"):
            read_pth(short)


def test_missing_and_not_a_pth(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_pth(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    rng = np.random.default_rng(0)
    for _ in range(300):   # random bytes raise all kinds of unpickling errors: each is named
        junk.write_bytes(rng.integers(0, 256, int(rng.integers(1, 200)), np.uint8).tobytes())
        with pytest.raises(TorchPthError, match="junk.pth"):
            read_pth(junk)
