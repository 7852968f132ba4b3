import pytest
import torch

from model.precision import autocast_dtype, dtype_from_name


def test_run_precisions_and_flag_names_map_to_the_same_dtypes():
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None
    assert dtype_from_name("bfloat16") is torch.bfloat16 and dtype_from_name("fp16") is torch.float16
    assert dtype_from_name("float32") is torch.float32 and dtype_from_name("auto") is None
    with pytest.raises(ValueError, match="precision 'bf17'"):
        autocast_dtype("bf17")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        dtype_from_name("int8")
