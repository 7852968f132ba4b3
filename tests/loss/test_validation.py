"""Bad inputs raise errors that name the tensor at fault."""
import pytest
import torch

from loss import weighted_linear_cross_entropy
from loss_helpers import make_inputs


def call(hidden, weight, targets, token_weights, roles=None, **options):
    return weighted_linear_cross_entropy(hidden, weight, targets, token_weights, roles,
                                         compile=False, **options)


def test_shape_and_dtype_errors_name_the_tensor():
    hidden, weight, targets, token_weights, roles = make_inputs(6, 8, 20)
    with pytest.raises(ValueError, match="hidden"):
        call(hidden[None], weight, targets, token_weights)
    with pytest.raises(ValueError, match="output_weight"):
        call(hidden, weight[:, :4], targets, token_weights)
    with pytest.raises(ValueError, match="targets"):
        call(hidden, weight, targets[:5], token_weights)
    with pytest.raises(ValueError, match="targets"):
        call(hidden, weight, targets.float(), token_weights)
    with pytest.raises(ValueError, match="token_weights"):
        call(hidden, weight, targets, token_weights.long())
    with pytest.raises(ValueError, match="roles"):
        call(hidden, weight, targets, token_weights, roles[:3])
    with pytest.raises(ValueError, match="output_weight is torch.bfloat16"):
        call(hidden, weight.bfloat16(), targets, token_weights)
    with pytest.raises(ValueError, match="chunk_size"):
        call(hidden, weight, targets, token_weights, chunk_size=0)


def test_value_errors_name_the_tensor():
    hidden, weight, targets, token_weights, roles = make_inputs(6, 8, 20, ignore_fraction=0,
                                                                zero_fraction=0)
    with pytest.raises(ValueError, match="targets: must lie in"):
        call(hidden, weight, torch.full((6,), 20), token_weights)
    with pytest.raises(ValueError, match="token_weights: must be finite"):
        call(hidden, weight, targets, -token_weights)
    with pytest.raises(ValueError, match="roles: values must lie"):
        call(hidden, weight, targets, token_weights, torch.full((6,), 4))


def test_out_of_range_values_on_dropped_tokens_are_fine():
    hidden, weight, targets, token_weights, roles = make_inputs(6, 8, 20, zero_fraction=0)
    token_weights[0] = 0.0
    targets[0] = 999
    roles[0] = 3 + 100
    loss_sum, _, _ = call(hidden, weight, targets, token_weights, roles)
    assert torch.isfinite(loss_sum)


def test_second_backward_is_a_clear_error():
    hidden, weight, targets, token_weights, _ = make_inputs(6, 8, 20)
    hidden.requires_grad_(True)
    loss_sum, _, _ = call(hidden, weight, targets, token_weights)
    loss_sum.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss_sum.backward()


def test_no_grad_returns_loss_without_gradient_buffers():
    hidden, weight, targets, token_weights, roles = make_inputs(6, 8, 20)
    with torch.no_grad():
        loss_sum, role_nll_sum, _ = call(hidden.requires_grad_(True), weight, targets,
                                         token_weights, roles)
    assert loss_sum.grad_fn is None and torch.isfinite(loss_sum)
