"""Shared builders and comparisons for the loss tests."""
import torch

from loss import weighted_linear_cross_entropy
from loss.reference import naive_weighted_cross_entropy


def make_inputs(num_tokens, hidden_size, vocab_size, seed=0, dtype=torch.float32,
                zero_fraction=0.3, ignore_fraction=0.1, num_roles=4):
    """Random hidden, weight, targets (some -100), weights in [0, 3) with some exact zeros, roles."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(num_tokens, hidden_size, generator=gen).to(dtype)
    weight = (torch.randn(vocab_size, hidden_size, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, vocab_size, (num_tokens,), generator=gen)
    targets[torch.rand(num_tokens, generator=gen) < ignore_fraction] = -100
    token_weights = torch.rand(num_tokens, generator=gen) * 3.0
    token_weights[torch.rand(num_tokens, generator=gen) < zero_fraction] = 0.0
    roles = torch.randint(0, num_roles, (num_tokens,), generator=gen)
    return hidden, weight, targets, token_weights, roles


def run_with_grads(loss_fn, hidden, weight, targets, token_weights, roles, **options):
    """(loss_sum, role_nll_sum, role_count, grad_hidden, grad_weight) for fresh leaf copies."""
    hidden = hidden.detach().clone().requires_grad_(True)
    weight = weight.detach().clone().requires_grad_(True)
    loss_sum, role_nll_sum, role_count = loss_fn(hidden, weight, targets, token_weights, roles,
                                                 **options)
    loss_sum.backward()
    return loss_sum.detach(), role_nll_sum, role_count, hidden.grad, weight.grad


def ours(*args, **options):
    return run_with_grads(weighted_linear_cross_entropy, *args, **options)


def naive(*args, **options):
    options = {k: v for k, v in options.items() if k not in ("chunk_size", "compile")}
    return run_with_grads(naive_weighted_cross_entropy, *args, **options)


def assert_matches(got, expected, rtol=1e-5, atol=1e-5):
    names = ("loss_sum", "role_nll_sum", "role_count", "grad_hidden", "grad_weight")
    for name, a, b in zip(names, got, expected):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()
