"""The decoder: Llama / Qwen2 / Qwen3 / SmolLM3 / Mistral in one file (pre-norm, RoPE, GQA, SwiGLU)."""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from loss.linear_cross_entropy import take_fresh_gradient
from model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalise in float32 and cast back before the weight, exactly as transformers does
        if self.keeps_only_input(x):
            return RMSNormFunction.apply(x, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def keeps_only_input(self, x):
        """Whether this forward runs RMSNormFunction (eager training on fp32)."""
        return (x.dtype == self.weight.dtype == torch.float32 and torch.is_grad_enabled()
                and not torch.compiler.is_compiling())


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm of an fp32 input with an fp32 weight (the residual stream in training): the same
    forward to the bit; backward from the input and the per-row 1 / rms alone (what recomputing
    the norm kept) in closed form, in one node instead of autograd's chain of pow, mean, rsqrt
    and three products (and without running the forward again); equal to fp32 rounding."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return x.mul(rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        grad_weight = x.mul(rstd).mul_(grad).sum_to_size(weight.shape)
        grad_normed = grad * weight
        # d(x * rstd)/dx = rstd - x rstd^3 x^T / H
        dot = (grad_normed * x).mean(-1, keepdim=True)
        return torch.addcmul(grad_normed.mul_(rstd), x, dot.mul_(rstd.pow(3)), value=-1), grad_weight, None


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies [head_dim / 2] in float32, with linear or llama3 scaling applied."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    factor = scaling["factor"]
    if scaling["rope_type"] == "linear":
        return inv_freq / factor
    # llama3: keep high frequencies, divide low ones by factor, interpolate smoothly in between
    old_len = scaling["original_max_position_embeddings"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


def apply_rope(x, cos, sin_signed):
    """x * cos + rotate_half(x) * sin, with rotate_half(x) * sin = roll(x) * [-sin, sin]: one
    kernel instead of chunk + neg + cat, and exactly the same numbers."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class KVCache:
    """Preallocated keys/values [B, kv_heads, max_len, head_dim] per layer, plus the segment id of
    every cached position, so that each decoding step attends only within its own segment."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, dtype, device):
        shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.segment_ids = torch.zeros(batch_size, max_len, dtype=torch.int32, device=device)
        self.has_segments = False  # stays False while every call used plain causal attention
        self.length = 0
        self.batch_size, self.max_len = batch_size, max_len

    def reset(self):
        self.length, self.has_segments = 0, False


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        # q, k and v in one matmul; the rows are q | k | v, so each HF tensor is a contiguous row slice
        self.qkv = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim,
                             bias=cfg.qkv_bias)
        self.o = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=cfg.o_bias)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.use_rope = layer_idx not in cfg.nope_layers

    def forward(self, x, cos, sin, mask, cache, rows=None):
        """Attention output [B, T, hidden]; with rows (a RowSelection, and mask = rows.mask) the
        output [n, hidden] at those positions: q, k, v for every position, the queries gathered to
        the n rows after RoPE, attention and the output projection for those rows only."""
        B, T, _ = x.shape
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        qk, v = self.qkv(x).split([(heads + kv_heads) * head_dim, kv_heads * head_dim], dim=-1)
        # q and k side by side [B, T, heads + kv_heads, head_dim]: RoPE runs once over both
        qk = qk.view(B, T, heads + kv_heads, head_dim)
        if self.q_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, :, :heads]), self.k_norm(qk[:, :, heads:])), dim=2)
        if self.use_rope:
            qk = apply_rope(qk, cos, sin)
        q, k = qk[:, :, :heads], qk[:, :, heads:]
        if rows is not None:
            q = rows.to_slots(q)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, kv_heads, head_dim).transpose(1, 2)
        if cache is not None:
            start, end = cache.length, cache.length + T
            cache.keys[self.layer_idx][:, :, start:end] = k
            cache.values[self.layer_idx][:, :, start:end] = v
            k, v = cache.keys[self.layer_idx][:, :, :end], cache.values[self.layer_idx][:, :, :end]
        queries = q.shape[2]  # per batch row: T, or the width of the row selection's slots
        gqa = self.num_heads != self.num_kv_heads
        if gqa and queries == 1:
            # one query per row (decoding): the query heads of a kv group become query rows, so
            # grouped heads need no k/v copies and SDPA keeps its fused kernel even with a mask
            q = q.reshape(B, kv_heads, heads // kv_heads, head_dim)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).view(B, heads, 1, head_dim)
        else:
            # without a mask the keys are this call's tokens (or there is one query): causal is top-left aligned
            y = attention(q, k, v, mask, mask is None and queries > 1)
        y = y.transpose(1, 2).reshape(B, queries, heads * head_dim)
        return self.o(y if rows is None else rows.from_slots(y))


# Training on rows of at most this many keys runs attention as two plain matmuls and a softmax
# (math_attention) instead of SDPA's fused flash kernel: on CPUs without AMX the flash kernel's
# backward is slow (math attention forward + backward at configs/demo.toml's 32 x 76 tokens: ~0.25x
# its time, at SmolLM2-135M's 2 x 256: ~0.3x; BENCHMARKS.md section 8). The price is the bf16
# probabilities kept for backward, [B, heads, T, keys] per layer: about a fifth more activation
# memory at 256 keys whatever the batch, and growing with the keys, so longer rows keep the flash
# kernel.
MATH_ATTENTION_MAX_KEYS = 256


def attention(q, k, v, mask, is_causal):
    """SDPA over [B, heads, T, head_dim] queries and [B, kv_heads, S, head_dim] keys and values;
    with autograd recording on short rows on CPU (training), math_attention."""
    if torch.is_grad_enabled() and k.shape[2] <= MATH_ATTENTION_MAX_KEYS and q.device.type == "cpu":
        return math_attention(q, k, v, mask, is_causal)
    gqa = q.shape[1] != k.shape[1]
    if gqa and mask is not None:
        # fused SDPA kernels take a mask or grouped heads, not both; expand k/v rather than fall back to math
        groups = q.shape[1] // k.shape[1]
        k, v, gqa = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)


