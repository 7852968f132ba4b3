"""The one map from precision names to torch dtypes: the short names of run configs (bf16, fp16,
fp32) and torch's own names (bfloat16, float16, float32) for command-line flags."""
import torch

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {str(dtype).removeprefix("torch."): dtype for dtype in PRECISIONS.values()}


def autocast_dtype(precision):
    """The autocast dtype of a run's precision; None for fp32 (no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use {', '.join(PRECISIONS)}")
    return None if precision == "fp32" else PRECISIONS[precision]


def dtype_from_name(name):
    """'auto' or None -> None (the checkpoint's own dtype); otherwise a name of DTYPE_NAMES or PRECISIONS."""
    if name in (None, "auto"):
        return None
    dtype = DTYPE_NAMES.get(name) or PRECISIONS.get(name)
    if dtype is None:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPE_NAMES)}")
    return dtype
