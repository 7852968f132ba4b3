"""sftkey: supervised fine-tuning that emphasises the Key (final answer) tokens.

Reads top to bottom: config -> data -> model -> the SFTKey step -> for each stage: optimizer,
loop, checkpoints, evaluation -> summary table. Config files, the step log, checkpoints and
several processes are handled in training/ (see its __init__).

    python train.py                                   # built-in demo (configs/demo.toml)
    python train.py --config configs/smollm2_gsm8k.toml --set stage1.epochs=1 --set stage1.lr=2e-4
    python train.py --config X.toml --stage 2 --init runs/x/stage1/final
    python train.py --resume --out runs/demo          # continue a killed run exactly
    python train.py --overwrite --out runs/demo       # replace the run there (after every check)
    torchrun --nproc_per_node 8 train.py --config X.toml --parallel fsdp   # several GPUs (or ddp)

Any config field can be overridden with `--set key=value` (repeatable; nested fields with dots,
values parsed as TOML literals: `--set stage2.weights=[0,0,1] --set compile=true`).
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as td
from tqdm import tqdm

from atomic_io import read_json, write_json
from data import BatchSampler, build_dataset, collate, load_records, load_tokenizer
from data.batches import IGNORE_INDEX
from data.roles import COT, KEY, NUM_ROLES, ROLE_NAMES
from eval.convergence import report as convergence_report
from loss import weighted_linear_cross_entropy
from model import Decoder, ModelConfig, load_pretrained
from model.hub import HubError, resolve_model_dir
from model.precision import autocast_dtype
from training import TrainError, checkpoint
from training.config_io import resolve_config
from training.distributed import Dist, clip_grad_norm, grad_sync, setup_distributed, wrap_model
from training.loggers import LoggerError, ViewedLog, check_installed, open_viewers
from training.machine import append_start, describe, machine
from training.malloc import keep_freed_memory
from training.step_log import JsonlLog, peak_flops, peak_memory_gb, sync

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.toml"


@dataclass
class StageConfig:
    epochs: float = 3.0             # paper: "about 3 epochs" (per stage or in total is unclear)
    max_steps: int = 0              # > 0 overrides epochs
    lr: float = 5e-6                # paper
    warmup_epochs: float = 0.5      # paper: linear warmup over half an epoch
    warmup_steps: int = 0           # > 0 overrides warmup_epochs
    decay: str = "linear"           # after warmup: linear | cosine | constant (paper: unclear)
    min_lr_ratio: float = 0.0
    weights: list = field(default_factory=lambda: [0.0, 1.0, 1.0])  # PROMPT, COT, KEY
    dft: bool = False               # DFT ablation: token loss scaled by its detached probability
    z_loss: float = 0.0


@dataclass
class Config:
    out: str = "runs/demo"
    seed: int = 1234
    stage: str = "both"             # 1 | 2 | both
    init: str = ""                  # HF model dir or hub name (Qwen/Qwen2.5-1.5B); empty: from scratch with [model]
    resume: bool = False
    overwrite: bool = False         # replace the run in out (a fresh run into an occupied out is refused)
    # data
    data_format: str = "synthetic"  # synthetic, or a data/ source format name (gsm8k, math, ...)
    train_data: str = ""
    eval_data: str = ""
    tokenizer: str = ""             # dir or hub name; default: the init model's (or the synthetic task's)
    synthetic: dict = field(default_factory=dict)  # data.synthetic.build_task parameters
    style: str = "tagged"           # tagged | plain (the SFT baseline's untagged response)
    template: str = "plain"         # plain | chat (the model's own chat template)
    max_len: int = 512
    truncation: str = "drop"        # drop too-long examples (counted) | prompt_left (cut the prompt)
    tags_as_special: bool = False   # register the four tags as added special tokens
    limit_train: int = 0
    limit_eval: int = 0
    val_examples: int = 64          # held out from the training file for CoT/Key validation NLL
    # batching: batch_size examples per optimizer step = micro_batch_size x accumulation x ranks
    batch_size: int = 32
    micro_batch_size: int = 8
    packed: bool = False
    # model trained from scratch (ModelConfig fields) when init is empty
    model: dict = field(default_factory=dict)
    # optimizer
    weight_decay: float = 0.1       # paper
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0         # > 0; inf: no clipping
    # device and precision: master weights are fp32, matmuls run under autocast
    device: str = "auto"            # auto | cpu | cuda
    precision: str = "bf16"         # bf16 | fp16 (with a gradient scaler) | fp32
    tf32: bool = True
    compile: bool = False           # torch.compile each decoder block (the loss kernel: compile_loss)
    compile_loss: bool = True
    grad_checkpointing: bool = False
    select_rows: bool = True        # last layer: queries and MLP only where a weighted target is
    # several processes (launched by torchrun): none | ddp (replicas) | fsdp (FSDP2 sharding)
    parallel: str = "none"
    cpu_offload: bool = False       # fsdp: parameter shards, gradients, optimizer state in CPU memory
    # logging, validation, checkpoints, evaluation
    log: list = field(default_factory=list)  # curve viewers beside log.jsonl: tensorboard, wandb
    val_every: int = 50             # optimizer steps; 0: only at stage start and end
    ckpt_every: int = 0             # optimizer steps; 0: only at stage end
    keep_last: int = 2
    eval: bool = True
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 32
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(weights=[0.0, 0.0, 1.0]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"TOML run config (default {DEFAULT_CONFIG.name})")
    p.add_argument("--stage", choices=["1", "2", "both"])
    p.add_argument("--init", help="HF model dir to start from (a stage-1 checkpoint for --stage 2)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (deleted only once every check has passed)")
    p.add_argument("--parallel", choices=["none", "ddp", "fsdp"], help="with torchrun: DDP or FSDP2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return resolve_config(p.parse_args(argv), Config, DEFAULT_CONFIG)


def build_data(cfg):
    """Returns tokenizer, train and validation datasets, and the evaluation records."""
    train_path, eval_path, tok_dir = cfg.train_data, cfg.eval_data, cfg.tokenizer or cfg.init
    fmt = cfg.data_format
    if fmt == "synthetic":
        from data.synthetic import build_task
        key = hashlib.sha256(json.dumps(cfg.synthetic, sort_keys=True).encode()).hexdigest()[:12]
        task = build_task(Path(".cache") / "synthetic" / key, **cfg.synthetic)
        train_path, eval_path = train_path or task["train"], eval_path or task["test"]
        tok_dir, fmt = tok_dir or task["tokenizer"], "auto"
    if not train_path:
        raise TrainError("config: train_data is empty (set it, or data_format = 'synthetic')")
    if not tok_dir:
        raise TrainError("config: no tokenizer (set tokenizer, or init to a model dir with one)")
    tok = load_tokenizer(resolve_model_dir(tok_dir))  # a hub name is downloaded once (local rank 0 first)
    records = load_records(train_path, format=fmt, limit=cfg.limit_train or None)
    order = np.random.default_rng(0).permutation(len(records))  # the split ignores the run seed
    n_val = min(cfg.val_examples, len(records) // 10)
    val_records = [records[i] for i in order[:n_val]]
    train_records = [records[i] for i in sorted(order[n_val:])]
    opts = dict(style=cfg.style, template=cfg.template, max_len=cfg.max_len, truncate_mode=cfg.truncation,
                tags_as_special=cfg.tags_as_special, cache_dir=Path(".cache") / "tokenized")
    train = build_dataset(train_records, tok, **opts)
    val = build_dataset(val_records, tok, **opts) if val_records else None
    eval_records = load_records(eval_path, format=fmt, limit=cfg.limit_eval or None) if eval_path else []
    return tok, train, val, eval_records


def build_model(cfg, tok, device):
    if cfg.init:
        model = load_pretrained(resolve_model_dir(cfg.init), dtype=torch.float32, device=device)
        if tok.file_vocab_size > model.config.vocab_size:
            raise TrainError(f"init {cfg.init}: the model has {model.config.vocab_size} embedding rows "
                             f"but the tokenizer at {tok.path} has {tok.file_vocab_size} tokens: "
                             "not this model's tokenizer")
        if tok.vocab_size > model.config.vocab_size:
            # tokens added to the tokenizer (tags_as_special): new embedding rows, mean-initialised
            print(f"model: vocabulary {model.config.vocab_size} -> {tok.vocab_size} rows for the "
                  f"tokenizer's added tokens (new rows = mean of the old ones)")
            model.resize_vocab(tok.vocab_size)
        return model
    fields = dict(cfg.model)
    fields.setdefault("vocab_size", tok.vocab_size)
    fields.setdefault("eos_token_id", tok.eos_id)
    fields.setdefault("pad_token_id", tok.pad_id)
    fields.setdefault("bos_token_id", tok.bos_id)
    model = Decoder(ModelConfig(**fields))
    model.init_weights(cfg.seed)
    return model.to(device)


def make_optimizer(model, lr, cfg, device):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = not cfg.cpu_offload  # fused AdamW: 4x faster than per-tensor on CPU too (BENCHMARKS.md)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def lr_at(step, total, warmup, sc):
    if step < warmup:
        return sc.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if sc.decay == "constant":
        scale = 1.0
    elif sc.decay == "linear":
        scale = 1.0 - progress
    elif sc.decay == "cosine":
        scale = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise TrainError(f"stage decay '{sc.decay}': use linear, cosine or constant")
    return sc.lr * (sc.min_lr_ratio + (1.0 - sc.min_lr_ratio) * scale)


# The SFTKey step. Stage 1 and stage 2 run this same code and differ only in their role weights
# (PROMPT, COT, KEY): [0, 1, 1] trains the whole tagged response, [0, 0, 1] only the Key tokens
# (<Answer>, the answer, </Answer>, EOS) with the reasoning kept as context. In order:
# role weights per token -> the rows with a weighted target -> fused linear cross-entropy on those
# rows -> divide by the total weight of the whole optimizer step (every micro-batch, every rank,
# counted before any backward) -> backward -> clip -> optimizer step.

def role_weight_tensor(sc, n, device):
    """Stage n's loss weight per role id: PROMPT, COT, KEY from the config (checked in
    training/config_check.py), 0 for the rest (PAD)."""
    return torch.tensor(list(sc.weights) + [0.0] * (NUM_ROLES - 3), device=device)


def sftkey_loss(model, batch, role_weights, select_rows=True, z_loss=0.0, dft=False, compile=True):
    """sum(weight * nll) over the batch's tokens, with the nll sum and token count per role.
    select_rows: the decoder's last layer runs its queries, attention and MLP only at the positions
    whose target carries weight (the Key tokens in stage 2), since the loss drops the others anyway;
    otherwise at every position. Runs inside LossRoot's forward (autocast; FSDP2's gathered root)."""
    device = role_weights.device
    ids = batch["input_ids"].to(device)
    segments = batch["segment_ids"].to(device) if batch.get("segment_ids") is not None else None
    targets, roles = batch["targets"].to(device).flatten(), batch["roles"].to(device).flatten()
    weights = role_weights[roles]
    rows = torch.nonzero((weights != 0) & (targets != IGNORE_INDEX)).squeeze(1) if select_rows else None
    hidden, output_weight = model(ids, positions=batch["positions"].to(device), segment_ids=segments,
                                  return_hidden=True, rows=rows, return_output_weight=True)
    if rows is None:
        hidden = hidden.flatten(0, 1)
    else:
        targets, roles, weights = targets[rows], roles[rows], weights[rows]
    return weighted_linear_cross_entropy(hidden, output_weight, targets, weights, roles,
                                         z_loss=z_loss, dft=dft, compile=compile)


def accumulate_gradients(head, micro, role_weights, sc, scaler, where, dist=Dist()):
    """Backward over this rank's micro-batches of one optimizer step (head: a LossRoot around
    sftkey_loss, or its DDP / FSDP2 form); returns the step's loss, the per-role nll sums and
    counts, and the target count, each summed over all ranks.

    Exact normalisation: every micro-batch's weighted loss sum is divided by the total weight of
    the whole step (all micro-batches of all ranks), counted before any backward, so 4 micro-batches
    of 2, or 2 ranks x 2 micro-batches of 2, equal one batch of 8.
    """
    device = role_weights.device
    step_weight = dist.sum(sum(role_weights[b["roles"].to(device)].sum() for b in micro))
    if step_weight.item() == 0:
        raise TrainError(f"{where}: no supervised token in the batch (role weights {sc.weights})")
    loss_total, role_sum, role_count, tokens = 0.0, torch.zeros(NUM_ROLES), torch.zeros(NUM_ROLES), 0
    for i, b in enumerate(micro):
        with grad_sync(head, last=i == len(micro) - 1):
            loss_sum, rs, rc = head(b, role_weights, z_loss=sc.z_loss, dft=sc.dft)
            # DDP and FSDP average gradients over ranks, but step_weight already counts every rank
            scaler.scale(loss_sum * dist.world / step_weight).backward()
        loss_total += loss_sum.item()
        role_sum += rs.cpu()
        role_count += rc.cpu()
        tokens += int((b["targets"] != IGNORE_INDEX).sum())
    if dist.world > 1:
        totals = dist.sum(torch.tensor([loss_total, tokens, *role_sum, *role_count], dtype=torch.float64,
                                       device=device)).cpu()
        loss_total, tokens = totals[0].item(), int(totals[1])
        role_sum, role_count = totals[2:2 + NUM_ROLES], totals[2 + NUM_ROLES:]
    loss = loss_total / step_weight.item()
    if not math.isfinite(loss):
        raise TrainError(f"{where}: loss is {loss}; stopping")
    return loss, role_sum, role_count, tokens


def optimizer_step(model, optimizer, scaler, grad_clip, where, dist=Dist()):
    """Clip the gradients to grad_clip, step, and clear them; returns the norm before clipping."""
    scaler.unscale_(optimizer)
    grad_norm = clip_grad_norm(model.parameters(), grad_clip)
    if not math.isfinite(grad_norm) and not scaler.is_enabled():  # fp16's scaler skips such steps itself
        raise TrainError(f"{where}: gradient norm is {grad_norm}; stopping")
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    check_finite_weights(model, where, dist)
    return grad_norm


@torch.no_grad()
def check_finite_weights(model, where, dist=Dist()):
    """One pass over the weights after an optimizer step, before they can be saved: raises
    TrainError naming the first tensor with a NaN or an infinity. One foreach norm per step (a NaN
    or infinity makes its tensor's norm non-finite); FSDP2: each rank's shard norms are added up,
    so every rank stops together. Only on failure are the bad values counted."""
    params = [(name, p.to_local() if hasattr(p, "to_local") else p) for name, p in model.named_parameters()]
    norms = dist.sum(torch.stack(torch._foreach_norm([p for _, p in params]))).cpu()
    if not torch.isfinite(norms).all():
        i = int((~torch.isfinite(norms)).nonzero()[0])
        name, p = params[i]
        counts = dist.sum((~torch.isfinite(p)).sum()[None]).cpu()
        what = (f"{int(counts[0])} non-finite values" if counts[0] else
                "finite values too large for its norm, above ~1e19")
        raise TrainError(f"{where}: weight {name} is not finite after the optimizer step "
                         f"({what}); stopping before any checkpoint is written from it")


@torch.no_grad()
def validate(head, val, tok, device, cfg, dist=Dist()):
    """Mean NLL of the CoT and of the Key tokens on held-out data (all roles weighted 1), with the
    micro-batches shared out over the ranks and the sums added up."""
    head.eval()
    weights = torch.zeros(NUM_ROLES, device=device)
    weights[[COT, KEY]] = 1.0
    starts = list(range(0, len(val), cfg.micro_batch_size))
    padded = starts + starts[:-len(starts) % dist.world]  # same forward count on every rank (FSDP gathers)
    stats = torch.zeros(2, NUM_ROLES, dtype=torch.float64, device=device)
    for i in range(dist.rank, len(padded), dist.world):
        indices = list(range(padded[i], min(len(val), padded[i] + cfg.micro_batch_size)))
        _, role_sum, role_count = head(collate(val, indices, tok.pad_id), weights)
        if i < len(starts):
            stats += torch.stack((role_sum, role_count)).double()
    sums, counts = dist.sum(stats).cpu()
    head.train()
    return {f"val_{ROLE_NAMES[r]}_nll": (sums[r] / counts[r]).item() for r in (COT, KEY) if counts[r] > 0}


def checkpoint_note(stage_dir):
    """Where a stopped stage can be resumed from, for the error message."""
    last = checkpoint.latest_step_checkpoint(stage_dir)
    if last is None:
        return f"{stage_dir} has no checkpoint yet (--resume restarts this stage)"
    return f"the last checkpoint, {last}, is intact (--resume continues from it)"


def run_stage(n, cfg, head, model, tok, train, val, device, log, resume_from=None, dist=Dist()):
    """One stage; head = wrap_model(model, ...) (the module every rank calls), model = the decoder."""
    sc = cfg.stage1 if n == 1 else cfg.stage2
    role_weights = role_weight_tensor(sc, n, device)
    world = dist.world
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise TrainError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
                         f"{cfg.micro_batch_size} x {world} rank(s): each optimizer step gives every rank "
                         "the same whole number of micro-batches; change batch_size, micro_batch_size "
                         "or the number of processes")
    accum = cfg.batch_size // (cfg.micro_batch_size * world)
    sampler = BatchSampler(train.lengths, cfg.micro_batch_size, seed=cfg.seed * 1000 + n,
                           rank=dist.rank, world_size=world, packed=cfg.packed,
                           max_tokens=cfg.max_len if cfg.packed else None)
    steps_per_epoch = max(1, sampler.batches_per_epoch // accum)
    total = sc.max_steps or max(1, math.ceil(sc.epochs * steps_per_epoch))
    warmup = sc.warmup_steps or int(round(sc.warmup_epochs * steps_per_epoch))
    optimizer = make_optimizer(model, sc.lr, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    stage_dir = Path(cfg.out) / f"stage{n}"
    stage_dir.mkdir(parents=True, exist_ok=True)
    step = 0
    if resume_from is not None:
        step = checkpoint.load(resume_from, head, optimizer, scaler, sampler, dist)["step"]
    if cfg.resume and dist.main:
        log.truncate(n, step)  # drop what the killed run logged after its last checkpoint
    flops_per_token = model.flops_per_token(cfg.max_len)
    peak = peak_flops(device, cfg.precision)
    print(f"stage {n}: {total} steps ({steps_per_epoch}/epoch, {accum} micro-batch(es) of "
          f"{cfg.micro_batch_size}), lr {sc.lr:g}, warmup {warmup}, weights {sc.weights}"
          + (f", resuming at step {step}" if step else ""))
    if step == 0 and val is not None:
        log.write(dict(stage=n, step=0, type="val", **validate(head, val, tok, device, cfg, dist)))
    batches = (indices for _ in iter(int, 1) for indices in sampler)  # endless, epoch after epoch
    head.train()
    bar = tqdm(total=total, initial=step, desc=f"stage {n}", dynamic_ncols=True, disable=None if dist.main else True)
    while step < total:
        t0 = time.perf_counter()
        lr = lr_at(step, total, warmup, sc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = [collate(train, next(batches), tok.pad_id, packed=cfg.packed, max_len=cfg.max_len)
                 for _ in range(accum)]
        where = f"stage {n} step {step + 1}"
        try:
            loss, role_sum, role_count, tokens = accumulate_gradients(head, micro, role_weights, sc, scaler,
                                                                      where, dist)
            grad_norm = optimizer_step(model, optimizer, scaler, cfg.grad_clip, where, dist)
        except TrainError as e:
            raise TrainError(f"{e}; {checkpoint_note(stage_dir)}") from None
        step += 1
        sync(device)
        dt = time.perf_counter() - t0
        record = dict(stage=n, step=step, type="train", loss=loss, lr=lr, grad_norm=grad_norm,
                      tokens_per_s=tokens / dt, supervised_tokens=int(role_count.sum()),
                      mfu=flops_per_token * tokens / dt / (peak * world),
                      peak_mem_gb=peak_memory_gb(device))
        for r in (COT, KEY):
            if role_count[r] > 0:
                record[f"{ROLE_NAMES[r]}_loss"] = (role_sum[r] / role_count[r]).item()
        log.write(record)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens / dt:.0f}")
        bar.update(1)
        if val is not None and ((cfg.val_every and step % cfg.val_every == 0) or step == total):
            log.write(dict(stage=n, step=step, type="val", **validate(head, val, tok, device, cfg, dist)))
        state = dict(stage=n, step=step, total_steps=total, done=step == total)
        saved = (stage_dir / "final" if step == total else
                 stage_dir / f"step_{step:06d}" if cfg.ckpt_every and step % cfg.ckpt_every == 0 else None)
        if saved is not None:
            checkpoint.save(saved, head, model, tok, optimizer, scaler, sampler, state, cfg, dist)
            if dist.main and step < total and cfg.keep_last:
                checkpoint.remove_step_checkpoints(stage_dir, keep_last=cfg.keep_last)
    bar.close()
    print(convergence_report(log.records(), n))
    if dist.main:
        checkpoint.remove_step_checkpoints(stage_dir)
    dist.barrier()
    return stage_dir / "final"


def evaluate_stage(n, model, tok, records, cfg, device):
    from eval import evaluate
    return evaluate(model, tok, records, style=cfg.style, template=cfg.template,
                    max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                    out_dir=Path(cfg.out) / f"stage{n}" / "eval", device=device,
                    autocast_dtype=autocast_dtype(cfg.precision))


# what a run writes into its folder: a fresh run refuses a folder holding any of them (--overwrite
# deletes them once every check has passed); other files there (train.out of eval.ablation) stay
RUN_OUTPUTS = ("config.json", "log.jsonl", "results.json", "stage1", "stage2", "tensorboard", "wandb",
               "wandb_run_id", "machine.json")


def check_out(cfg):
    """Before anything is read or written: a fresh run into a folder that holds a run is refused,
    naming what is there; --overwrite never deletes the run it starts from (--init inside --out)."""
    out = Path(cfg.out)
    found = [name for name in RUN_OUTPUTS if (out / name).exists()]
    if cfg.resume or not found:
        return
    if not cfg.overwrite:
        raise TrainError(f"--out {out} holds a run ({', '.join(found)}): continue it with --resume, "
                         "replace it with --overwrite, or choose another --out")
    init = Path(cfg.init).resolve() if cfg.init else None
    if init is not None and init.is_relative_to(out.resolve()):
        raise TrainError(f"--init {cfg.init} lies inside --out {out}, which --overwrite would delete; "
                         "choose another --out or copy the model elsewhere first")


def start_out(cfg):
    """Rank 0, once data, tokenizer, init model and config have all been checked: --overwrite
    deletes the earlier run, a fresh run writes config.json, a resumed one clears what a kill left."""
    out = Path(cfg.out)
    if cfg.overwrite:
        for name in RUN_OUTPUTS:
            old = out / name
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        write_json(out / "config.json", dataclasses.asdict(cfg))
    checkpoint.remove_interrupted_writes(out)


def main(argv=None):
    cfg = parse_args(argv)
    check_out(cfg)
    dist, device = setup_distributed(cfg)
    allocator = keep_freed_memory() if device.type == "cpu" else None  # before the first big allocation
    if not dist.main:
        sys.stdout = open(os.devnull, "w")  # rank 0 prints for everyone; errors still reach stderr
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    out = Path(cfg.out)
    print(json.dumps(dataclasses.asdict(cfg), indent=1))
    if dist.local_rank != 0:
        dist.barrier()  # each node's first process writes the data caches, the others then read them
    tok, train, val, eval_records = build_data(cfg)
    if dist.local_rank == 0:
        dist.barrier()
    print(f"data: {len(train)} train, {len(val) if val else 0} validation, {len(eval_records)} eval "
          f"examples; {json.dumps(train.stats)}")
    model = build_model(cfg, tok, device)
    model.gradient_checkpointing = cfg.grad_checkpointing
    print(f"model: {model.num_params() / 1e6:.2f}M parameters on {device}, {cfg.precision}"
          + (f"; {allocator}" if allocator else ""))
    where = machine(device)  # what log.jsonl's tokens/s and MFU were measured on
    print(f"machine: {describe(where)}")
    check_installed(cfg.log)  # the last check before start_out may delete an earlier run
    if dist.main:
        start_out(cfg)
    dist.barrier()
    viewers = open_viewers(cfg.log, str(out), dataclasses.asdict(cfg)) if dist.main else []
    log = ViewedLog(JsonlLog(out / "log.jsonl", enabled=dist.main), viewers)
    loss_fn = functools.partial(sftkey_loss, select_rows=cfg.select_rows, compile=cfg.compile_loss)
    stages = [1, 2] if cfg.stage == "both" else [int(cfg.stage)]
    results = read_json(out / "results.json") if cfg.resume and (out / "results.json").exists() else {}
    head = None  # the wrapped model, kept from stage 1 to stage 2 (FSDP2 shards a module only once)
    # machine.json: an entry per start that trains or evaluates (resuming a finished run changes nothing)
    recorded = not dist.main
    for n in stages:
        stage_dir = out / f"stage{n}"
        final = stage_dir / "final"
        if cfg.resume and checkpoint.is_finished(stage_dir):
            model, head = load_pretrained(final, dtype=torch.float32, device=device), None
            print(f"stage {n}: already finished in {final}")
            if dist.main:  # left by a kill between the final save and their clean-up
                checkpoint.remove_step_checkpoints(stage_dir)
        else:
            recorded = recorded or append_start(out / "machine.json", where, cfg.resume)
            resume_from = checkpoint.latest_step_checkpoint(stage_dir) if cfg.resume else None
            if resume_from is not None:
                model, head = load_pretrained(resume_from, dtype=torch.float32, device=device), None
            model.gradient_checkpointing = cfg.grad_checkpointing
            head = head or wrap_model(model, loss_fn, cfg, dist, device)
            final = run_stage(n, cfg, head, model, tok, train, val, device, log, resume_from, dist)
        if cfg.eval and eval_records and f"stage{n}" not in results:
            if dist.main:  # on rank 0 alone, with the whole model (FSDP2: the checkpoint just written)
                recorded = recorded or append_start(out / "machine.json", where, cfg.resume)
                whole = load_pretrained(final, dtype=torch.float32, device=device) if cfg.parallel == "fsdp" else model
                results[f"stage{n}"] = evaluate_stage(n, whole, tok, eval_records, cfg, device)
                write_json(out / "results.json", results)
            dist.barrier()
    log.close()
    print_summary(results, stages, out)
    return results


def print_summary(results, stages, out):
    if results:
        print("\n| stage | Acc | Fmt | Score | n |\n|---|---|---|---|---|")
        for n in stages:
            m = results.get(f"stage{n}")
            if m:
                print(f"| {n} | {m['acc']:.3f} | {m['fmt']:.3f} | {m['score']:.3f} | {m['n']} |")
    for n in stages:
        final = out / f"stage{n}" / "final"
        print(f"stage {n} checkpoint: {final}" if checkpoint.is_finished(final.parent)
              else f"stage {n}: no checkpoint in {final.parent}")
    print(f"log: {out / 'log.jsonl'}")


if __name__ == "__main__":
    try:
        main()
    except (TrainError, ValueError, HubError, LoggerError) as e:
        sys.exit(f"train.py: {e}")
    except OSError as e:  # a missing file, a read-only folder, a full disk: str(e) names the file when known
        sys.exit(f"train.py: {e}" if e.filename else f"train.py: reading or writing the run failed: {e}")
    except KeyboardInterrupt:
        sys.exit("train.py: interrupted (resume with --resume)")
    finally:
        if td.is_initialized():
            td.destroy_process_group()
