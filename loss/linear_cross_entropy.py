"""Fused, chunked, token-weighted linear cross-entropy: never builds the [N, V] logits.

Tokens with weight 0 (or target == ignore_index) are dropped before the output matmul, the kept
tokens go through the output layer `chunk_size` at a time, and each chunk's gradients are
computed in the forward pass, so backward only scales stored gradients by grad_output. Per chunk:
logits block by block over the vocabulary (the weight cast per block under autocast), the compiled
kernel turns them into their gradient in place, then a second pass over the blocks adds the
chunk's share of both gradients into fp32 accumulators. Peak extra memory: one [chunk, V] buffer,
one [block, H] cast buffer and product, and the gradients themselves.
"""
import weakref

import torch

from loss.chunk_kernel import get_chunk_kernel

DEFAULT_CHUNK_SIZE = 256
_ROW_MULTIPLE = 32
_VOCAB_BLOCK = 8192
# up to this size the cast output weight is made once per call; above it (Qwen2.5's [151936, 896]:
# 260 MiB) block by block into one reused buffer, keeping the loss's extra memory small
_CAST_ONCE_BYTES = 64 * 2 ** 20
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# weight gradients this loss's backward made and handed to autograd, which no other tensor shares
# (id -> tensor, weakly held): see take_fresh_gradient
_FRESH = weakref.WeakValueDictionary()


def take_fresh_gradient(grad):
    """True, once, when grad is the output-weight gradient this loss's backward made and handed to
    autograd unchanged: a node further down the backward (model.decoder.TiedLookup, the lookup of
    the same tied weight) may then add into it in place instead of into a copy."""
    return grad is not None and _FRESH.pop(id(grad), None) is grad


