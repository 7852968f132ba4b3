"""model/packed.py: prepacked oneDNN weights give the plain model's outputs, and leave it untouched."""
import pytest
import torch
import torch.nn as nn

from model import load_pretrained
from model.packed import available, packed_linears

pytestmark = pytest.mark.skipif(not available(torch.device("cpu"), torch.bfloat16),
                                reason="oneDNN bf16 packing is not available on this CPU build")

IDS = torch.tensor([[5, 9, 17, 33, 4, 60, 2, 71], [7, 8, 11, 12, 13, 90, 14, 3]])


def logits_plain_and_packed(model, autocast_dtype=None):
    """Prefill and one cached decode step, once plainly and once inside packed_linears."""
    def run(packed):
        cache = model.new_cache(2, 12)
        ctx = torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with torch.inference_mode(), ctx:
            if packed:
                with packed_linears(model, autocast_dtype) as output:
                    h = model(IDS, cache=cache, return_hidden=True)
                    h2 = model(IDS[:, :1], cache=cache, return_hidden=True)
                    return output(h), output(h2)
            h = model(IDS, cache=cache, return_hidden=True)
            h2 = model(IDS[:, :1], cache=cache, return_hidden=True)
            out = lambda x: nn.functional.linear(x, model.output_weight)  # noqa: E731
            return out(h), out(h2)
    return run(False), run(True)


@pytest.mark.parametrize("case, weights, autocast", [
    ("llama_gqa_untied", torch.bfloat16, None),
    ("qwen2_qkv_bias_tied", torch.bfloat16, None),
    ("llama3_scaling_bias_head_dim", torch.bfloat16, None),
    # fp32 weights under bf16 autocast: packed in bf16 once, as autocast casts them per call
    ("qwen2_qkv_bias_tied", torch.float32, torch.bfloat16),
])
def test_bf16_packed_is_bit_identical(hf_checkpoint, case, weights, autocast):
    _, path = hf_checkpoint(case)
    model = load_pretrained(path, dtype=weights).eval()
    plain, packed = logits_plain_and_packed(model, autocast)
    for a, b in zip(plain, packed):
        assert a.dtype == b.dtype == torch.bfloat16
        assert torch.equal(a, b)


def test_fp32_packed_matches_to_rounding(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa_untied")
    model = load_pretrained(path, dtype=torch.float32).eval()
    plain, packed = logits_plain_and_packed(model)
    for a, b in zip(plain, packed):
        assert b.dtype == torch.float32
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_model_is_restored_even_after_an_error(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa_untied")
    model = load_pretrained(path, dtype=torch.bfloat16).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with pytest.raises(RuntimeError, match="boom"):
        with torch.inference_mode(), packed_linears(model):
            assert all("forward" in vars(m) for m in linears if m is not model.lm_head)
            raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in linears)
    # and the model still trains afterwards (plain nn.Linear, autograd through the weights)
    model(IDS).float().sum().backward()
    assert model.layers[0].attn.qkv.weight.grad is not None


def test_compiled_blocks_fall_back_to_the_plain_model(hf_checkpoint):
    _, path = hf_checkpoint("llama_gqa_untied")
    model = load_pretrained(path, dtype=torch.bfloat16).eval().compile_blocks()
    with torch.inference_mode(), packed_linears(model) as output:
        assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, nn.Linear))
        h = torch.randn(3, model.config.hidden_size, dtype=torch.bfloat16)
        assert torch.equal(output(h), nn.functional.linear(h, model.output_weight))


def test_generate_with_and_without_packing(hf_checkpoint):
    from eval.generate import generate
    _, path = hf_checkpoint("qwen2_qkv_bias_tied")
    model = load_pretrained(path, dtype=torch.bfloat16)
    prompts = [[5, 9, 17, 33, 4], [7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
    packed = generate(model, prompts, 8, eos_ids=[], batch_size=3)
    plain = generate(model, prompts, 8, eos_ids=[], batch_size=3, pack_weights=False)
    assert packed == plain
