"""One chunk of kept tokens: logits, loss and the gradient of the logits, in a single pass.

The same Python function runs eagerly (`compile=False`) or through torch.compile, so both paths
share one definition of the math.
"""
import torch


def chunk_loss_and_grads(hidden, weight, targets, token_weights, z_loss: float, dft: bool):
    """Loss pieces and gradients for one chunk.

    hidden [C, H] and weight [V, H] are in the matmul dtype; targets [C] long; token_weights [C]
    fp32 (0 on padding rows). Returns (loss_sum fp32 scalar, nll [C] fp32, grad_hidden [C, H] and
    grad_logits [C, V], both in the matmul dtype) where grad_logits is d(loss_sum)/d(logits).
    """
    logits = hidden @ weight.t()
    lse = torch.logsumexp(logits.float(), dim=-1)
    nll = lse - logits.gather(1, targets[:, None]).squeeze(1).float()
    # DFT (arXiv 2508.05629): scale each token's loss by its own detached probability
    ce_scale = token_weights * torch.exp(-nll) if dft else token_weights
    loss_sum = (ce_scale * nll).sum()
    row_scale = ce_scale
    if z_loss != 0.0:
        loss_sum = loss_sum + z_loss * (token_weights * lse * lse).sum()
        row_scale = ce_scale + (2.0 * z_loss) * token_weights * lse
    if torch.compiler.is_compiling():
        # one pointwise expression (no scatter): the compiler fuses it into a single pass over
        # the logits that writes the gradient in the matmul dtype, reusing the logits buffer
        is_target = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
        grad_logits = (torch.exp(logits.float() - lse[:, None]) * row_scale[:, None]
                       - torch.where(is_target, ce_scale[:, None], 0.0))
    else:
        # eagerly, in place: one fp32 [C, V] buffer becomes the gradient (same math as above)
        grad_logits = logits.float().sub_(lse[:, None]).exp_().mul_(row_scale[:, None])
        grad_logits.scatter_add_(1, targets[:, None], -ce_scale[:, None])
    grad_logits = grad_logits.to(weight.dtype)
    grad_hidden = grad_logits @ weight
    return loss_sum, nll, grad_hidden, grad_logits


_compiled = None


def get_chunk_kernel(compile: bool):
    """The chunk function, compiled once per process when `compile` is set."""
    global _compiled
    if not compile:
        return chunk_loss_and_grads
    if _compiled is None:
        # dynamic=True: one graph serves every chunk length, vocab and hidden size (no recompiles)
        _compiled = torch.compile(chunk_loss_and_grads, fullgraph=True, dynamic=True)
    return _compiled
