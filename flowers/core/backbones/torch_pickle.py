"""Read legacy (pre-1.6) PyTorch ``.pth`` state dicts into numpy, without torch.

The legacy format is a run of pickles (magic, protocol, sys info, the state
dict with storages as persistent ids, the storage keys) followed by each
storage's raw bytes. The unpickler admits only the globals a state dict of
tensors needs and refuses anything else, so a hostile file cannot run code.
"""
import collections
import pickle
import struct

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor whose storage bytes come later in the file."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset = storage_key, offset
        self.size, self.stride = tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    return _TensorRef(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f):
        super().__init__(f)
        self.storages = {}  # key -> (dtype, number of elements)

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, saved_id):
        if not (isinstance(saved_id, tuple) and saved_id and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r}")
        storage_type, key, _location, numel = saved_id[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("storage of unknown type")
        if len(saved_id) > 5 and saved_id[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"storage {key!r}: bad element count {numel!r}")
        self.storages[key] = (storage_type.dtype, numel)
        return key


def _plain_load(f):
    return _RestrictedUnpickler(f).load()


def load_state_dict(path):
    """Return ``{name: np.ndarray}`` from a legacy torch state-dict file."""
    with open(path, "rb") as f:
        if _plain_load(f) != MAGIC_NUMBER:
            raise ValueError(f"{path}: not a legacy PyTorch file (bad magic number)")
        _plain_load(f)  # protocol version
        _plain_load(f)  # sys info
        unpickler = _RestrictedUnpickler(f)
        state = unpickler.load()
        keys = _plain_load(f)
        data = {}
        for key in keys:
            if key not in unpickler.storages:
                raise ValueError(f"{path}: storage {key!r} is not used by any tensor")
            dtype, numel = unpickler.storages[key]
            header = f.read(8)
            if len(header) != 8:
                raise ValueError(f"{path}: file ends before storage {key}")
            (count,) = struct.unpack("<q", header)
            if count != numel:
                raise ValueError(f"{path}: storage {key} holds {count} elements, expected {numel}")
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{path}: storage {key} is cut short ({len(raw)} of "
                                 f"{count * dtype.itemsize} bytes)")
            data[key] = np.frombuffer(raw, dtype=dtype)
    out = collections.OrderedDict()
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{path}: entry {name} is not a tensor")
        if ref.storage_key not in data:
            raise ValueError(f"{path}: entry {name} has no storage data")
        storage = data[ref.storage_key]
        _check_bounds(path, name, ref, len(storage))
        itemsize = storage.dtype.itemsize
        arr = np.lib.stride_tricks.as_strided(
            storage[ref.offset:], shape=ref.size, strides=[s * itemsize for s in ref.stride])
        out[name] = np.array(arr)  # copy: own, contiguous memory
    return out


def _check_bounds(path, name, ref, numel):
    """as_strided trusts its arguments: a tensor reaching past its storage (a crafted file)
    would read arbitrary memory or segfault, so every element it addresses is checked first."""
    fields = (ref.offset, *ref.size, *ref.stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in fields):
        raise ValueError(f"{path}: tensor {name} has a negative or non-integer offset, size or stride")
    if len(ref.size) != len(ref.stride):
        raise ValueError(f"{path}: tensor {name} has {len(ref.size)} sizes but {len(ref.stride)} strides")
    if 0 in ref.size:
        return
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
    if last >= numel:
        raise ValueError(f"{path}: tensor {name} reaches element {last} of a storage of {numel}")