def weighted_linear_cross_entropy(hidden, output_weight, targets, token_weights, roles=None, *,
                                  num_roles=4, ignore_index=-100, z_loss=0.0, dft=False,
                                  chunk_size=DEFAULT_CHUNK_SIZE, compile=True):
    """sum(w * nll) over tokens with w != 0 and a target, plus per-role nll sums and counts.

    hidden [N, H] and output_weight [V, H] (fp32, bf16 or fp16; under torch.autocast the matmuls
    run in the autocast dtype), targets [N] long, token_weights [N] float (>= 0), roles [N] long
    in [0, num_roles) or None. Returns (loss_sum fp32 scalar with grad, role_nll_sum fp32
    [num_roles] detached, role_count long [num_roles]); role stats are zero when roles is None.
    z_loss adds z_loss * w * logsumexp^2 per token; dft multiplies each token's cross-entropy
    (not the z-loss term) by its detached probability. Drop tokens by giving them weight 0: they
    never reach the matmul. compile=False runs the same chunk math eagerly.
    """
    _check_inputs(hidden, output_weight, targets, token_weights, roles, num_roles, z_loss, chunk_size)
    device = hidden.device
    kept = torch.nonzero((token_weights != 0) & (targets != ignore_index)).squeeze(1)
    n = kept.numel()
    # the last kept token repeated with weight 0 up to a multiple of _ROW_MULTIPLE: the last
    # chunk's matmuls then come in a few shapes, not a new one for almost every batch (oneDNN
    # JIT-compiles a kernel per shape on CPU). Exact: zero weight, zero gradient, nll dropped.
    padded = kept if n == 0 else torch.cat((kept, kept[-1:].expand(-n % _ROW_MULTIPLE)))
    kept_targets = targets.index_select(0, padded)
    kept_weights = token_weights.index_select(0, padded).float()
    kept_weights[n:] = 0.0
    _check_kept(kept_targets, kept_weights, output_weight.shape[0])

    matmul_dtype = _matmul_dtype(hidden, output_weight)
    kept_hidden = hidden.index_select(0, padded)
    loss_sum, kept_nll = _LinearCrossEntropy.apply(
        kept_hidden, output_weight, kept_targets, kept_weights, matmul_dtype,
        float(z_loss), bool(dft), int(chunk_size), bool(compile))
    kept_nll = kept_nll[:n]

    role_nll_sum = torch.zeros(num_roles, dtype=torch.float32, device=device)
    role_count = torch.zeros(num_roles, dtype=torch.long, device=device)
    if roles is not None:
        kept_roles = roles.index_select(0, kept)
        if kept_roles.numel() and (kept_roles.min() < 0 or kept_roles.max() >= num_roles):
            raise ValueError(f"roles: values must lie in [0, {num_roles}) on weighted tokens, got "
                             f"[{kept_roles.min().item()}, {kept_roles.max().item()}]")
        role_nll_sum.index_add_(0, kept_roles, kept_nll)
        role_count.index_add_(0, kept_roles, torch.ones_like(kept_roles))
    return loss_sum, role_nll_sum, role_count


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, token_weights, matmul_dtype, z_loss, dft,
                chunk_size, compile):
        # forward runs under no_grad; needs_input_grad says what the graph will ask for
        need_grad_hidden, need_grad_weight = ctx.needs_input_grad[:2]
        with torch.autocast(hidden.device.type, enabled=False):
            loss_sum, nll, grad_hidden, grad_weight = _chunked_forward_backward(
                hidden, weight, targets, token_weights, matmul_dtype, z_loss, dft, chunk_size,
                compile, need_grad_hidden, need_grad_weight)
        ctx.mark_non_differentiable(nll)
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        ctx.grad_hidden, ctx.grad_weight = grad_hidden, grad_weight
        return loss_sum, nll

    @staticmethod
    def backward(ctx, grad_loss, _grad_nll):
        grad_hidden, grad_weight = ctx.grad_hidden, ctx.grad_weight
        if grad_hidden is None and grad_weight is None and any(ctx.needs_input_grad[:2]):
            raise RuntimeError("weighted_linear_cross_entropy: backward ran twice; the stored "
                               "gradients are consumed by the first backward (no retain_graph)")
        # drop our references so autograd can take the buffers over without a copy
        ctx.grad_hidden = ctx.grad_weight = None
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_loss).to(ctx.hidden_dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_loss).to(ctx.weight_dtype)
            _FRESH[id(grad_weight)] = grad_weight
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def _chunked_forward_backward(hidden, weight, targets, token_weights, matmul_dtype, z_loss, dft,
                              chunk_size, compile, need_grad_hidden, need_grad_weight):
    kernel = get_chunk_kernel(compile)
    num_tokens, vocab = hidden.shape[0], weight.shape[0]
    weight = weight.detach()
    hidden_mm = hidden.detach().to(matmul_dtype)
    blocks = _vocab_blocks(weight, matmul_dtype)
    loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
    nll = torch.empty(num_tokens, dtype=torch.float32, device=hidden.device)
    # fp32 accumulators: summing many blocks or chunks in bf16 would lose small contributions
    grad_hidden = (torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
                   if need_grad_hidden else None)
    # the first chunk writes the weight gradient, later ones add to it (no zero fill of [V, H]
    # fp32: 545 MB for the Qwen2.5 vocabulary, a measurable share of a stage-2 step)
    grad_weight = None
    if need_grad_weight:
        make = torch.zeros if num_tokens == 0 else torch.empty
        grad_weight = make(weight.shape, dtype=torch.float32, device=weight.device)
    # one [chunk, V] buffer for every chunk: a fresh allocation this size per chunk would be
    # mapped and zeroed by the OS each time (measurably slower on CPU)
    logits_buffer = torch.empty(min(chunk_size, num_tokens), vocab, dtype=matmul_dtype,
                                device=hidden.device)
    for start in range(0, num_tokens, chunk_size):
        end = min(start + chunk_size, num_tokens)
        h = hidden_mm[start:end]
        logits = logits_buffer[:end - start]
        for lo, hi, w in blocks():
            torch.mm(h, w.t(), out=logits[:, lo:hi])
        chunk_loss, nll[start:end] = kernel(logits, targets[start:end], token_weights[start:end],
                                            z_loss, dft)
        loss_sum += chunk_loss
        # the kernel wrote the gradient over the logits
        _add_chunk_grads(logits, h, blocks, grad_hidden, grad_weight, start, end, first=start == 0)
    return loss_sum, nll, grad_hidden, grad_weight


def _add_chunk_grads(grad_logits, h, blocks, grad_hidden, grad_weight, start, end, first):
    """Adds one chunk's gradient contributions, block by block, into the fp32 accumulators (the
    first chunk writes grad_weight instead)."""
    if grad_hidden is None and grad_weight is None:
        return
    if grad_hidden is not None:
        grad_hidden[start:end] = 0
    for lo, hi, w in blocks():
        g = grad_logits[:, lo:hi]
        if grad_hidden is not None:
            grad_hidden[start:end] += g @ w
        if grad_weight is not None:
            if g.dtype == torch.float32:
                if first:
                    torch.mm(g.t(), h, out=grad_weight[lo:hi])
                else:
                    grad_weight[lo:hi].addmm_(g.t(), h)
            elif first:
                grad_weight[lo:hi] = g.t() @ h
            else:
                grad_weight[lo:hi] += g.t() @ h


