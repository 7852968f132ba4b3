"""One chunk of kept tokens: from its logits to the loss, and the logits' gradient in place.

The same Python function runs eagerly (`compile=False`) or through torch.compile, so both paths
share one definition of the math.
"""
import torch


def chunk_loss_and_grad_(logits, targets, token_weights, z_loss: float, dft: bool):
    """Loss pieces of one chunk; overwrites `logits` with d(loss_sum)/d(logits).

    logits [C, V] in the matmul dtype (fp32 math inside); targets [C] long; token_weights [C]
    fp32. Returns (loss_sum fp32 scalar, nll [C] fp32). Writing the gradient over the logits
    keeps one [C, V] buffer per chunk.
    """
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
        # one pointwise expression (no scatter): the compiler turns it into a single pass that
        # reads each logit and writes its gradient into the same place
        is_target = torch.arange(logits.shape[1], device=logits.device) == targets[:, None]
        logits.copy_(torch.exp(logits.float() - lse[:, None]) * row_scale[:, None]
                     - torch.where(is_target, ce_scale[:, None], 0.0))
    else:
        # eagerly: the same math in place on an fp32 view (a copy when logits are bf16/fp16)
        grad = logits.float().sub_(lse[:, None]).exp_().mul_(row_scale[:, None])
        grad.scatter_add_(1, targets[:, None], -ce_scale[:, None])
        if grad is not logits:
            logits.copy_(grad)
    return loss_sum, nll


_compiled = None
# Each (logits dtype, dft, z_loss value, chunk of one row) is a graph of its own; a process that
# tests several of them passes dynamo's default limit of 8 graphs per function, which fails hard
# under fullgraph=True. A training run uses one or two of them.
_RECOMPILE_LIMIT = 64


def get_chunk_kernel(compile: bool):
    """The chunk function, compiled once per process when `compile` is set."""
    global _compiled
    if not compile:
        return chunk_loss_and_grad_
    if _compiled is None:
        # dynamic=True: one graph serves every chunk length and vocab size
        compiled = torch.compile(chunk_loss_and_grad_, fullgraph=True, dynamic=True)

        def kernel(*args):
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return compiled(*args)
        _compiled = kernel
    return _compiled
