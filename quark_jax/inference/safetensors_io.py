"""Reading and writing safetensors files as an untrusted input: every header is checked before it is believed.

Reading goes through the ``safetensors`` library (``safe_open``: memory-mapped, one tensor -- or one slice of
one tensor -- at a time), so a 100 GB checkpoint never has to fit in host memory. Before a file is opened its
header is validated here against the file itself: the 8-byte length must leave room in the file and stay
under :data:`MAX_HEADER_BYTES` (a header claiming 2**60 bytes is refused, never allocated), the JSON must
parse, and every tensor's dtype, shape and byte range must agree with each other and lie inside the file. A
truncated or corrupted file therefore fails with :class:`SafetensorsError`, one line naming the file and the
tensor, instead of a bare ``struct``/JSON/numpy error from deep inside a reader.

A model directory is ``model.safetensors`` or the shards listed by ``model.safetensors.index.json``
(:class:`CheckpointReader`); shard names in the index must be plain file names inside the directory.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from jax.numpy import bfloat16

# The safetensors library refuses headers above 100 MB too; a real header is a few hundred kilobytes.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsError(ValueError):
    """A safetensors file or index that cannot be read as it claims; the message names the file (and tensor)."""


# ---- one file ----------------------------------------------------------------------------------------------
def read_header(path: str) -> dict[str, dict[str, Any]]:
    """The validated tensor table of one file: name -> {"dtype", "shape", "data_offsets"} (no ``__metadata__``).

    Reads only the header; nothing larger than the file can be allocated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{path}: {size} bytes, too short for a safetensors file (truncated?)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise SafetensorsError(
                    f"{path}: header claims {header_len} bytes but the file has {size - 8} after the length "
                    f"(limit {MAX_HEADER_BYTES}); the file is truncated or corrupted")
            raw = f.read(header_len)
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path}: the header is not valid JSON ({e}); the file is corrupted") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object; the file is corrupted")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - header_len
    for name, info in header.items():
        _check_entry(path, name, info, data_bytes)
    return header


def _check_entry(path: str, name: str, info: Any, data_bytes: int) -> None:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise SafetensorsError(f"{where}: header entry lacks dtype/shape/data_offsets; the file is corrupted")
    if info["dtype"] not in _DTYPES:
        raise SafetensorsError(f"{where}: unsupported dtype {info['dtype']!r} (supported: {', '.join(_DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape)
            or not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        raise SafetensorsError(f"{where}: malformed shape {shape!r} or data_offsets {offsets!r}; the file is corrupted")
    expected = math.prod(shape) * np.dtype(_DTYPES[info["dtype"]]).itemsize
    if offsets[1] - offsets[0] != expected:
        raise SafetensorsError(f"{where}: {info['dtype']}{shape} needs {expected} bytes but data_offsets "
                               f"{offsets} span {offsets[1] - offsets[0]}; the file is corrupted")
    if offsets[1] > data_bytes:
        raise SafetensorsError(f"{where}: data ends at byte {offsets[1]} but the file holds {data_bytes} bytes of "
                               "data; the file is truncated")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of one file as numpy arrays (validated first; for small files and tests)."""
    reader = CheckpointReader.from_files([path])
    try:
        return {name: reader.read(name) for name in reader.names()}
    finally:
        reader.close()


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Writes ``tensors`` as one ``.safetensors`` file (readable by the safetensors library and transformers)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset, blobs = 0, []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {array.dtype}")
        blob = array.tobytes()
        header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


# ---- a model directory -------------------------------------------------------------------------------------
def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a Hugging Face model directory (one file, or the shards of its index)."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SafetensorsError(f"{index}: not a safetensors index with a weight_map ({e})") from None
        for name in names:
            if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
                raise SafetensorsError(f"{index}: shard {name!r} is not a file name inside {model_dir}")
            if not os.path.isfile(os.path.join(model_dir, name)):
                raise SafetensorsError(f"{index}: lists {name} but {os.path.join(model_dir, name)} does not exist")
        return [os.path.join(model_dir, n) for n in names]
    if os.path.exists(os.path.join(model_dir, SINGLE_FILE)):
        return [os.path.join(model_dir, SINGLE_FILE)]
    raise FileNotFoundError(
        f"{model_dir} has neither {SINGLE_FILE} nor {INDEX_FILE} (PyTorch .bin checkpoints are not read: "
        "convert them with transformers' save_pretrained)")


class CheckpointReader:
    """Lazy access to the tensors of one or more safetensors files: shapes from the validated headers, data
    read tensor by tensor (or slice by slice) through ``safe_open``. ``largest_read`` is the byte size of the
    largest array handed out so far (what an import held in host memory at once, per read)."""

    def __init__(self, files: Mapping[str, dict[str, Any]]):
        self._headers = dict(files)  # path -> validated header
        self._where: dict[str, str] = {}
        for path, header in self._headers.items():
            for name in header:
                if name in self._where:
                    raise SafetensorsError(f"{path}: tensor {name!r} is also in {self._where[name]}")
                self._where[name] = path
        self._open: dict[str, Any] = {}
        self.largest_read = 0

    @classmethod
    def from_files(cls, paths: list[str]) -> CheckpointReader:
        return cls({path: read_header(path) for path in paths})

    @classmethod
    def from_dir(cls, model_dir: str) -> CheckpointReader:
        return cls.from_files(checkpoint_files(model_dir))

    def names(self) -> list[str]:
        return sorted(self._where)

    def files(self) -> list[str]:
        return sorted(self._headers)

    def file_of(self, name: str) -> str:
        return self._where[name]

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._where:
            raise KeyError(f"Hugging Face checkpoint has no tensor {name!r}")
        return tuple(self._headers[self._where[name]][name]["shape"])

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """Tensor ``name`` (or the block ``index`` of it: one plain slice per axis) as a numpy array."""
        path = self._where.get(name)
        if path is None:
            raise KeyError(f"Hugging Face checkpoint has no tensor {name!r}")
        from safetensors import SafetensorError, safe_open

        try:
            if path not in self._open:
                self._open[path] = safe_open(path, framework="numpy")
            view = self._open[path].get_slice(name)
            array = view[index] if index is not None else view[:]
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise SafetensorsError(f"{path}: tensor {name!r}: cannot be read ({e})") from None
        self.largest_read = max(self.largest_read, array.nbytes)
        return array

    def close(self) -> None:
        # safe_open handles release their memory map when dropped.
        self._open.clear()


class StateDictReader:
    """The :class:`CheckpointReader` interface over an in-memory state dict (numpy arrays or torch tensors)."""

    def __init__(self, state: Mapping[str, Any]):
        self._state = {k: v for k, v in state.items()}
        self.largest_read = 0

    def names(self) -> list[str]:
        return sorted(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self._state:
            raise KeyError(f"Hugging Face state dict has no {name!r}")
        return tuple(self._state[name].shape)

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        value = self._state[name]
        array = np.asarray(value.float().numpy() if hasattr(value, "float") else value)
        array = array[index] if index is not None else array
        self.largest_read = max(self.largest_read, array.nbytes)
        return array

    def close(self) -> None:
        pass
