"""Processes, devices and the module every rank calls: one process by default, several under
torchrun with DDP (replicas) or FSDP2 (sharded parameters, gradients and optimizer state)."""
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as td
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from model.precision import autocast_dtype
from training import TrainError


@dataclass
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            td.barrier()

    def sum(self, tensor):
        """Sum over ranks (in place; on the training device, as NCCL needs)."""
        if self.world > 1:
            td.all_reduce(tensor)
        return tensor


def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    return torch.device(name)


def setup_distributed(cfg):
    """Process group from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    device = resolve_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.parallel not in ("none", "ddp", "fsdp"):
        raise TrainError(f"config parallel = '{cfg.parallel}': use none, ddp or fsdp")
    if cfg.cpu_offload and (cfg.parallel != "fsdp" or device.type != "cuda"):
        raise TrainError("cpu_offload = true needs --parallel fsdp on CUDA devices (it moves FSDP2 shards "
                         "from the GPUs to CPU memory)")
    if cfg.parallel == "none":
        if world > 1:
            raise TrainError(f"launched as {world} processes but parallel = 'none': add --parallel ddp|fsdp")
        return Dist(), device
    if "RANK" not in os.environ:
        raise TrainError(f"--parallel {cfg.parallel}: launch with torchrun (e.g. torchrun --nproc_per_node 2 "
                         "train.py ...)")
    if cfg.parallel == "fsdp" and cfg.precision == "fp16":
        raise TrainError("--parallel fsdp with precision = 'fp16': use bf16 (no sharded gradient scaler here)")
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    # long timeout: the other ranks wait while rank 0 evaluates at the end of a stage
    td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=3))
    return dist, device


class LossRoot(nn.Module):
    """The decoder and its loss in one forward: loss_fn(model, *args, **kwargs) under autocast.
    It is the module DDP wraps and the root FSDP2 shards: the root's parameters (embedding, final
    norm, output weight, tied or not) are unsharded only inside its forward, so the loss that reads
    the output weight must run there."""

    def __init__(self, model, loss_fn, autocast=None):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn  # `model`: checkpoint keys are model.<decoder name>
        self.autocast = autocast or contextlib.nullcontext()

    def forward(self, *args, **kwargs):
        with self.autocast:  # the loss's output-layer matmuls run in the autocast dtype too
            return self.loss_fn(self.model, *args, **kwargs)


def wrap_model(model, loss_fn, cfg, dist, device):
    """The module the loop calls: LossRoot around the (compiled) decoder, in DDP or sharded by FSDP2."""
    amp = autocast_dtype(cfg.precision)
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    head = LossRoot(model.compile_blocks() if cfg.compile else model, loss_fn, autocast)
    if cfg.parallel == "ddp":
        return DistributedDataParallel(head, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
        # the batch dict carries float role weights: leave the root's inputs uncast
        opts = dict(mesh=init_device_mesh(device.type, (dist.world,)),
                    mp_policy=MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32,
                                                   cast_forward_inputs=False),
                    offload_policy=CPUOffloadPolicy() if cfg.cpu_offload else OffloadPolicy())
        for block in model.layers:
            fully_shard(block, **opts)
        fully_shard(head, **opts)
    return head


@contextlib.contextmanager
def grad_sync(head, last):
    """Reduce gradients across ranks only on the last micro-batch of an optimizer step."""
    if isinstance(head, DistributedDataParallel) and not last:
        with head.no_sync():
            yield
        return
    if hasattr(head, "set_requires_gradient_sync"):  # an FSDP2 module
        head.set_requires_gradient_sync(last)
    yield


def gradient_norm(grad_norm):
    """clip_grad_norm_'s result as a float; under FSDP2 a DTensor, made whole first."""
    return (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()


def clip_grad_norm(parameters, max_norm):
    """torch.nn.utils.clip_grad_norm_(parameters, max_norm) with the same numbers, returned as a
    float, and one pass over the gradients fewer when nothing is clipped: torch multiplies every
    gradient by its clamped factor even when that factor is 1.0 (late in training, most steps);
    here the multiply runs only when the factor is below 1 (or not finite). The norms come from
    one foreach call (torch's CPU path loops over the tensors in Python). FSDP2's sharded
    gradients (DTensors) go through torch's own function."""
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in params]
    if not grads or any(hasattr(g, "full_tensor") for g in grads) or len({g.device for g in grads}) > 1:
        return gradient_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    clip_coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)  # torch's factor, to the bit
    if not clip_coef.item() >= 1.0:
        torch._foreach_mul_(grads, clip_coef)
    return norm.item()
