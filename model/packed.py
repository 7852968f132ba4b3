"""Linear weights prepacked for the CPU GEMM library (oneDNN), for generation.

A decode step multiplies 1-16 rows by every weight of the model, so its time is the time to stream
the weights from memory. `F.linear` hands oneDNN / MKL the plain [out, in] weight, which they
repack into their blocked layout on every call: each weight is read, written and read again. With
the weight reordered once (`mkldnn._reorder_linear_weight`) a decode step reads it once
(benchmarks/generate_bench.py; BENCHMARKS.md section 5 has the measurement). bf16 results are
bit-identical to `F.linear`; fp32 ones come from oneDNN instead of MKL and differ in the last bits
(a different summation order).

    with packed_linears(model) as output:   # output(hidden) -> logits
        ...model(...) calls...

The packed copies live only inside the `with` block (one extra copy of the matmul weights);
outside it the model is untouched. On CUDA, without oneDNN, or for a dtype oneDNN does not pack,
the block runs the model as it is.
"""
import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

PACKABLE = (torch.float32, torch.bfloat16)


def available(device: torch.device, dtype: torch.dtype) -> bool:
    return (device.type == "cpu" and dtype in PACKABLE and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and (dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def _packed_forward(packed, bias, dtype):
    def forward(x):
        if x.dtype != dtype:  # under autocast F.linear would cast x to the autocast dtype too
            x = x.to(dtype)
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return forward


@contextlib.contextmanager
def packed_linears(model: nn.Module, dtype: torch.dtype | None = None, batch_hint: int = 16):
    """Run every nn.Linear of `model` (and the output projection returned as `output`) on weights
    prepacked for oneDNN, in `dtype` (default: the weights' own dtype; pass the autocast dtype
    when generating under autocast). Yields output(hidden) -> logits. Falls back to the plain
    model where packing is not available, or when the model's blocks are torch.compiled."""
    weight = model.output_weight
    dtype = dtype or weight.dtype
    compiled = any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    if compiled or not available(weight.device, dtype):
        yield lambda hidden: F.linear(hidden, model.output_weight)
        return
    patched = []
    try:
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear) and module.weight is not weight:
                    packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.to(dtype), batch_hint)
                    bias = None if module.bias is None else module.bias.to(dtype)
                    module.forward = _packed_forward(packed, bias, dtype)
                    patched.append(module)
            output = _packed_forward(torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), batch_hint),
                                     None, dtype)
        yield output
    finally:
        for module in patched:
            del module.forward  # back to the class's forward
