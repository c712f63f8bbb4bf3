"""Reads PyTorch ``.pth`` checkpoints into NumPy arrays, without torch.

Both formats ``torch.save`` writes are read:
  * zip (torch >= 1.6): an archive ``<name>/data.pkl`` (the pickled object, tensors as
    persistent ids) plus one file ``<name>/data/<key>`` of raw bytes per storage;
  * legacy (``_use_new_zipfile_serialization=False``, and torch < 1.6): one stream of
    pickles -- magic number, protocol version, system info, the object, the sorted storage
    keys -- followed by each storage as an int64 element count and its raw bytes.

The unpickler only builds what checkpoints contain (tensors rebuilt by
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, storage types,
``collections.OrderedDict``, NumPy arrays and scalars in metadata); objects of the training
frameworks (mmengine, mmcv, mmdet, detectron2) stored beside the weights become inert
``Opaque`` stand-ins, and any other global is refused, so a checkpoint cannot run code.
Tensors become ``np.ndarray`` (bfloat16 as float32).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

try:  # NumPy 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # NumPy 1
    from numpy.core import multiarray as _multiarray

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
# torch storage type -> NumPy dtype of its elements (bfloat16 is read as uint16 bits).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Keys under which training frameworks nest the state dict (mmdet/mmcv, detectron2).
STATE_DICT_KEYS = ("state_dict", "model")


class StorageType:
    """Stands for ``torch.<name>Storage`` in a pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class StorageRef:
    """A storage named by a persistent id; its bytes are found after unpickling."""

    def __init__(self, storage_type: StorageType, key: str, numel: int):
        self.storage_type = storage_type
        self.key = key
        self.numel = numel


class TensorRef:
    """A tensor as pickled: a view (offset, size, stride in elements) of a storage."""

    def __init__(self, storage: StorageRef, offset: int, size, stride):
        self.storage = storage
        self.offset = int(offset)
        self.size = tuple(int(s) for s in size)
        self.stride = tuple(int(s) for s in stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *_):
    return TensorRef(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *_):
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class Opaque:
    """Stands for an object of a training framework (mmengine's message hub, schedulers...)
    stored beside the weights: it keeps its arguments and state and runs none of its code."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{type(self).__name__} (not loaded)>"


# Packages whose objects checkpoints carry beside the state dict (mmengine checkpoints hold a
# MessageHub with HistoryBuffers); they become Opaque stand-ins, never imported or run.
TRAINING_STATE_PACKAGES = ("mmengine", "mmcv", "mmdet", "detectron2", "fvcore", "adet")


class _Unpickler(pickle.Unpickler):
    """Builds only ALLOWED_GLOBALS and storage types; storages stay references."""

    def __init__(self, file, path: str):
        super().__init__(file, encoding="utf-8")
        self.path = path

    def find_class(self, module, name):
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        if module.split(".")[0] in TRAINING_STATE_PACKAGES:
            return type(f"{module}.{name}", (Opaque,), {})
        raise pickle.UnpicklingError(
            f"{self.path}: the checkpoint pickles {module}.{name}, which a PyTorch "
            "checkpoint of tensors does not hold; refusing to load it"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"{self.path}: unknown persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"{self.path}: unknown storage type {storage_type!r}")
        return StorageRef(storage_type, str(key), int(numel))


def _load_zip(path: str):
    """-> (unpickled object, {storage key: bytes}, byte order)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: a torch zip checkpoint holds one data.pkl, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), path).load()
        storages = {
            n[len(prefix) + len("data/") :]: archive.read(n)
            for n in names
            if n.startswith(prefix + "data/")
        }
        order = "little"
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode().strip()
    return obj, storages, order


def _load_legacy(path: str):
    """-> (unpickled object, {storage key: bytes}, byte order)."""
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as err:
            raise ValueError(
                f"{path}: neither a zip nor a legacy torch checkpoint ({err})"
            ) from err
        if magic != LEGACY_MAGIC_NUMBER:
            raise ValueError(f"{path}: not a torch checkpoint (wrong magic number)")
        protocol = pickle.load(f)
        if protocol != LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"{path}: unsupported legacy torch protocol {protocol}")
        sys_info = pickle.load(f)
        order = "little" if sys_info.get("little_endian", True) else "big"
        unpickler = _Unpickler(f, path)
        obj = unpickler.load()
        keys = pickle.load(f)
        refs = _storage_refs(obj)
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q" if order == "little" else ">q", f.read(8))
            if key not in refs:
                raise ValueError(f"{path}: storage {key!r} belongs to no tensor")
            itemsize = refs[key].storage_type.dtype.itemsize
            data = f.read(numel * itemsize)
            if len(data) != numel * itemsize:
                raise ValueError(f"{path}: storage {key!r} is truncated")
            storages[key] = data
    return obj, storages, order


def _storage_refs(obj) -> dict:
    """Every StorageRef reachable from ``obj``, by key."""
    found = {}

    def walk(x):
        if isinstance(x, TensorRef):
            found[x.storage.key] = x.storage
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return found


def _to_array(ref: TensorRef, storages: dict, order: str, path: str, name: str) -> np.ndarray:
    key, dtype = ref.storage.key, ref.storage.storage_type.dtype
    if key not in storages:
        raise ValueError(f"{path}: tensor {name!r}: its storage {key!r} is missing")
    dtype = dtype.newbyteorder("<" if order == "little" else ">")
    flat = np.frombuffer(storages[key], dtype=dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True) if n > 0)
    if any(n == 0 for n in ref.size):
        last = ref.offset - 1
    if ref.offset < 0 or last >= flat.size:
        raise ValueError(
            f"{path}: tensor {name!r} of size {ref.size} reaches element {last} of a storage "
            f"of {flat.size} (file truncated or corrupt)"
        )
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset :], shape=ref.size, strides=[s * dtype.itemsize for s in ref.stride]
    )
    array = np.array(view, dtype=dtype.newbyteorder("="))
    if ref.storage.storage_type.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def load(path: str):
    """The object saved in ``path`` with every tensor as an np.ndarray."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    loader = _load_zip if zipfile.is_zipfile(path) else _load_legacy
    obj, storages, order = loader(path)

    def convert(x, name):
        if isinstance(x, TensorRef):
            return _to_array(x, storages, order, path, name)
        if isinstance(x, dict):
            out = type(x)() if isinstance(x, collections.OrderedDict) else {}
            for k, v in x.items():
                out[k] = convert(v, f"{name}.{k}" if name else str(k))
            return out
        if isinstance(x, (list, tuple)):
            return type(x)(convert(v, f"{name}[{i}]") for i, v in enumerate(x))
        return x

    return convert(obj, "")


def load_state_dict(path: str) -> dict:
    """{parameter name: np.ndarray} of a checkpoint.

    mmdetection's and detectron2's checkpoints nest it (``{"meta": ..., "state_dict": ...}``,
    ``{"model": ...}``); torchvision's are the state dict itself. A value that is not a
    tensor is an error naming it.
    """
    obj = load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    for key in STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    state = {}
    for name, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor "
                "(is this a state dict?)"
            )
        state[name] = value
    return state
