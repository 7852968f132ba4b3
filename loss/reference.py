"""The naive loss on materialised logits: the ground truth for tests and the benchmark baseline."""
import torch
import torch.nn.functional as F


def naive_weighted_cross_entropy(hidden, output_weight, targets, token_weights, roles=None, *,
                                 num_roles=4, ignore_index=-100, z_loss=0.0, dft=False):
    """Same contract as `weighted_linear_cross_entropy`, built from the full [N, V] logits."""
    logits = hidden @ output_weight.t()
    nll = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="none")
    kept = (token_weights != 0) & (targets != ignore_index)
    weights = torch.where(kept, token_weights.float(), torch.zeros_like(token_weights, dtype=torch.float32))
    ce = nll * (weights * torch.exp(-nll.detach()) if dft else weights)
    loss_sum = ce.sum()
    if z_loss:
        lse = torch.logsumexp(logits.float(), dim=-1)
        loss_sum = loss_sum + z_loss * (weights * lse * lse).sum()
    role_nll_sum = torch.zeros(num_roles, dtype=torch.float32, device=hidden.device)
    role_count = torch.zeros(num_roles, dtype=torch.long, device=hidden.device)
    if roles is not None:
        role_nll_sum.index_add_(0, roles[kept], nll.detach()[kept])
        role_count.index_add_(0, roles[kept], torch.ones_like(roles[kept]))
    return loss_sum, role_nll_sum, role_count