def math_attention(q, k, v, mask, is_causal):
    """softmax(q k^T / sqrt(head_dim), masked) v, returned in q's dtype; is_causal is top-left
    aligned as in SDPA, mask is boolean (True = attend), [T, S] or [B, 1, T, S]. The two matmuls
    run in bf16 when q is bf16 (autocast training: the kernels accumulate in fp32 and round their
    output, as every other matmul under autocast and transformers' eager attention do), otherwise
    in fp32; the softmax in fp32 inside its kernel, its output kept for backward in the matmul
    dtype (MathAttention). The query heads of a kv group are query rows of one matmul (no k/v
    copies), and the scale and the mask (an additive -inf bias) go into one baddbmm with the
    scores."""
    with torch.autocast(q.device.type, enabled=False):
        dtype = torch.bfloat16 if q.dtype == torch.bfloat16 else torch.float32
        B, heads, T, head_dim = q.shape
        kv_heads, S = k.shape[1], k.shape[2]
        groups = heads // kv_heads
        bias = _attention_bias(mask, is_causal, (B, kv_heads, groups, T, S), dtype, q.device)
        y = MathAttention.apply(q.to(dtype).reshape(B * kv_heads, groups * T, head_dim),
                                k.to(dtype).reshape(B * kv_heads, S, head_dim),
                                v.to(dtype).reshape(B * kv_heads, S, head_dim), bias, head_dim ** -0.5)
        return y.view(B, heads, T, head_dim).to(q.dtype)


# the last additive bias math_attention built and what it was built from: every layer of a
# forward attends with the same mask, so the bias is built once per forward, not once per layer
_last_bias = [None]


def _attention_bias(mask, is_causal, shape, dtype, device):
    """The additive bias (0 or -inf) of a causal or boolean mask for math_attention's baddbmm:
    [groups x T, S] or [B x kv_heads, groups x T, S]; a 0-dim zero without a mask."""
    compiling = torch.compiler.is_compiling()  # a compiled block builds its own, keeps none
    key = (is_causal, shape, dtype, device, None if mask is None or compiling else mask._version)
    last = _last_bias[0]
    if not compiling and last is not None and last[0] is mask and last[1] == key:  # same mask, unchanged
        return last[2]
    B, kv_heads, groups, T, S = shape
    if is_causal:
        mask = torch.ones(T, S, dtype=torch.bool, device=device).tril()
    bias = torch.zeros((), dtype=dtype, device=device)
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))
        bias = (bias.repeat(groups, 1) if bias.dim() == 2 else
                bias[:, :, None].expand(B, kv_heads, groups, T, S).reshape(B * kv_heads, groups * T, S))
    if not compiling:
        _last_bias[0] = (None if is_causal else mask, key, bias)
    return bias