def _vocab_blocks(weight, matmul_dtype):
    """A function yielding (lo, hi, weight[lo:hi] in the matmul dtype) over the vocabulary.

    fp32 throughout: one block, the weight itself. Otherwise blocks of _VOCAB_BLOCK rows, so the
    low-precision [block, H] products added into the fp32 gradient stay small, and, when the
    weight must be cast (fp32 weights under autocast), each block is cast into one reused buffer
    instead of holding a cast copy of the whole weight (half its size again) for the whole call,
    unless that copy is at most _CAST_ONCE_BYTES: then it is cast once.
    """
    vocab = weight.shape[0]
    if weight.dtype == matmul_dtype == torch.float32:
        return lambda: iter([(0, vocab, weight)])
    if weight.dtype != matmul_dtype and weight.numel() * matmul_dtype.itemsize <= _CAST_ONCE_BYTES:
        # a small output layer is cast once for the whole call, not once per chunk and pass:
        # the same blocks, bit for bit (SmolLM2-135M: 54 MiB instead of 4 casts per 512 tokens)
        cast = weight.to(matmul_dtype)
        return lambda: ((lo, min(lo + _VOCAB_BLOCK, vocab), cast[lo:lo + _VOCAB_BLOCK])
                        for lo in range(0, vocab, _VOCAB_BLOCK))
    buffer = (None if weight.dtype == matmul_dtype else
              torch.empty(min(_VOCAB_BLOCK, vocab), weight.shape[1], dtype=matmul_dtype,
                          device=weight.device))

    def blocks():
        for lo in range(0, vocab, _VOCAB_BLOCK):
            hi = min(lo + _VOCAB_BLOCK, vocab)
            if buffer is None:
                yield lo, hi, weight[lo:hi]
            else:
                block = buffer[:hi - lo]
                block.copy_(weight[lo:hi])
                yield lo, hi, block
    return blocks


def _matmul_dtype(hidden, weight):
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden is {hidden.dtype} but output_weight is {weight.dtype}: cast one "
                         "of them or run under torch.autocast")
    return hidden.dtype


def _check_inputs(hidden, weight, targets, token_weights, roles, num_roles, z_loss, chunk_size):
    if hidden.dim() != 2:
        raise ValueError(f"hidden: expected [N, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"output_weight: expected [V, {hidden.shape[1]}], got shape "
                         f"{tuple(weight.shape)}")
    for name, tensor in (("hidden", hidden), ("output_weight", weight)):
        if tensor.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: expected fp32, bf16 or fp16, got {tensor.dtype}")
    num_tokens = hidden.shape[0]
    for name, tensor in (("targets", targets), ("token_weights", token_weights), ("roles", roles)):
        if tensor is None:
            continue
        if tensor.shape != (num_tokens,):
            raise ValueError(f"{name}: expected shape [{num_tokens}] to match hidden [N, H], got "
                             f"{tuple(tensor.shape)}")
        if tensor.device != hidden.device:
            raise ValueError(f"{name}: on {tensor.device} but hidden is on {hidden.device}")
        if name == "token_weights":
            if not tensor.is_floating_point():
                raise ValueError(f"token_weights: expected a float tensor, got {tensor.dtype}")
        elif tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"{name}: expected an integer (long) tensor, got {tensor.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"output_weight: on {weight.device} but hidden is on {hidden.device}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    if z_loss < 0:
        raise ValueError(f"z_loss: expected >= 0, got {z_loss}")
    if num_roles < 1:
        raise ValueError(f"num_roles: expected >= 1, got {num_roles}")


def _check_kept(kept_targets, kept_weights, vocab_size):
    if kept_targets.numel() == 0:
        return
    bad_weight = ~torch.isfinite(kept_weights) | (kept_weights < 0)
    bad_target = (kept_targets < 0) | (kept_targets >= vocab_size)
    bad_weight_any, bad_target_any = torch.stack([bad_weight.any(), bad_target.any()]).tolist()
    if bad_weight_any:
        index = torch.nonzero(bad_weight)[0].item()
        raise ValueError(f"token_weights: must be finite and >= 0, got "
                         f"{kept_weights[index].item()} at kept token {index}")
    if bad_target_any:
        index = torch.nonzero(bad_target)[0].item()
        raise ValueError(f"targets: must lie in [0, {vocab_size}) or equal ignore_index, got "
                         f"{kept_targets[index].item()} at kept token {index}")
