"""The training step's CPU shortcuts against the paths they replace: attention on short rows as
fp32 math instead of the flash kernel, and the tied embedding's gradient as the touched rows added
into the output layer's."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import model.decoder as decoder
from loss import weighted_linear_cross_entropy
from loss.reference import naive_weighted_cross_entropy
from model import Decoder, ModelConfig
from model.decoder import math_attention

CONFIG = dict(vocab_size=512, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
              intermediate_size=48, tie_word_embeddings=True)


def train_grads(dtype=torch.float32, autocast=True, rows=False, seed=0, **config):
    """Loss and every parameter's gradient of one training forward/backward (the fused loss,
    bf16 autocast as train.py), on a fresh model (init seed 3) in dtype."""
    model = Decoder(ModelConfig(**{**CONFIG, **config}))
    model.init_weights(3)
    model.to(dtype).train()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=gen)
    targets = torch.randint(0, model.config.vocab_size, (36,), generator=gen)
    weights = torch.ones(36, dtype=torch.float32)
    weights[::3] = 0.0
    selected = torch.nonzero(weights).squeeze(1) if rows else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden, output_weight = model(ids, return_hidden=True, rows=selected, return_output_weight=True)
        if selected is None:
            hidden = hidden.flatten(0, 1)
        else:
            targets, weights = targets[selected], weights[selected]
        if dtype == torch.float64:  # the exact reference: materialised logits
            loss = naive_weighted_cross_entropy(hidden, output_weight, targets, weights)[0]
        else:
            loss = weighted_linear_cross_entropy(hidden, output_weight, targets, weights,
                                                 compile=False)[0]
    loss.backward()
    return [loss.detach().double()] + [p.grad.double() for p in model.parameters()]


def max_error(got, exact):
    return max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(got, exact))


@pytest.mark.parametrize("rows", [False, True])
def test_math_attention_is_at_least_as_exact_as_flash(rows, monkeypatch):
    exact = train_grads(torch.float64, autocast=False, rows=rows)
    math = train_grads(rows=rows)
    monkeypatch.setattr(decoder, "MATH_ATTENTION_MAX_KEYS", 0)  # the flash kernel, as before
    flash = train_grads(rows=rows)
    assert any(not torch.equal(a, b) for a, b in zip(math, flash))  # two different kernels ran
    print(f"max relative error vs fp64: math {max_error(math, exact):.2e}, flash {max_error(flash, exact):.2e}, "
          f"math vs flash {max_error(math, flash):.2e}")
    assert max_error(math, flash) < 0.05  # bf16 autocast both: the same gradients to bf16 noise
    assert max_error(math, exact) <= 1.25 * max_error(flash, exact)  # bf16 elsewhere dominates


@pytest.mark.parametrize("T,D", [(20, 16), (76, 64)])
@pytest.mark.parametrize("case", ["causal", "causal_gqa", "mask_gqa"])
def test_math_attention_is_about_as_exact_as_flash(case, T, D):
    """bf16 inputs: math_attention's bf16 matmuls (scores rounded to bf16, fp32 softmax) against
    the flash kernel's fp32 scores, both against fp64: the same size of error (measured on these
    six cases: 0.71-1.28x flash's; below it at T = 76, D = 64, the default run's rows)."""
    gen = torch.Generator().manual_seed(7)
    B, H = 3, 4
    kv_heads = 2 if case.endswith("gqa") else 4
    q = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(B, kv_heads, T, D, generator=gen, dtype=torch.float64) for _ in range(2))
    grad = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64)
    mask, causal = None, True
    if case == "mask_gqa":  # two segments per row, as packed rows
        seg = (torch.arange(T) >= 8).long().expand(B, T)
        mask = ((torch.arange(T)[None, :] <= torch.arange(T)[:, None]) & (seg[:, :, None] == seg[:, None, :]))[:, None]
        mask, causal = mask.expand(B, 1, T, T), False
    results = {}
    for name, dtype in (("exact", torch.float64), ("math", torch.bfloat16), ("flash", torch.bfloat16)):
        inputs = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v)]
        if name == "flash":
            kk, vv = inputs[1:]
            if mask is not None and kv_heads != H:  # as Attention.forward: the fused kernels take one of the two
                kk, vv = kk.repeat_interleave(H // kv_heads, 1), vv.repeat_interleave(H // kv_heads, 1)
            out = torch.nn.functional.scaled_dot_product_attention(
                inputs[0], kk, vv, attn_mask=mask, is_causal=causal, enable_gqa=kv_heads != H and mask is None)
        else:
            out = decoder.math_attention(*inputs, mask, causal)
        out.backward(grad.to(dtype))
        results[name] = [out.detach().double()] + [t.grad.double() for t in inputs]
    math_error = max_error(results["math"], results["exact"])
    flash_error = max_error(results["flash"], results["exact"])
    print(f"max relative error vs fp64: math {math_error:.2e}, flash {flash_error:.2e}")
    assert math_error < 1.2e-2 and math_error <= 2 * flash_error


@pytest.mark.parametrize("bias", ["causal", "batched"])
def test_math_attention_backward_matches_finite_differences(bias):
    """MathAttention's hand-written backward in fp64 against numerical derivatives (gradcheck),
    with a causal [rows, keys] bias and a per-batch one with whole masked blocks."""
    gen = torch.Generator().manual_seed(9)
    q = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    if bias == "causal":
        allowed = torch.ones(3, 5, dtype=torch.bool).tril().repeat(2, 1)  # two query heads per kv head
    else:
        allowed = torch.rand(2, 6, 5, generator=gen) < 0.6
        allowed[:, :, 0] = True  # every row sees a key
    additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill_(~allowed, float("-inf"))
    assert torch.autograd.gradcheck(lambda q, k, v: decoder.MathAttention.apply(q, k, v, additive, 0.7), (q, k, v))


def test_attention_bias_is_built_once_per_mask_and_again_when_it_changes():
    cpu, shape = torch.device("cpu"), (2, 1, 2, 5, 5)  # B, kv heads, groups, T, S
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    first = decoder._attention_bias(mask, False, shape, torch.bfloat16, cpu)
    assert decoder._attention_bias(mask, False, shape, torch.bfloat16, cpu) is first  # the next layer
    assert decoder._attention_bias(mask.clone(), False, shape, torch.bfloat16, cpu) is not first
    mask[1, 0, 4, 2] = False  # changed in place: built again
    bias = decoder._attention_bias(mask, False, shape, torch.bfloat16, cpu)
    assert bias is not first and bias.shape == (2, 10, 5)
    expected = torch.zeros(2, 5, 5).masked_fill_(~mask[:, 0], float("-inf")).repeat(1, 2, 1)
    assert torch.equal(bias.float(), expected)  # both query heads of the kv group, each row's mask
    causal = decoder._attention_bias(None, True, shape, torch.bfloat16, cpu)
    assert torch.equal(causal.float(), torch.zeros(5, 5).masked_fill_(~torch.ones(5, 5, dtype=torch.bool).tril(),
                                                                        float("-inf")).repeat(2, 1))
    assert decoder._attention_bias(None, True, shape, torch.float32, cpu).dtype == torch.float32


def test_math_attention_in_fp32_is_exact_to_fp32_rounding():
    gen = torch.Generator().manual_seed(8)
    q = torch.randn(2, 4, 30, 16, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(2, 2, 30, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    exact = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    got = decoder.math_attention(q.float(), k.float(), v.float(), None, True)
    assert got.dtype == torch.float32
    assert_close(got.double(), exact, rtol=0, atol=2e-6)


@pytest.mark.parametrize("T,expected", [(256, "math"), (257, "flash")])
def test_training_attention_runs_math_up_to_256_keys(T, expected, monkeypatch):
    calls = []
    monkeypatch.setattr(decoder, "math_attention", lambda *a: calls.append(a) or math_attention(*a))
    model = Decoder(ModelConfig(**{**CONFIG, "num_layers": 1}))
    model.init_weights(3)
    ids = torch.randint(0, 512, (1, T), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids).float().sum().backward()
    assert ("math" if calls else "flash") == expected
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_attention_outside_training_keeps_the_fused_kernel(monkeypatch):
    model = Decoder(ModelConfig(**CONFIG))
    model.init_weights(3)
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids)
    monkeypatch.setattr(decoder, "MATH_ATTENTION_MAX_KEYS", 0)
    with torch.no_grad():
        assert torch.equal(model(ids), before)


@pytest.mark.parametrize("rows", [False, True])
def test_tied_lookup_gradient_matches_the_dense_one(rows, monkeypatch):
    assert Decoder(ModelConfig(**CONFIG))._tied_lookup(torch.zeros(3, 12, dtype=torch.long))  # 36 tokens, 512 rows
    tied = train_grads(rows=rows)
    monkeypatch.setattr(Decoder, "_tied_lookup", lambda self, ids: False)
    dense = train_grads(rows=rows)
    for a, b in zip(tied, dense):
        assert_close(a, b, rtol=1e-6, atol=1e-7)  # fp32 sums in another order


def tied_weight_grad(lookup, use, seed=0, vocab=300, hidden=16):
    """The gradient of a tied weight W [vocab, hidden] from a lookup of 40 ids (some repeated) and
    an output layer: lookup "tied" (TiedLookup, the output layer on the weight it passes on) or
    "sparse" (F.embedding(sparse=True), the output layer on W). use: "loss" (the fused loss),
    "logits" (F.linear and a sum), "twice" (both), "none" (no output layer)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.nn.Parameter(torch.randn(vocab, hidden, generator=gen))
    ids = torch.randint(0, vocab // 4, (4, 10), generator=gen)
    targets = torch.randint(0, vocab, (40,), generator=gen)
    if lookup == "tied":
        x, out_w = decoder.TiedLookup.apply(W, ids)
    else:
        x, out_w = F.embedding(ids, W, sparse=True), W
    h = torch.tanh(x.flatten(0, 1) * 1.5)  # a lookup gradient that is not all ones
    loss = (h * h).sum() * 0.1
    if use in ("loss", "twice"):
        loss = loss + weighted_linear_cross_entropy(h, out_w, targets, torch.ones(40), compile=False)[0]
    if use in ("logits", "twice"):
        loss = loss + F.linear(h[:5], out_w).pow(2).sum() * 0.01
    seen = []
    W.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    loss.backward()
    assert len(seen) == 1 and torch.equal(seen[0], W.grad)  # the hook (DDP's reducer) sees the whole sum
    assert W.grad.layout == torch.strided
    return W.grad


@pytest.mark.parametrize("use", ["loss", "logits", "twice"])
def test_tied_lookup_gives_the_sparse_lookups_gradient_to_the_bit(use):
    assert torch.equal(tied_weight_grad("tied", use), tied_weight_grad("sparse", use))


def test_tied_lookup_without_an_output_layer_gives_the_dense_lookup_gradient():
    gen = torch.Generator().manual_seed(1)
    W = torch.nn.Parameter(torch.randn(50, 8, generator=gen))
    ids = torch.randint(0, 10, (3, 7), generator=gen)
    x, _ = decoder.TiedLookup.apply(W, ids)
    (x * torch.arange(8.0)).sum().backward()
    assert torch.equal(W.grad, torch.zeros(50, 8).index_add_(0, ids.flatten(), torch.arange(8.0).expand(21, 8)))


def test_tied_lookup_adds_into_the_losss_gradient_in_place():
    """The output layer's [V, H] gradient from the loss becomes the weight's .grad with the lookup
    rows added, in the same memory: no [V, H] copy (autograd's sparse + dense sum makes one)."""
    model = Decoder(ModelConfig(**CONFIG))
    model.init_weights(3)
    ids = torch.randint(0, 512, (3, 12), generator=torch.Generator().manual_seed(2))
    hidden, output_weight = model(ids, return_hidden=True, return_output_weight=True)
    loss_grad = []
    output_weight.register_hook(lambda g: loss_grad.append(g.data_ptr()))
    loss = weighted_linear_cross_entropy(hidden.flatten(0, 1), output_weight, ids.flatten(), torch.ones(36),
                                         compile=False)[0]
    loss.backward()
    assert loss_grad == [model.embed.weight.grad.data_ptr()]
    # a plain forward (no grad, or the logits) is unchanged: the lookup passes the weight itself on
    with torch.no_grad():
        assert model(ids, return_output_weight=True)[1] is model.embed.weight


def test_embedding_gradient_stays_dense_for_the_optimizer():
    # untied, or more tokens than half the vocabulary: the dense lookup gradient
    untied = Decoder(ModelConfig(**{**CONFIG, "tie_word_embeddings": False}))
    assert not untied._tied_lookup(torch.zeros(3, 12, dtype=torch.long))
    assert not Decoder(ModelConfig(**CONFIG))._tied_lookup(torch.zeros(16, 20, dtype=torch.long))
    for ids_shape in ((3, 12), (16, 20)):  # the tied lookup, then the dense one
        model = Decoder(ModelConfig(**CONFIG))
        model.init_weights(3)
        ids = torch.randint(0, 512, ids_shape, generator=torch.Generator().manual_seed(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden, output_weight = model(ids, return_hidden=True, return_output_weight=True)
            loss, _, _ = weighted_linear_cross_entropy(hidden.flatten(0, 1), output_weight, ids.flatten(),
                                                       torch.ones(ids.numel()), compile=False)
        loss.backward()
        assert model.embed.weight.grad.layout == torch.strided
        torch.optim.AdamW(model.parameters(), fused=True).step()  # fused AdamW takes dense gradients only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_function_gives_autograds_gradient_to_the_bit(dtype):
    gate_up = torch.randn(3, 7, 2 * 24, generator=torch.Generator().manual_seed(4)).to(dtype)
    grad = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(5)).to(dtype)
    results = []
    for fn in (decoder.swiglu, decoder.SwiGLU.apply):
        x = gate_up.clone().requires_grad_()
        out = fn(x)
        out.backward(grad)
        results.append((out.detach(), x.grad))
    (out_a, grad_a), (out_b, grad_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(grad_a, grad_b)


def test_recompute_still_keeps_only_the_inputs_of_the_product():
    # SwiGLU saves gate|up alone, as the checkpointed swiglu did: no silu output kept for backward
    saved = []
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        decoder.SwiGLU.apply(x)
    assert saved == [torch.Size([4, 16])]


@pytest.mark.parametrize("shape", [(3, 7, 32), (5, 32)])
def test_rms_norm_function_matches_autograds_chain(shape):
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = 1 + 0.1 * torch.randn(shape[-1], generator=gen, dtype=torch.float64)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    norm = decoder.RMSNorm(shape[-1], 1e-5)
    results = {}
    for name, dtype in (("exact", torch.float64), ("plain", torch.float32), ("function", torch.float32)):
        xx = x.to(dtype, copy=True).requires_grad_()
        norm.weight = torch.nn.Parameter(weight.to(dtype, copy=True))
        if name == "function":
            out = norm(xx)
            assert out.grad_fn.name() == "RMSNormFunctionBackward"
        else:
            out = norm.weight * torch.nn.functional.rms_norm(xx, (shape[-1],), eps=1e-5)
        out.backward(grad.to(dtype))
        results[name] = [out.detach().double(), xx.grad.double(), norm.weight.grad.double()]
    assert torch.equal(results["function"][0], results["plain"][0])  # the same forward, to the bit
    for got, plain, exact in zip(results["function"], results["plain"], results["exact"]):
        assert_close(got, plain, rtol=1e-5, atol=1e-6)
        assert (got - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-7