class MathAttention(torch.autograd.Function):
    """softmax(alpha q k^T + bias) v over [batch, rows, head_dim] queries and [batch, keys,
    head_dim] keys and values of one dtype. Keeps q, k, v and the probabilities in that dtype for
    backward: through autograd the softmax would keep its fp32 output besides the probabilities'
    bf16 copy (3x the memory under autocast), and its backward would run in fp32 over a converted
    copy. Backward: dv = p^T dy, dp = dy v^T, ds = p (dp - rowsum(p dp)) in one fused softmax
    backward (fp32 inside, rounded once), dq = alpha ds k, dk = alpha ds^T q."""

    @staticmethod
    def forward(ctx, q, k, v, bias, alpha):
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=alpha)
        # on bf16 scores the CPU kernel computes in fp32 and rounds once: the same numbers as an
        # fp32 softmax rounded to bf16 (bar a few per million), without the two converted copies
        probs = torch.softmax(scores, -1)
        ctx.save_for_backward(q, k, v, probs)
        ctx.alpha = alpha
        return torch.bmm(probs, v)

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs = ctx.saved_tensors
        grad = grad.to(q.dtype)
        grad_v = torch.bmm(probs.transpose(1, 2), grad)
        grad_scores = torch._softmax_backward_data(torch.bmm(grad, v.transpose(1, 2)), probs, -1, probs.dtype)
        grad_q = torch.bmm(grad_scores, k).mul_(ctx.alpha)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q).mul_(ctx.alpha)
        return grad_q, grad_k, grad_v, None, None


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_up = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x, recompute=False):
        gate_up = self.gate_up(x)
        if recompute and not torch.compiler.is_compiling():
            return self.down(SwiGLU.apply(gate_up))
        if recompute:
            return self.down(checkpoint(swiglu, gate_up, use_reentrant=False))
        return self.down(swiglu(gate_up))


def swiglu(gate_up):
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class SwiGLU(torch.autograd.Function):
    """swiglu with the recompute's memory (only gate|up is kept for backward) and autograd's
    numbers to the bit, in fewer passes: backward computes silu(gate) once and writes both
    halves of the gradient straight into one [..., 2 x intermediate] tensor, where checkpointing
    swiglu would run the product's forward again and autograd would cat the two halves."""

    @staticmethod
    def forward(ctx, gate_up):
        ctx.save_for_backward(gate_up)
        return swiglu(gate_up)

    @staticmethod
    def backward(ctx, grad):
        gate_up, = ctx.saved_tensors
        gate, up = gate_up.chunk(2, dim=-1)
        grad_gate_up = torch.empty_like(gate_up)
        grad_gate, grad_up = grad_gate_up.chunk(2, dim=-1)
        torch.mul(grad, F.silu(gate), out=grad_up)  # as MulBackward0: grad * other
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)
        return grad_gate_up


