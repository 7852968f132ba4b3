"""Read and write the safetensors format directly: tensors are read into memory the caller owns
(no mmap, no intermediate copy) and written from views of the model's parameters."""
import json
import os
import struct

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be loaded as is: names the file and tensor at fault."""


def read_header(path) -> tuple[dict, int]:
    """{name: (dtype, shape, begin, end)} with absolute byte offsets, validated against the file size."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file (header length {n}, "
                                  f"file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    entries = {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {info!r}") from None
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        if end - begin != nbytes or begin < 0:
            raise CheckpointError(f"{path}: tensor {name!r} has data_offsets {[begin, end]} that do not fit "
                                  f"its shape {list(shape)} and dtype {info['dtype']}")
        if 8 + n + end > size:
            raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte "
                                  f"{8 + n + end} but the file has {size} bytes")
        entries[name] = (dtype, shape, 8 + n + begin, 8 + n + end)
    return entries, size


def read_into(f, begin: int, end: int, out: torch.Tensor, path, name):
    """Read bytes [begin, end) of open file f straight into the contiguous CPU tensor out."""
    buf = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    f.seek(begin)
    done = 0
    while done < end - begin:
        got = f.readinto(buf[done:])
        if not got:
            raise CheckpointError(f"{path}: truncated while reading tensor {name!r}")
        done += got


def write_file(path, tensors: dict[str, torch.Tensor]):
    """Write tensors (in the given order) as one safetensors file, fsynced."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            t = t.detach().to("cpu").contiguous()
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        f.flush()
        os.fsync(f.fileno())
