"""The fused loss and its gradients on the test device (`--device` / SFTKEY_TEST_DEVICE, CPU by
default), eager and compiled (Triton on CUDA), against the naive loss on materialised logits."""
import pytest
import torch

from tests.loss.loss_helpers import assert_matches, make_inputs, naive, ours, relative_error

SMALL = dict(hidden_size=24, vocab_size=131)
# three vocabulary blocks of 8,192 and three chunks of 256: every loop of the fused loss runs
LARGE = dict(num_tokens=700, hidden_size=64, vocab_size=20000)


def on(device, inputs):
    return [t.to(device) for t in inputs]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("options", [{}, {"z_loss": 1e-2, "dft": True}], ids=["plain", "zloss_dft"])
def test_fp32_matches_naive(compile, options, device):
    inputs = on(device, make_inputs(77, **SMALL, seed=21))
    got = ours(*inputs, chunk_size=32, compile=compile, **options)
    assert got[3].device.type == device.type
    assert_matches(got, naive(*inputs, **options), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_large_vocab_fp32_matches_naive(compile, device):
    inputs = on(device, make_inputs(**LARGE, seed=22))
    # sums over 20,000 classes in another order: absolute differences reach 1e-5
    assert_matches(ours(*inputs, compile=compile), naive(*inputs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("weights", ["fp32_autocast", "bf16"])
def test_bf16_close_to_exact_fp32(compile, weights, device):
    # training's case (fp32 weights cast block by block under autocast) and bf16 weights
    inputs = on(device, make_inputs(**LARGE, seed=23))
    exact = naive(*inputs)
    if weights == "bf16":
        inputs = [inputs[0].bfloat16(), inputs[1].bfloat16(), *inputs[2:]]
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=weights == "fp32_autocast"):
        got = ours(*inputs, compile=compile)
        bf16_naive = naive(*inputs)
    assert got[0].dtype == torch.float32 and got[4].dtype == inputs[1].dtype
    assert torch.equal(got[2], exact[2])
    for index in (0, 1, 3, 4):  # loss, role nll sums, both gradients
        error = relative_error(got[index], exact[index])
        # no further from the exact value than the naive loss computed in the same precision
        assert error < max(2 * relative_error(bf16_naive[index], exact[index]), 1e-3), (index, error)
        assert error < 2e-2, (index, error)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_stage2_key_only_weights_match_naive(compile, device):
    # most weights zero (stage 2): those tokens never reach the matmul, and get zero gradient
    inputs = on(device, make_inputs(**LARGE, seed=24, zero_fraction=0.93))
    got = ours(*inputs, compile=compile)
    assert_matches(got, naive(*inputs), rtol=1e-4, atol=1e-4)
    dropped = inputs[3] == 0
    assert dropped.sum() > 500 and torch.all(got[3][dropped] == 0)
