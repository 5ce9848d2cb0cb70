"""What a file is, told by its first bytes: the artifacts vimdeploy reads, and the ones it doesn't.

`sniff(path)` reads a few hundred bytes (a zip's first entry name, a safetensors header length);
it never unpickles, parses a whole file or trusts a suffix. A command handed the wrong kind of
file names it with `wrong_kind(path, kind, wanted)` ("this is an ONNX model; use `vimdeploy
inspect`") instead of failing inside a loader with a message about something else.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Kind", "KINDS", "CHECKPOINT_KINDS", "sniff", "wrong_kind"]


@dataclass(frozen=True)
class Kind:
    what: str  # the file, in words: "an ONNX model"
    hint: str  # what to do with it: the commands that take it


KINDS: dict[str, Kind] = {
    "torch": Kind("a PyTorch checkpoint (torch.save zip)", "use `vimdeploy info`, `export`, `infer` or `serve`"),
    "torch-legacy": Kind(
        "a PyTorch checkpoint in the legacy pickle format", "use `vimdeploy info`, `export` or `infer`"
    ),
    "pickle": Kind("a plain Python pickle", "re-save its state dict with torch.save or safetensors"),
    "safetensors": Kind("a safetensors checkpoint", "use `vimdeploy info`, `export`, `infer` or `serve`"),
    "onnx": Kind("an ONNX model", "use `vimdeploy inspect`, `infer`, `validate`, `convert`, `build` or `serve`"),
    "tensorrt": Kind(
        "a TensorRT engine (plan)", "use `vimdeploy inspect`, `infer`, `validate`, `triton-repo` or `serve`"
    ),
    "npz": Kind("a NumPy .npz archive", "it holds arrays (outputs of `vimdeploy infer`?), not a model"),
    "npy": Kind("a NumPy array (.npy)", "it is an input: `vimdeploy infer MODEL --input FILE.npy`"),
    "zip": Kind("a zip archive without a data.pkl", "if a checkpoint is inside, unpack it first"),
    "empty": Kind("an empty file (0 bytes), truncated or corrupt", "download or copy it again"),
    "unknown": Kind("not a file vimdeploy reads", "give a checkpoint (.pth, .safetensors), an .onnx or a .plan"),
}
CHECKPOINT_KINDS = frozenset({"torch", "torch-legacy", "pickle", "safetensors"})

_HEAD = 512
# safetensors: an 8-byte little-endian header length, then the JSON header; the format caps
# the header at 100 MB.
_SAFETENSORS_MAX_HEADER = 100_000_000
# torch.save's legacy format pickles this number first (torch/serialization.py MAGIC_NUMBER).
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
# An ONNX ModelProto as onnx.save writes it: field 1 (ir_version, a small varint) first, then
# one of fields 2-8 (producer_name ... opset_import).
_ONNX_SECOND_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}
# TensorRT serialized engines start with "ftrt" or "ptrt"; some tools (Ultralytics) put a
# length-prefixed JSON block before the engine.
_TENSORRT_MAGICS = (b"ftrt", b"ptrt")


def _zip_kind(path: Path, head: bytes) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        # Truncated: the central directory is gone, the first local header remains.
        name_len = struct.unpack_from("<H", head, 26)[0] if len(head) >= 30 else 0
        names = [head[30 : 30 + name_len].decode("utf-8", "replace")]
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "zip"


def _is_legacy_torch(head: bytes) -> bool:
    # PROTO 2, then LONG1 with 10 bytes: the magic number.
    if len(head) < 13 or head[2:4] != b"\x8a\x0a":
        return False
    return int.from_bytes(head[4:14], "little") == _TORCH_LEGACY_MAGIC


def _is_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack_from("<Q", head)
    return 2 <= header_len <= _SAFETENSORS_MAX_HEADER and head[8:9] == b"{"


def _is_onnx(head: bytes) -> bool:
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] < 0x80 and head[2] in _ONNX_SECOND_TAGS


def _is_tensorrt(path: Path, head: bytes, size: int) -> bool:
    if head[:4] in _TENSORRT_MAGICS:
        return True
    if len(head) >= 5 and head[4:5] == b"{":
        offset = struct.unpack_from("<I", head)[0] + 4
        if offset + 4 <= size:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(4) in _TENSORRT_MAGICS
    return False


def sniff(path: str | Path) -> str:
    """The kind of file at `path` (a key of KINDS), from its content alone."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(_HEAD)
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(path, head)
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO 2-5
        return "torch-legacy" if _is_legacy_torch(head) else "pickle"
    if _is_safetensors(head):
        return "safetensors"
    if _is_tensorrt(path, head, size):
        return "tensorrt"
    if _is_onnx(head):
        return "onnx"
    return "unknown"


def wrong_kind(path: str | Path, kind: str, wanted: str) -> str:
    """One line for a file of `kind` given where `wanted` ("an ONNX model") was expected."""
    k = KINDS[kind]
    if kind == "unknown":
        with open(path, "rb") as f:
            start = f.read(8).hex(" ")
        return f"{path} is not {wanted} (nor any file vimdeploy reads: it starts with bytes {start}); {k.hint}."
    return f"{path} is {k.what}, not {wanted}; {k.hint}."