class TiedLookup(torch.autograd.Function):
    """The input-embedding lookup of a tied weight that also passes the weight on, for the output
    layer (a view of it, the forward's second output). Backward adds the batch's lookup rows
    (index_add_) straight into the output layer's [V, H] gradient when that arrives unchanged from
    weighted_linear_cross_entropy (loss.linear_cross_entropy.take_fresh_gradient): the rows are the
    only work. Through autograd alone the lookup's gradient is sparse, and autograd adds a sparse
    gradient into a dense one out of place, into a fresh [V, H] tensor (113 MB for SmolLM2's
    vocabulary, every step). The sum is made before the weight's gradient is accumulated, so
    accumulation hooks (DDP's reducer, FSDP2) see it whole. The same numbers to the bit as
    F.embedding(sparse=True) with the same output-layer gradient; any other gradient (the logits
    path, several uses) gets the rows added into a copy, and none at all a dense lookup gradient."""

    @staticmethod
    def forward(ctx, weight, input_ids):
        ctx.save_for_backward(input_ids)
        ctx.weight_shape = weight.shape
        return F.embedding(input_ids, weight), weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad_rows, grad_weight):
        ids, = ctx.saved_tensors
        ids = ids.reshape(-1)
        if grad_rows is None:
            return grad_weight, None
        grad_rows = grad_rows.reshape(ids.numel(), -1)
        if grad_weight is None:
            grad_weight = torch.zeros(ctx.weight_shape, dtype=grad_rows.dtype, device=grad_rows.device)
        elif not take_fresh_gradient(grad_weight):
            grad_weight = grad_weight.clone()
        return grad_weight.index_add_(0, ids, grad_rows.to(grad_weight.dtype)), None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, recompute=False, rows=None):
        """The block's output [B, T, hidden], or [n, hidden] at the selected positions when rows (a
        RowSelection) is given: the first norm runs on every position (their keys and values),
        everything after the attention on the n rows."""
        # recompute: the norms and the SwiGLU product keep only their inputs for backward (the
        # residual stream and the gate|up output, alive anyway) and run again there, instead of
        # saving their fp32 / bf16 outputs: bit-identical gradients, less activation memory.
        # (In eager training the fp32 norms keep x and 1 / rms either way: RMSNormFunction.)
        h = self._norm(self.attn_norm, x, recompute)
        x = (x if rows is None else rows.gather(x)) + self.attn(h, cos, sin, mask, cache, rows)
        h = self._norm(self.mlp_norm, x, recompute)
        return x + self.mlp(h, recompute=recompute)

    @staticmethod
    def _norm(norm, x, recompute):
        if recompute and not norm.keeps_only_input(x):
            return checkpoint(norm, x, use_reentrant=False)
        return norm(x)


