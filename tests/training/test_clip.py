"""clip_grad_norm: torch.nn.utils.clip_grad_norm_'s numbers, to the bit, with the multiply skipped
when nothing is clipped."""
import math

import pytest
import torch

from training.distributed import clip_grad_norm


def params_with_grads(scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(shape)) for shape in ((64, 33), (33,), (7, 5, 3), (1,))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * scale
    return params


@pytest.mark.parametrize("scale", [1.0, 1e-3, 0.0])  # clipped (norm ~ 46), not clipped, all zero
def test_same_norm_and_gradients_as_torch(scale):
    ours, theirs = params_with_grads(scale), params_with_grads(scale)
    norm = clip_grad_norm(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert norm == expected.item()
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad, b.grad)
    assert (norm > 1.0) == (scale == 1.0)


def test_unclipped_gradients_are_not_rewritten(monkeypatch):
    params = params_with_grads(1e-3)
    monkeypatch.setattr(torch, "_foreach_mul_", lambda *a: pytest.fail("multiplied by 1.0"))
    assert clip_grad_norm(params, 1.0) < 1.0


def test_non_finite_gradients_as_torch():
    ours, theirs = params_with_grads(1.0), params_with_grads(1.0)
    ours[0].grad[0, 0] = theirs[0].grad[0, 0] = float("inf")
    norm = clip_grad_norm(ours, 1.0)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert math.isinf(norm) and math.isinf(expected.item())
    for a, b in zip(ours, theirs):
        assert torch.equal(a.grad.nan_to_num(), b.grad.nan_to_num())


def test_parameters_without_gradients_are_skipped():
    params = params_with_grads(1.0) + [torch.nn.Parameter(torch.ones(3))]
    theirs = params_with_grads(1.0) + [torch.nn.Parameter(torch.ones(3))]
    assert clip_grad_norm(iter(params), 0.5) == torch.nn.utils.clip_grad_norm_(theirs, 0.5).item()
    assert params[-1].grad is None
