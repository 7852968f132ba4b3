"""Decoder.forward(rows=...): the last layer runs queries, attention and MLP only for the selected
positions; the outputs there and every gradient equal those of the full forward."""
import pytest
import torch
from torch.testing import assert_close

from model import Decoder, ModelConfig, load_pretrained
from tests.model.conftest import CASES

B, T = 3, 20
IDS = torch.randint(0, 96, (B, T), generator=torch.Generator().manual_seed(5))
# three packed layouts: two examples, one, three (positions restart in each segment)
SEGMENTS = torch.tensor([[1] * 8 + [2] * 12, [1] * 20, [1] * 5 + [2] * 5 + [3] * 10])
POSITIONS = torch.stack([torch.cat([torch.arange(8), torch.arange(12)]), torch.arange(20),
                         torch.cat([torch.arange(5), torch.arange(5), torch.arange(10)])])
# uneven per row (4, 2, 7 rows), first and last positions included, one row's at a segment start
ROWS = torch.tensor([2, 7, 15, 19, 20 + 0, 20 + 19, 40 + 4, 40 + 5, 40 + 9, 40 + 10, 40 + 11, 40 + 12, 40 + 18])


def outputs_and_grads(model, rows, segments, autocast=False):
    """Logits at ROWS (from the full forward when rows is None) and every parameter's gradient of
    a fixed random projection of them."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(IDS, positions=POSITIONS, segment_ids=segments, rows=rows)
    out = out.flatten(0, 1)[ROWS] if rows is None else out
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * probe).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("segmented", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_selected_rows_match_the_full_forward(hf_checkpoint, case, segmented):
    _, path = hf_checkpoint(case)
    model = load_pretrained(path, dtype=torch.float32).train()
    segments = SEGMENTS if segmented else None
    full, full_grads = outputs_and_grads(model, None, segments)
    selected, grads = outputs_and_grads(model, ROWS, segments)
    assert selected.shape == (len(ROWS), model.config.vocab_size)
    # the same arithmetic on the same values, in matmuls of other shapes: fp32 rounding differs
    # with the shapes and the thread count (3e-5 seen on one thread); a drifted path is off by far more
    assert_close(selected, full, rtol=1e-4, atol=1e-4)
    for name, grad in full_grads.items():
        assert_close(grads[name], grad, rtol=1e-4, atol=1e-4, msg=lambda m: f"{case} {name}: {m}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_selected_rows_match_the_full_forward_in_bf16(hf_checkpoint, case):
    # bf16 autocast, as training runs: every family's q/k norms, RoPE, GQA and biases on the rows
    _, path = hf_checkpoint(case)
    model = load_pretrained(path, dtype=torch.float32).train()
    full, full_grads = outputs_and_grads(model, None, SEGMENTS, autocast=True)
    selected, grads = outputs_and_grads(model, ROWS, SEGMENTS, autocast=True)
    assert selected.dtype == torch.bfloat16 and selected.shape == full.shape
    # matmuls of other shapes may round differently in bf16; a path that drifted (a norm, RoPE or
    # head layout of its own) is off by far more than that
    for name, a, b in [("logits", selected, full)] + [(n, grads[n], g) for n, g in full_grads.items()]:
        error = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert error < 1e-2, f"{case} {name}: relative error {error:.3g}"


def _small_model(**kw):
    config = ModelConfig(vocab_size=96, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                         head_dim=8, intermediate_size=48, **kw)
    model = Decoder(config)
    model.init_weights(3)
    return model.train()


@pytest.mark.parametrize("setup", ["recompute_off", "gradient_checkpointing", "compiled", "autocast"])
def test_selected_rows_in_every_training_mode(setup):
    model = _small_model()
    autocast = setup == "autocast"
    if setup == "recompute_off":
        model.recompute_elementwise = False
    elif setup == "gradient_checkpointing":
        model.gradient_checkpointing = True
    full, full_grads = outputs_and_grads(model, None, SEGMENTS, autocast)
    if setup == "compiled":
        model.compile_blocks()
    selected, grads = outputs_and_grads(model, ROWS, SEGMENTS, autocast)
    if not autocast:
        assert_close(selected, full, rtol=1e-4, atol=1e-5)
        for name, grad in full_grads.items():
            assert_close(grads[name], grad, rtol=1e-4, atol=1e-5, msg=lambda m: f"{setup} {name}: {m}")
        return
    # bf16: matmuls of other shapes round differently, elementwise differences reach a few bf16
    # ulps; compare each tensor as a whole
    for name, a, b in [("logits", selected, full)] + [(n, grads[n], g) for n, g in full_grads.items()]:
        error = ((a.float() - b.float()).norm() / b.float().norm()).item()
        assert error < 1e-2, f"{name}: relative error {error:.3g}"


def test_one_selected_row_is_that_rows_output_alone():
    # only row 0's last position selected: the other batch rows play no part in it
    model = _small_model()
    rows = torch.tensor([T - 1])
    out = model(IDS, rows=rows)
    assert out.shape == (1, 96)
    alone = model(IDS[:1])[0, -1]
    assert_close(out[0], alone, rtol=1e-5, atol=1e-5)


def test_rows_with_a_cache_is_an_error():
    model = _small_model().eval()
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="rows"):
        model(IDS[:1, :4], cache=cache, rows=torch.tensor([1]))


@pytest.mark.parametrize("rows", [torch.tensor([3, 1]), torch.tensor([1, 1]), torch.tensor([-1]),
                                  torch.tensor([B * T]), torch.tensor([[1]]), torch.tensor([1.0])])
def test_bad_rows_are_an_error_naming_them(rows):
    # unsorted or repeated rows would put two queries in one slot: refuse, never compute garbage
    with pytest.raises(ValueError, match="rows: expected"):
        _small_model()(IDS, rows=rows)


def test_row_count_is_padded_and_the_surplus_dropped():
    from model.decoder import RowSelection, padded_count
    # a multiple of 32, or of 2 ** (bit_length - 6) above 2048 rows: at most 31 rows or ~3% more
    assert [padded_count(n) for n in (0, 1, 13, 32, 33, 1100, 2047, 2049, 5000)] == \
        [0, 32, 32, 32, 64, 1120, 2048, 2112, 5120]
    select = RowSelection.build(ROWS, SEGMENTS, B, T)
    assert select.n == 13 and select.rows.shape == select.slots.shape == (32,)
    assert torch.equal(select.rows[:13], ROWS) and (select.rows[13:] == ROWS[-1]).all()
    assert (select.slots[13:] == select.slots[12]).all()
    model = _small_model()
    assert model(IDS, rows=ROWS).shape == (13, model.config.vocab_size)
