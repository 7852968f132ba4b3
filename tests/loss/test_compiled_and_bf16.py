"""The torch.compile path, bf16 inputs and autocast against the naive loss.

Compiled tests reuse a handful of shapes so the whole file compiles the chunk kernel only a few
times (the kernel is compiled with dynamic shapes, so new lengths do not recompile).
"""
import pytest
import torch

from loss import weighted_linear_cross_entropy
from loss_helpers import assert_matches, make_inputs, naive, ours, relative_error

SHAPE = dict(hidden_size=24, vocab_size=131)


@pytest.mark.parametrize("num_tokens", [1, 50, 77])
@pytest.mark.parametrize("options", [{}, {"z_loss": 1e-2, "dft": True}], ids=str)
def test_compiled_matches_naive_fp32(num_tokens, options):
    inputs = make_inputs(num_tokens, **SHAPE, seed=num_tokens,
                         zero_fraction=0.0 if num_tokens == 1 else 0.3,
                         ignore_fraction=0.0 if num_tokens == 1 else 0.1)
    got = ours(*inputs, chunk_size=32, compile=True, **options)
    assert_matches(got, naive(*inputs, **options))


def test_compiled_equals_eager():
    inputs = make_inputs(77, **SHAPE, seed=11)
    compiled = ours(*inputs, chunk_size=32, compile=True)
    eager = ours(*inputs, chunk_size=32, compile=False)
    assert_matches(compiled, eager, rtol=1e-6, atol=1e-6)


def test_new_lengths_do_not_recompile():
    from torch._dynamo.utils import counters
    ours(*make_inputs(40, **SHAPE, seed=12), chunk_size=32, compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    for num_tokens in (3, 45, 61, 90):
        ours(*make_inputs(num_tokens, **SHAPE, seed=num_tokens), chunk_size=32, compile=True)
    assert counters["stats"]["unique_graphs"] == graphs_before


def test_more_variants_than_dynamos_default_limit_still_compile():
    # each (logits dtype, dft, z_loss on/off) is a graph of its own: twelve of them pass dynamo's
    # default limit of 8 graphs per function, which under fullgraph=True failed the whole test
    # run (seen in CI, after other test files had compiled a few variants)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        inputs = make_inputs(20, **SHAPE, seed=15, dtype=dtype)
        for options in ({}, {"dft": True}, {"z_loss": 0.01}, {"z_loss": 0.01, "dft": True}):
            compiled = ours(*inputs, chunk_size=32, compile=True, **options)
            eager = ours(*inputs, chunk_size=32, compile=False, **options)
            for got, want in zip(compiled, eager):
                assert relative_error(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("compile", [False, True])
def test_bf16_inputs_close_to_fp32_reference(compile):
    inputs = make_inputs(77, **SHAPE, seed=13, dtype=torch.bfloat16)
    got = ours(*inputs, chunk_size=32, compile=compile)
    assert got[0].dtype == torch.float32
    assert got[3].dtype == torch.bfloat16 and got[4].dtype == torch.bfloat16
    # the naive loss on the same bf16 inputs, and the exact fp32 math on the upcast inputs
    bf16_naive = naive(*inputs)
    fp32_exact = naive(inputs[0].float(), inputs[1].float(), *inputs[2:])
    for index in (0, 1, 3, 4):
        assert relative_error(got[index], fp32_exact[index]) < 2e-2
        assert relative_error(got[index], bf16_naive[index]) < 2e-2
    assert torch.equal(got[2], fp32_exact[2])


@pytest.mark.parametrize("compile", [False, True])
def test_cpu_autocast_runs_matmul_in_bf16_and_returns_fp32(compile):
    inputs = make_inputs(60, **SHAPE, seed=14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(*inputs, chunk_size=32, compile=compile)
        bf16_naive = naive(*inputs)
    fp32_exact = naive(*inputs)
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert got[3].dtype == torch.float32 and got[4].dtype == torch.float32
    for index in (0, 1, 3, 4):
        assert relative_error(got[index], bf16_naive[index]) < 2e-2
        assert relative_error(got[index], fp32_exact[index]) < 2e-2
    # bf16 matmuls really happened: the result is not the fp32 one to fp32 precision
    assert relative_error(got[0], fp32_exact[0]) > 1e-7


def test_bf16_weight_gradient_accumulates_in_fp32():
    # many chunks of small contributions: a bf16 accumulator would drift, fp32 keeps it close
    inputs = make_inputs(256, 16, 40, seed=15, dtype=torch.bfloat16, zero_fraction=0.0)
    got = ours(*inputs, chunk_size=4, compile=False)
    one_chunk = ours(*inputs, chunk_size=256, compile=False)
    assert relative_error(got[4], one_chunk[4]) < 1e-2


@pytest.mark.parametrize("compile", [False, True])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_vocab_blocks_under_autocast(monkeypatch, compile, weight_dtype):
    # blocks of 16 rows over a vocab of 131 (8 full blocks and one of 3): fp32 weights are cast
    # block by block into one buffer, bf16 weights are used in place; both must match the math
    import loss.linear_cross_entropy as lce
    monkeypatch.setattr(lce, "_VOCAB_BLOCK", 16)
    inputs = make_inputs(70, **SHAPE, seed=16)
    inputs = (inputs[0], inputs[1].to(weight_dtype)) + inputs[2:]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ours(*inputs, chunk_size=32, compile=compile)
    fp32_exact = naive(inputs[0], inputs[1].float(), *inputs[2:])
    assert got[4].dtype == weight_dtype
    for index in (0, 1, 3, 4):
        assert relative_error(got[index], fp32_exact[index]) < 2e-2
    assert torch.equal(got[2], fp32_exact[2])


@pytest.mark.parametrize("compile", [False, True])
def test_weight_cast_once_equals_the_per_block_casts(monkeypatch, compile):
    # a small fp32 output layer under autocast is cast once per call instead of block by block
    # for every chunk and pass: the same bf16 blocks, so the same numbers to the bit
    import loss.linear_cross_entropy as lce
    from torch.profiler import profile
    monkeypatch.setattr(lce, "_VOCAB_BLOCK", 16)
    inputs = make_inputs(70, **SHAPE, seed=17)
    results, block_casts = [], []
    for budget in (lce._CAST_ONCE_BYTES, 0):
        monkeypatch.setattr(lce, "_CAST_ONCE_BYTES", budget)
        with torch.autocast("cpu", dtype=torch.bfloat16), profile(record_shapes=True) as prof:
            results.append(ours(*inputs, chunk_size=32, compile=compile))
        block_casts.append(sum(e.name == "aten::copy_" and e.input_shapes[:2] == [[16, 24], [16, 24]]
                               for e in prof.events()))
    for once, blocks in zip(*results):
        assert torch.equal(once, blocks)
    # the per-block path casts the 8 full blocks again for every chunk (2 here) and pass (2)
    assert block_casts[1] - block_casts[0] == 2 * 2 * 8
