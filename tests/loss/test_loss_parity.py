"""Loss, role stats and both gradients equal the naive materialised-logits loss (eager path)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from loss_helpers import assert_matches, make_inputs, naive, ours


@pytest.mark.parametrize("num_tokens, hidden_size, vocab_size, chunk_size", [
    (37, 16, 101, 8),    # vocab and tokens not multiples of the chunk
    (1, 8, 50, 16),      # one token
    (64, 24, 64, 64),    # exactly one full chunk
    (65, 24, 64, 64),    # one full chunk plus a one-token tail
])
@pytest.mark.parametrize("options", [{}, {"z_loss": 1e-2}, {"dft": True},
                                     {"z_loss": 1e-2, "dft": True}], ids=str)
def test_matches_naive_fp32(num_tokens, hidden_size, vocab_size, chunk_size, options):
    inputs = make_inputs(num_tokens, hidden_size, vocab_size, seed=num_tokens,
                         zero_fraction=0.0 if num_tokens == 1 else 0.3,
                         ignore_fraction=0.0 if num_tokens == 1 else 0.1)
    got = ours(*inputs, chunk_size=chunk_size, compile=False, **options)
    assert_matches(got, naive(*inputs, **options))


@settings(max_examples=30, deadline=None)
@given(num_tokens=st.integers(1, 40), hidden_size=st.integers(1, 20),
       vocab_size=st.integers(2, 70), chunk_size=st.integers(1, 17), seed=st.integers(0, 10**6),
       zero_fraction=st.sampled_from([0.0, 0.5, 1.0]), z_loss=st.sampled_from([0.0, 1e-3]),
       dft=st.booleans())
def test_matches_naive_random_shapes(num_tokens, hidden_size, vocab_size, chunk_size, seed,
                                     zero_fraction, z_loss, dft):
    inputs = make_inputs(num_tokens, hidden_size, vocab_size, seed=seed, zero_fraction=zero_fraction)
    options = {"z_loss": z_loss, "dft": dft}
    got = ours(*inputs, chunk_size=chunk_size, compile=False, **options)
    assert_matches(got, naive(*inputs, **options))


def test_weights_scale_each_token_loss_exactly():
    hidden, weight, targets, _, roles = make_inputs(6, 8, 30, seed=1, ignore_fraction=0.0)
    nll = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    token_weights = torch.tensor([0.0, 0.25, 1.0, 2.5, 7.0, 1.0])
    loss_sum, _, _ = ours(hidden, weight, targets, token_weights, roles, compile=False)[:3]
    torch.testing.assert_close(loss_sum, (token_weights * nll).sum())


def test_role_stats_are_unweighted_and_skip_dropped_tokens():
    hidden, weight, _, _, _ = make_inputs(5, 8, 20, seed=2)
    targets = torch.tensor([3, 4, -100, 5, 6])
    token_weights = torch.tensor([1.0, 0.0, 1.0, 0.5, 2.0])
    roles = torch.tensor([1, 1, 2, 2, 2])
    nll = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets.clamp_min(0), reduction="none")
    _, role_nll_sum, role_count, _, _ = ours(hidden, weight, targets, token_weights, roles,
                                             compile=False)
    torch.testing.assert_close(role_nll_sum, torch.tensor([0.0, nll[0], nll[3] + nll[4], 0.0]))
    assert role_count.tolist() == [0, 1, 2, 0]
    assert role_count.dtype == torch.long and role_nll_sum.dtype == torch.float32


def test_all_weights_zero_gives_exact_zero_loss_and_zero_grads():
    hidden, weight, targets, _, roles = make_inputs(9, 8, 20, seed=3)
    hidden[0] = float("nan")  # a dropped token's hidden state must not leak into the result
    token_weights = torch.zeros(9)
    for compile in (False, True):
        loss_sum, role_nll_sum, role_count, grad_hidden, grad_weight = ours(
            hidden, weight, targets, token_weights, roles, compile=compile)
        assert loss_sum.item() == 0.0 and loss_sum.dtype == torch.float32
        assert torch.equal(grad_hidden, torch.zeros_like(hidden))
        assert torch.equal(grad_weight, torch.zeros_like(weight))
        assert role_nll_sum.abs().sum().item() == 0.0 and role_count.sum().item() == 0


def test_no_tokens_at_all():
    hidden, weight, targets, token_weights, roles = make_inputs(0, 8, 20)
    loss_sum, _, role_count, grad_hidden, grad_weight = ours(hidden, weight, targets,
                                                             token_weights, roles, compile=False)
    assert loss_sum.item() == 0.0 and grad_hidden.shape == (0, 8)
    assert torch.equal(grad_weight, torch.zeros_like(weight)) and role_count.sum().item() == 0


def test_ignore_index_is_configurable():
    hidden, weight, targets, token_weights, roles = make_inputs(12, 8, 20, seed=4, ignore_fraction=0)
    targets[::3] = 7
    got = ours(hidden, weight, targets, token_weights, roles, ignore_index=7, compile=False)
    expected = naive(hidden, weight, targets, token_weights, roles, ignore_index=7)
    assert_matches(got, expected)
    assert got[2].sum().item() == int(((targets != 7) & (token_weights != 0)).sum())


def test_grad_output_scales_gradients():
    inputs = make_inputs(10, 8, 20, seed=5)
    hidden = inputs[0].clone().requires_grad_(True)
    weight = inputs[1].clone().requires_grad_(True)
    from loss import weighted_linear_cross_entropy
    loss_sum, _, _ = weighted_linear_cross_entropy(hidden, weight, *inputs[2:], compile=False)
    (loss_sum / 4.0).backward()
    _, _, _, grad_hidden, grad_weight = naive(*inputs)
    torch.testing.assert_close(hidden.grad, grad_hidden / 4.0)
    torch.testing.assert_close(weight.grad, grad_weight / 4.0)


def test_roles_none_gives_zero_stats_and_same_loss():
    inputs = make_inputs(10, 8, 20, seed=6)
    got = ours(*inputs[:4], None, compile=False)
    expected = naive(*inputs)
    torch.testing.assert_close(got[0], expected[0])
    assert got[1].abs().sum().item() == 0.0 and got[2].sum().item() == 0


@pytest.mark.parametrize("compile", [False, True])
def test_golden_values_with_uniform_logits(compile):
    # zero hidden states give uniform logits: nll = lse = log(V), p = 1/V for every token
    vocab_size = 50
    hidden = torch.zeros(4, 8, requires_grad=True)
    weight = torch.randn(vocab_size, 8, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, -100])
    token_weights = torch.tensor([0.5, 1.0, 2.0, 9.0])
    log_v = torch.log(torch.tensor(float(vocab_size)))
    from loss import weighted_linear_cross_entropy
    cases = [({}, 3.5 * log_v),
             ({"z_loss": 0.1, "dft": True}, 3.5 * log_v / vocab_size + 0.1 * 3.5 * log_v ** 2)]
    if not compile:  # the compiled path reuses the two kernels the other compiled tests build
        cases += [({"dft": True}, 3.5 * log_v / vocab_size),
                  ({"z_loss": 0.1}, 3.5 * log_v + 0.1 * 3.5 * log_v ** 2)]
    for options, expected in cases:
        loss_sum, _, _ = weighted_linear_cross_entropy(hidden, weight, targets, token_weights,
                                                       compile=compile, **options)
        torch.testing.assert_close(loss_sum, expected)


def test_kept_tokens_padded_to_a_multiple_of_32_with_zero_weight(monkeypatch):
    # 45 tokens, 37 kept: the chunk math sees 64 rows (27 repeats of the last kept token at weight
    # 0, so the last chunk's matmuls come in few shapes); loss, stats and gradients stay the naive ones
    import loss.linear_cross_entropy as lce
    seen = []
    real = lce._chunked_forward_backward

    def spy(hidden, weight, targets, token_weights, *rest):
        seen.append((hidden.shape[0], token_weights.clone()))
        return real(hidden, weight, targets, token_weights, *rest)
    monkeypatch.setattr(lce, "_chunked_forward_backward", spy)
    inputs = make_inputs(45, 16, 50, seed=7, zero_fraction=0.0, ignore_fraction=0.0)
    token_weights = inputs[3].clone()
    token_weights[[0, 5, 9, 20, 21, 30, 31, 44]] = 0.0
    inputs = (*inputs[:3], token_weights, inputs[4])
    got = ours(*inputs, chunk_size=16, compile=False)
    assert_matches(got, naive(*inputs))
    (rows, weights), = seen
    assert rows == 64 and torch.equal(weights[:37], token_weights[token_weights != 0])
    assert not weights[37:].any()
    assert got[2].sum().item() == 37
