"""Read PyTorch .pth/.pt state dicts into numpy without importing torch.

    from bt_jax.porting.torch_pth import read_pth
    tensors = read_pth("efficientnet-lite0-57934424.pth")   # {"_conv_stem.weight": np.ndarray, ...}

Both on-disk layouts are understood: the zip format (torch >= 1.6: `<dir>/data.pkl` plus one
`<dir>/data/<key>` entry per storage) and the legacy stream (magic number, protocol, sys_info,
pickled object, storage keys, then the raw storages). The pickle is read by a restricted
unpickler: only the handful of globals that rebuild tensors and ordered dicts are admitted,
anything else (os.system, builtins.eval, ...) raises UnsafePickleError before it can run.
Nested dicts (e.g. {"state_dict": {...}}) are flattened with '.'; non-tensor leaves are dropped.
"""

from __future__ import annotations

from bt_jax.errors import UserError
import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchPthError(UserError, ValueError):
    """The file is not a readable PyTorch checkpoint (truncated, corrupt, unknown layout)."""


class UnsafePickleError(TorchPthError):
    """The pickle asks for a global outside the tensor-rebuilding allow-list."""


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage named by the pickle; its bytes are attached after unpickling."""

    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array = None
        self.view_of = None            # legacy storage views: (root _Storage, element offset)


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self, origin):
        base, extra = self.storage.view_of or (self.storage, 0)
        if base.array is None:
            raise TorchPthError(f"{origin}: storage {base.key!r} was never written (truncated file?)")
        if 0 in self.size:
            return np.zeros(self.size, base.array.dtype)
        start = extra + self.offset
        last = start + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if start < 0 or last >= base.array.size or min(self.stride, default=0) < 0:
            raise TorchPthError(f"{origin}: tensor of size {self.size} reads outside storage "
                                f"{base.key!r} ({base.array.size} elements; corrupt file)")
        item = base.array.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            base.array[start:], shape=self.size, strides=tuple(s * item for s in self.stride),
            writeable=False)
        return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, origin, storages):
        super().__init__(f)
        self.origin, self.storages = origin, storages

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.origin}: refusing to load global {module}.{name}; a weight file only "
                f"needs tensor-rebuilding globals (allowed: "
                f"{sorted(f'{m}.{n}' for m, n in _ALLOWED)[:6]} ...)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise TorchPthError(f"{self.origin}: unexpected persistent id {pid!r}")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        if key not in self.storages:
            self.storages[key] = _Storage(key, stype.dtype, int(numel))
        st = self.storages[key]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:               # legacy storage view: (view_key, offset, view_size)
            vkey, off, vsize = view
            if vkey not in self.storages:
                v = _Storage(str(vkey), stype.dtype, int(vsize))
                v.view_of = (st, int(off))
                self.storages[str(vkey)] = v
            return self.storages[str(vkey)]
        return st


def _flatten(obj, origin, prefix=""):
    out = {}
    if isinstance(obj, _LazyTensor):
        out[prefix] = obj.materialize(origin)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, origin, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _read_zip(path, origin):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise TorchPthError(f"{origin}: zip archive has no single data.pkl (entries: {names[:5]})")
        root = pkl[0][: -len("data.pkl")]
        order = "little"
        if root + "byteorder" in names:
            order = zf.read(root + "byteorder").decode().strip()
        storages = {}
        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), origin, storages).load()
        for key, st in storages.items():
            if st.view_of:
                continue
            entry = f"{root}data/{key}"
            if entry not in names:
                raise TorchPthError(f"{origin}: storage {entry} is missing from the archive")
            raw = zf.read(entry)
            dtype = st.dtype.newbyteorder("<" if order == "little" else ">")
            if len(raw) < st.numel * dtype.itemsize:
                raise TorchPthError(f"{origin}: storage {entry} holds {len(raw)} bytes, "
                                    f"expected {st.numel * dtype.itemsize}")
            st.array = np.frombuffer(raw, dtype, count=st.numel).astype(st.dtype)
    return _flatten(obj, origin)


def _read_legacy(f, origin):
    def load():
        return _Unpickler(f, origin, {}).load()

    if load() != _MAGIC:
        raise TorchPthError(f"{origin}: not a PyTorch file (bad magic number)")
    proto = load()
    if proto != _PROTOCOL:
        raise TorchPthError(f"{origin}: unsupported legacy protocol {proto} (expected {_PROTOCOL})")
    sys_info = load()
    little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
    storages = {}
    obj = _Unpickler(f, origin, storages).load()
    keys = _Unpickler(f, origin, storages).load()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise TorchPthError(f"{origin}: storage key {key!r} listed but never referenced")
        dtype = st.dtype.newbyteorder("<" if little else ">")
        head = f.read(8)
        if len(head) < 8:
            raise TorchPthError(f"{origin}: file ends before storage {key!r} (truncated)")
        numel = struct.unpack("<q" if little else ">q", head)[0]
        raw = f.read(numel * dtype.itemsize)
        if len(raw) < numel * dtype.itemsize:
            raise TorchPthError(f"{origin}: storage {key!r} is cut short: {len(raw)} of "
                                f"{numel * dtype.itemsize} bytes (truncated file)")
        st.array = np.frombuffer(raw, dtype).astype(st.dtype)
    return _flatten(obj, origin)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch checkpoint, keyed by their '.'-joined state-dict names."""
    path = Path(path)
    origin = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{origin}: no such weight file")
    try:
        if zipfile.is_zipfile(path):
            out = _read_zip(path, origin)
        else:
            with open(path, "rb") as f:
                out = _read_legacy(f, origin)
    except TorchPthError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error,
            ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, MemoryError, UnicodeDecodeError) as e:  # what junk bytes raise
        raise TorchPthError(f"{origin}: truncated or corrupt PyTorch file "
                            f"({type(e).__name__}: {e})") from e
    if not out:
        raise TorchPthError(f"{origin}: holds no tensors")
    return out