def padded_count(n):
    """n rounded up to a multiple of max(32, 2 ** (bit_length(n) - 6)): at most 31 rows or ~3%
    more. A matmul over the n selected rows is a new shape for almost every batch, and oneDNN
    builds (JIT-compiles) a kernel for every new shape on CPU; rounded, a run sees a few dozen."""
    step = max(32, 1 << max(n.bit_length() - 6, 0))
    return -(-n // step) * step


class RowSelection(NamedTuple):
    """Which positions' final hidden states a forward must produce (Decoder.forward(rows=...)).
    rows [m]: flat indices b * T + t, ascending, of the n selected positions, then the last one
    repeated up to m = padded_count(n) (the last layer's matmuls run on m rows, whose surplus is
    dropped: exact, its gradient is zero); slots [m]: where each sits in a [B, width] query layout
    (b * width + its rank within row b); mask [B, 1, width, T]: causal and same-segment."""
    rows: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor
    n: int

    def gather(self, x):
        """[B, T, ...] -> [m, ...]: the selected positions (and the repeats)."""
        return x.flatten(0, 1).index_select(0, self.rows)

    def to_slots(self, x):
        """[B, T, ...] -> [B, width, ...]: the selected positions of row b in slots b * width ...;
        unused slots are zeros (their queries see key 0 only, and their outputs are dropped)."""
        B, width = self.mask.shape[0], self.mask.shape[2]
        slots = x.new_zeros(B * width, *x.shape[2:]).index_copy(
            0, self.slots[:self.n], x.flatten(0, 1).index_select(0, self.rows[:self.n]))
        return slots.view(B, width, *x.shape[2:])

    def from_slots(self, y):
        """[B, width, ...] -> [m, ...]: the inverse of to_slots (and the repeats)."""
        return y.flatten(0, 1).index_select(0, self.slots)

    @staticmethod
    def build(rows, segment_ids, B, T):
        if rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"rows: expected a 1-D integer tensor of flat positions b * T + t, got "
                             f"shape {tuple(rows.shape)} {rows.dtype}")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= B * T
                             or bool((rows[1:] <= rows[:-1]).any())):
            raise ValueError(f"rows: expected strictly ascending values in [0, {B * T}) for a "
                             f"{B} x {T} batch, got {rows.tolist()[:8]}{' ...' if rows.numel() > 8 else ''}")
        rows = rows.long()
        device = rows.device
        batch_row, t = rows // T, rows % T
        counts = torch.bincount(batch_row, minlength=B)
        width = max(int(counts.max()), 1) if rows.numel() else 1
        rank = torch.arange(rows.numel(), device=device) - (counts.cumsum(0) - counts)[batch_row]
        slots = batch_row * width + rank
        query_t = torch.zeros(B * width, dtype=torch.long, device=device).index_copy(0, slots, t)
        mask = torch.arange(T, device=device) <= query_t.view(B, width, 1)
        if segment_ids is not None:
            query_seg = segment_ids[:, :1].expand(B, width).flatten().index_copy(
                0, slots, segment_ids.flatten().index_select(0, rows))
            mask = mask & (query_seg.view(B, width, 1) == segment_ids[:, None, :])
        n = rows.numel()
        extra = padded_count(n) - n
        if extra:
            rows, slots = torch.cat((rows, rows[-1:].expand(extra))), torch.cat((slots, slots[-1:].expand(extra)))
        return RowSelection(rows, slots, mask[:, None], n)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        self.gradient_checkpointing = False  # whole blocks recomputed in backward
        self.recompute_elementwise = True  # norms and SwiGLU product recomputed (see Block.forward)
        self._inv_freq = {}  # device -> inverse frequencies; not a buffer so meta-device builds need no fix-up

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        w = self.embed.weight
        return KVCache(self.config, batch_size, max_len, w.dtype, w.device)

    def forward(self, input_ids, positions=None, segment_ids=None, cache=None, return_hidden=False, rows=None,
                return_output_weight=False):
        """Logits [B, T, V] (or the final hidden states [B, T, H] with return_hidden). rows: flat
        indices b * T + t (ascending) of the only positions whose output is needed, e.g. those whose
        next token carries loss: then the result is [n, V] / [n, H] for those rows, and the last
        layer runs the same block with its queries gathered to the n rows (RowSelection): keys and
        values for every position, attention, output projection and MLP for the n rows only
        (training; not with a cache). return_output_weight: (result, the [V, H] weight to apply to
        the hidden states), the weight a training forward's tied lookup passed on (TiedLookup),
        else output_weight."""
        B, T = input_ids.shape
        device = input_ids.device
        start = 0 if cache is None else cache.length
        if rows is not None and cache is not None:
            raise ValueError("rows: selecting output positions is for training forwards, not with a cache")
        if cache is not None and start + T > cache.max_len:
            raise ValueError(f"cache: {start} cached + {T} new tokens exceed max_len {cache.max_len}")
        if positions is None:
            positions = torch.arange(start, start + T, device=device).expand(B, T)
        if self._tied_lookup(input_ids):
            x, output_weight = TiedLookup.apply(self.embed.weight, input_ids)
        else:
            x, output_weight = F.embedding(input_ids, self.embed.weight), self.output_weight
        # RoPE in the dtype q and k come out of the qkv matmul: the autocast dtype when it is on
        # (fp32 tables would promote q and k to fp32 and cost a cast back before attention)
        autocast = torch.is_autocast_enabled(device.type)
        cos, sin = self._rope(positions, torch.get_autocast_dtype(device.type) if autocast else x.dtype)
        mask = self._mask(segment_ids, cache, B, T, device)
        training = self.training and cache is None and torch.is_grad_enabled()
        recompute = training and self.recompute_elementwise and not self.gradient_checkpointing
        select = None if rows is None else RowSelection.build(rows, segment_ids, B, T)
        for i, layer in enumerate(self.layers):
            # rows: the last layer runs the same code with queries (and their mask) at the n rows only
            last = select if i == len(self.layers) - 1 else None
            layer_mask = mask if last is None else last.mask
            if training and self.gradient_checkpointing:
                x = checkpoint(layer, x, cos, sin, layer_mask, None, False, last, use_reentrant=False)
            else:
                x = layer(x, cos, sin, layer_mask, cache, recompute, last)
        if cache is not None:
            cache.length += T
        if select is not None:
            x = x[:select.n]
        x = self.norm(x)
        out = x if return_hidden else F.linear(x, output_weight)
        return (out, output_weight) if return_output_weight else out

    def _tied_lookup(self, input_ids):
        """Whether the lookup runs as TiedLookup: tied weights in a training forward whose batch has
        fewer tokens than half the vocabulary. Otherwise the dense lookup gradient (zero-filled
        [V, H], the batch's rows added), which autograd adds in place into the output layer's;
        an untied lookup always has it."""
        weight = self.embed.weight
        return (self.lm_head is None and weight.requires_grad and torch.is_grad_enabled()
                and 2 * input_ids.numel() <= weight.shape[0])

    def _rope(self, positions, dtype):
        """cos and [-sin, sin] (see apply_rope) [B, T, 1, head_dim] for the given positions, in
        float32 then cast to dtype, computed once for all layers."""
        device = positions.device
        inv_freq = self._inv_freq.get(device)
        if inv_freq is None:
            inv_freq = rope_inv_freq(self.config).to(device)
            # filling the dict inside torch.compile would fail its guard and recompile on the next call
            if not torch.compiler.is_compiling():
                self._inv_freq[device] = inv_freq
        freqs = positions.float()[..., None] * inv_freq
        cos, sin = freqs.cos(), freqs.sin()
        return (torch.cat((cos, cos), dim=-1).to(dtype)[:, :, None],
                torch.cat((-sin, sin), dim=-1).to(dtype)[:, :, None])

    def _mask(self, segment_ids, cache, B, T, device):
        """Boolean [B, 1, T, S] mask (True = attend), or None where SDPA needs none: key j is visible
        to query i iff j <= i in sequence order (cached keys included) and their segment ids match."""
        if cache is None:
            if segment_ids is None:
                return None  # plain causal: SDPA's is_causal fast path
            seg_q = seg_k = segment_ids
            start, end = 0, T
        else:
            start, end = cache.length, cache.length + T
            if segment_ids is None and not cache.has_segments:
                cache.segment_ids[:, start:end] = 0
                if T == 1 or start == 0:
                    return None  # one new token sees every cached key; a first prefill is plain causal
                segment_ids = cache.segment_ids[:, start:end]
            elif segment_ids is None:
                # no ids given after segmented calls: each row continues its last segment
                segment_ids = cache.segment_ids[:, start - 1:start].expand(B, T)
            else:
                cache.has_segments = True
            cache.segment_ids[:, start:end] = segment_ids
            seg_q, seg_k = segment_ids, cache.segment_ids[:, :end]
        causal = torch.arange(end, device=device)[None, :] <= torch.arange(start, end, device=device)[:, None]
        return (causal[None] & (seg_q[:, :, None] == seg_k[:, None, :]))[:, None]

    @torch.no_grad()
    def init_weights(self, seed: int):
        """Deterministic init for training from scratch: normal(0, 0.02) for matrices and embeddings,
        zero biases, ones for norms. Draws on CPU, so the weights do not depend on the device."""
        if any(p.is_meta for p in self.parameters()):
            self.to_empty(device="cpu")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.empty(p.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=gen))

    @torch.no_grad()
    def resize_vocab(self, vocab_size: int):
        """Grow the embedding (and an untied output layer) to vocab_size rows, for tokens added to
        the tokenizer (e.g. the tags as special tokens). New rows are the mean of the existing
        rows, so a new token starts as an average token: its logit is close to the average
        logit instead of being random, and the old tokens' outputs do not change. Returns self."""
        old = self.config.vocab_size
        if vocab_size < old:
            raise ValueError(f"resize_vocab: {vocab_size} rows is fewer than the model's {old}; "
                             "the vocabulary only grows")
        if vocab_size == old:
            return self

        def grown(weight):
            rows = weight.mean(dim=0, keepdim=True, dtype=torch.float32).to(weight.dtype)
            return nn.Parameter(torch.cat([weight, rows.expand(vocab_size - old, -1)]),
                                requires_grad=weight.requires_grad)

        self.embed.weight = grown(self.embed.weight)
        self.embed.num_embeddings = vocab_size
        if self.lm_head is not None:
            self.lm_head.weight = grown(self.lm_head.weight)
            self.lm_head.out_features = vocab_size
        self.config.vocab_size = vocab_size
        return self

    def compile_blocks(self, **compile_kwargs):
        """torch.compile each block in place (regional compilation). The blocks share one graph,
        so compiling costs one block rather than num_layers unrolled ones, and the embedding,
        RoPE tables, masks and cache bookkeeping stay eager. Returns self."""
        for layer in self.layers:
            layer.compile(**compile_kwargs)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight (forward + backward; the input embedding is a
        lookup, the output projection a matmul even when tied) plus the attention scores and values."""
        cfg = self.config
        matmul_params = self.num_params() - (self.embed.weight.numel() if self.lm_head is not None else 0)
        attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
        return 6 * matmul_params + attention
