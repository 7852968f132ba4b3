"""Training-side behaviour: from-scratch init, gradient checkpointing, parameter and FLOP counts."""
import pytest
import torch
import transformers
from torch.testing import assert_close

from model import Decoder, ModelConfig, save_pretrained


def _config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                intermediate_size=48, architecture="Qwen2ForCausalLM", qkv_bias=True, tie_word_embeddings=True)
    return ModelConfig(**{**base, **kw})


def test_init_weights_is_deterministic_and_follows_the_recipe():
    a, b, c = Decoder(_config()), Decoder(_config()), Decoder(_config())
    a.init_weights(seed=7)
    b.init_weights(seed=7)
    c.init_weights(seed=8)
    for (name, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pb), name
        if name.endswith("norm.weight"):
            assert torch.equal(pa, torch.ones_like(pa)), name
        elif name.endswith(".bias"):
            assert torch.equal(pa, torch.zeros_like(pa)), name
        else:
            assert not torch.equal(pa, pc), name
    assert abs(a.embed.weight.std().item() - 0.02) < 0.002


def test_init_weights_works_on_a_meta_model():
    with torch.device("meta"):
        model = Decoder(_config())
    model.init_weights(seed=0)
    assert not any(p.is_meta for p in model.parameters())
    assert torch.isfinite(model(torch.zeros(1, 3, dtype=torch.long))).all()


def test_from_scratch_model_saves_for_transformers(tmp_path):
    model = Decoder(_config(architecture="SmolLM3ForCausalLM", qkv_bias=False, nope_layers=(1,)))
    model.init_weights(seed=1)
    save_pretrained(model, tmp_path / "scratch")
    hf = transformers.SmolLM3ForCausalLM.from_pretrained(tmp_path / "scratch").eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = Decoder(_config(tie_word_embeddings=False))
    model.init_weights(seed=3)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    segments = torch.tensor([[1] * 7 + [2] * 5, [1] * 12], dtype=torch.int32)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        model.train()
        model(ids, segment_ids=segments).float().pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert_close(grads[1][name], grads[0][name], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("tied", [True, False])
def test_param_and_flop_counts(tied):
    model = Decoder(_config(tie_word_embeddings=tied))
    attn = 32 * (4 + 2 + 2) * 8 + (4 + 2 + 2) * 8 + 4 * 8 * 32  # qkv weight, qkv bias, o
    mlp = 3 * 32 * 48
    per_layer = attn + mlp + 2 * 32
    embed = 64 * 32
    expected = embed * (1 if tied else 2) + 2 * per_layer + 32
    assert model.num_params() == expected
    # the output projection is a matmul either way; an untied input embedding is only a lookup
    matmul = expected - (0 if tied else embed)
    assert model.flops_per_token(100) == 6 * matmul + 12 * 2 * 4 * 8 * 100


@pytest.mark.parametrize("tied", [True, False])
def test_resize_vocab_keeps_old_outputs_and_adds_mean_rows(tied):
    cfg = ModelConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, tie_word_embeddings=tied)
    model = Decoder(cfg)
    model.init_weights(0)
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(ids)
    old_embed = model.embed.weight.detach().clone()
    model.resize_vocab(54)
    after = model(ids)
    assert model.config.vocab_size == 54 and after.shape == (2, 7, 54)
    assert model.embed.weight.shape == (54, 32) and model.output_weight.shape == (54, 32)
    torch.testing.assert_close(after[..., :50], before, rtol=0, atol=0)
    torch.testing.assert_close(model.embed.weight[:50], old_embed, rtol=0, atol=0)
    for row in range(50, 54):
        torch.testing.assert_close(model.embed.weight[row], old_embed.mean(0))
    assert (model.output_weight is model.embed.weight) == tied
    assert model.embed.weight.requires_grad
    with pytest.raises(ValueError, match="only grows"):
        model.resize_vocab(10)


SMALL = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    head_dim=8, intermediate_size=48)


def loss_and_grads(setup, seed, autocast=False):
    """A training forward/backward of a fresh SMALL model (init seed 3) after setup(model):
    [loss, every parameter's gradient]."""
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(seed))
    model = Decoder(SMALL)
    model.init_weights(3)
    setup(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(ids).float().logsumexp(-1).mean()
    loss.backward()
    return [loss.detach()] + [p.grad for p in model.parameters()]


@pytest.mark.parametrize("autocast", [False, True])
def test_recompute_elementwise_gives_bit_identical_gradients(autocast):
    def no_recompute(model):
        model.recompute_elementwise = False
    saved = loss_and_grads(no_recompute, seed=1, autocast=autocast)
    recomputed = loss_and_grads(lambda model: None, seed=1, autocast=autocast)
    for a, b in zip(saved, recomputed):
        assert torch.equal(a, b)


def test_compiled_blocks_match_eager_in_training():
    # regional torch.compile (train.py compile = true) with the norm/SwiGLU recompute inside the
    # compiled blocks: same loss and gradients as eager, to fp32 rounding
    eager = loss_and_grads(lambda model: None, seed=2)
    compiled = loss_and_grads(lambda model: model.compile_blocks(), seed=2)
    for a, b in zip(eager, compiled):
        assert_close(a, b, rtol=1e-5, atol=1e-6)
