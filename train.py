"""sftkey: supervised fine-tuning that emphasises the Key (final answer) tokens.

Reads top to bottom: config -> data -> model -> for each stage: optimizer, loop, checkpoints,
evaluation -> summary table.

    python train.py                                   # built-in demo (configs/demo.toml)
    python train.py --config configs/smollm2_gsm8k.toml --set stage1.epochs=1 --set lr_scale=2
    python train.py --config X.toml --stage 2 --init runs/x/stage1/final
    python train.py --resume --out runs/demo          # continue a killed run exactly
    torchrun --nproc_per_node 8 train.py --config X.toml --parallel fsdp   # several GPUs (or ddp)

Any config field can be overridden with `--set key=value` (repeatable; nested fields with dots,
values parsed as TOML literals: `--set stage2.weights=[0,0,1] --set compile=true`).
"""
import argparse
import contextlib
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
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as td
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from data import BatchSampler, build_dataset, collate, load_records, load_tokenizer
from data.batches import IGNORE_INDEX
from data.roles import COT, KEY, NUM_ROLES, ROLE_NAMES
from eval.convergence import report as convergence_report
from loss import weighted_linear_cross_entropy
from model import Decoder, ModelConfig, load_pretrained, save_pretrained
from model.hf_io import fsync_dir

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "demo.toml"


class TrainError(RuntimeError):
    """A problem with the run itself (config, data, numerics): printed without a traceback."""


# ----------------------------------------------------------------------------- config

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
    init: str = ""                  # HF model dir to start from; empty: from scratch with [model]
    resume: bool = False
    # data
    data_format: str = "synthetic"  # synthetic, or a data/ source format name (gsm8k, math, ...)
    train_data: str = ""
    eval_data: str = ""
    tokenizer: str = ""             # default: the init model's dir (or the synthetic task's)
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
    grad_clip: float = 1.0
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
    val_every: int = 50             # optimizer steps; 0: only at stage start and end
    ckpt_every: int = 0             # optimizer steps; 0: only at stage end
    keep_last: int = 2
    eval: bool = True
    eval_max_new_tokens: int = 256
    eval_batch_size: int = 32
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(weights=[0.0, 0.0, 1.0]))


def config_from_dict(d, cls=Config, where="config"):
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise TrainError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(known))})")
        if key in ("stage1", "stage2"):
            defaults = dataclasses.asdict(getattr(cls(), key))
            value = config_from_dict({**defaults, **value}, StageConfig, f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)


def parse_value(text):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as a path


def apply_override(cfg, assignment):
    if "=" not in assignment:
        raise TrainError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    target, parts = cfg, key.strip().split(".")
    for part in parts[:-1]:
        target = target[part] if isinstance(target, dict) else getattr(target, part, None)
        if target is None:
            raise TrainError(f"--set {key}: no config section '{part}'")
    name, value = parts[-1], parse_value(text.strip())
    if isinstance(target, dict):
        target[name] = value
        return
    if not hasattr(target, name):
        raise TrainError(f"--set {key}: unknown field '{name}'")
    old = getattr(target, name)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = text.strip()  # stage=1, out=2024 are strings
    if old is not None and not isinstance(value, type(old)):
        raise TrainError(f"--set {key}={text}: expected {type(old).__name__}, got {value!r}")
    setattr(target, name, value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help=f"TOML run config (default {DEFAULT_CONFIG.name})")
    p.add_argument("--stage", choices=["1", "2", "both"])
    p.add_argument("--init", help="HF model dir to start from (a stage-1 checkpoint for --stage 2)")
    p.add_argument("--out", help="run directory")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--parallel", choices=["none", "ddp", "fsdp"], help="with torchrun: DDP or FSDP2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    path = Path(args.config) if args.config else DEFAULT_CONFIG
    try:
        cfg = config_from_dict(tomllib.loads(path.read_text()), where=str(path))
    except FileNotFoundError:
        raise TrainError(f"--config {path}: no such file")
    except tomllib.TOMLDecodeError as e:
        raise TrainError(f"--config {path}: {e}")
    for name in ("stage", "init", "out", "device", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    saved = Path(cfg.out) / "config.json"
    if args.resume and saved.exists():
        cfg = config_from_dict(json.loads(saved.read_text()), where=str(saved))  # exactly what was started
        cfg.out = str(saved.parent)  # the run may have been moved or copied since
    cfg.resume = cfg.resume or args.resume
    cfg.parallel = args.parallel or cfg.parallel  # a resumed run may change how it is parallelised
    for assignment in args.set:
        apply_override(cfg, assignment)
    if cfg.stage == "2" and not cfg.init:
        raise TrainError("--stage 2 needs --init DIR (a stage-1 checkpoint or any HF model dir)")
    return cfg


# ----------------------------------------------------------------------------- data

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
    tok = load_tokenizer(tok_dir)
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


# ----------------------------------------------------------------------------- model

def build_model(cfg, tok, device):
    if cfg.init:
        model = load_pretrained(cfg.init, dtype=torch.float32, device=device)
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


@functools.lru_cache
def peak_flops(device, precision):
    """Peak matmul FLOP/s for MFU: measured with a large square matmul in the run's precision."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    n = 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- distributed

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


def amp_dtype(cfg):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[cfg.precision]


class LossHead(nn.Module):
    """The decoder and the fused loss in one forward. Under FSDP2 this is the root module: its
    parameters (embedding, final norm, output weight, tied or not) are unsharded only inside its
    forward, so the loss that reads the output weight must run there."""

    def __init__(self, model, autocast, device, select_rows=True):
        super().__init__()
        self.model, self.autocast, self.device, self.select_rows = model, autocast, device, select_rows

    def forward(self, batch, role_weights, z_loss=0.0, dft=False, compile=True):
        with self.autocast:  # the loss's output-layer matmuls run in the autocast dtype too
            hidden, targets, roles, weights = forward_hidden(self.model, batch, role_weights, self.device,
                                                             self.select_rows)
            return weighted_linear_cross_entropy(hidden, self.model.output_weight, targets, weights,
                                                 roles, z_loss=z_loss, dft=dft, compile=compile)


def wrap_model(model, cfg, dist, device):
    """The module the loop calls: LossHead around the (compiled) decoder, in DDP or sharded by FSDP2."""
    amp = amp_dtype(cfg)
    autocast = torch.autocast(device.type, dtype=amp) if amp else contextlib.nullcontext()
    head = LossHead(model.compile_blocks() if cfg.compile else model, autocast, device, cfg.select_rows)
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


# ----------------------------------------------------------------------------- checkpoints

def rng_state():
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    np_state = np.random.get_state()
    meta = {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}
    return tensors, meta


def set_rng_state(tensors, meta):
    torch.set_rng_state(tensors["torch_cpu"])
    if "torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on rank 0's CPU


def gathered_model(head, model, cfg):
    """A whole decoder on rank 0 (None elsewhere); FSDP2 shards are gathered (every rank calls this)."""
    if cfg.parallel != "fsdp":
        return model
    tensors = get_model_state_dict(head, options=FULL_STATE)
    if not tensors:
        return None
    with torch.device("meta"):
        whole = Decoder(model.config)
    whole.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items()}, assign=True)
    return whole


def save_checkpoint(path, head, model, tok, optimizer, scaler, sampler, state, cfg, dist=Dist()):
    """HF model dir + train_state/, written by rank 0 under a temporary name and renamed into place.

    The optimizer state is saved whole (gathered, keyed by parameter name), so a run resumes with
    any number of ranks and either of none / ddp / fsdp.
    """
    path = Path(path)
    whole = gathered_model(head, model, cfg)
    opt = get_optimizer_state_dict(head, optimizer, options=FULL_STATE)
    if not dist.main:
        dist.barrier()
        return
    tmp = path.parent / f".tmp-{path.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(whole, tmp, tokenizer_dir=tok.path)
    if tok.vocab_size > tok.file_vocab_size:  # tokens added in memory (tags_as_special): keep them
        tok.tokenizer.save(str(tmp / "tokenizer.json"))
        with open(tmp / "tokenizer.json", "rb") as f:
            os.fsync(f.fileno())
    ts = tmp / "train_state"
    ts.mkdir()
    tensors = {f"state.{name}.{k}": v.detach().cpu().contiguous()
               for name, s in opt["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file(tensors, ts / "optimizer.safetensors")
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, ts / "rng.safetensors")
    meta = dict(state, param_groups=opt["param_groups"], sampler=sampler.state_dict(), rng=rng_meta,
                scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                config=dataclasses.asdict(cfg))
    write_json(ts / "state.json", meta)
    fsync_dir(ts)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    dist.barrier()


def load_train_state(path, head, optimizer, scaler, sampler, dist=Dist()):
    """Rank 0 reads the whole optimizer state and broadcasts it; each rank keeps its share."""
    ts = Path(path) / "train_state"
    meta = json.loads((ts / "state.json").read_text())
    opt_state = {}
    for name, value in load_file(ts / "optimizer.safetensors").items() if dist.main else ():
        param, key = name.removeprefix("state.").rsplit(".", 1)
        opt_state.setdefault(param, {})[key] = value
    whole = {"state": opt_state, "param_groups": meta["param_groups"]} if dist.main else {}
    set_optimizer_state_dict(head, optimizer, whole, options=StateDictOptions(
        full_state_dict=True, broadcast_from_rank0=dist.world > 1))
    saved = meta["sampler"]
    # rank 0's position stands for every rank (equal batch counts); another world size restarts at the
    # same global micro-batch, exact unless it is not a multiple of the new world size
    consumed = saved["position"] * saved["world_size"]
    sampler.load_state_dict(dict(saved, rank=sampler.rank, world_size=sampler.world_size,
                                 position=consumed // sampler.world_size))
    if scaler is not None and meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    set_rng_state(load_file(ts / "rng.safetensors"), meta["rng"])
    return meta


def write_json(path, obj):
    tmp = Path(path).with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def step_checkpoints(stage_dir):
    return sorted(p for p in Path(stage_dir).glob("step_*") if (p / "train_state" / "state.json").exists())


# ----------------------------------------------------------------------------- validation

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
        _, role_sum, role_count = head(collate(val, indices, tok.pad_id), weights, compile=cfg.compile_loss)
        if i < len(starts):
            stats += torch.stack((role_sum, role_count)).double()
    sums, counts = dist.sum(stats).cpu()
    head.train()
    return {f"val_{ROLE_NAMES[r]}_nll": (sums[r] / counts[r]).item() for r in (COT, KEY) if counts[r] > 0}


def forward_hidden(model, batch, role_weights, device, select_rows=True):
    """Final hidden states [n, H] with the targets, roles and token weights of the same n positions.
    select_rows: only the positions with a weighted target (the loss drops the others anyway), so
    the decoder's last layer runs its queries, attention and MLP for those rows only (in stage 2,
    the Key tokens); otherwise every position."""
    ids = batch["input_ids"].to(device)
    segments = batch["segment_ids"].to(device) if batch.get("segment_ids") is not None else None
    targets, roles = batch["targets"].to(device).flatten(), batch["roles"].to(device).flatten()
    weights = role_weights[roles]
    rows = torch.nonzero((weights != 0) & (targets != IGNORE_INDEX)).squeeze(1) if select_rows else None
    hidden = model(ids, positions=batch["positions"].to(device), segment_ids=segments, return_hidden=True,
                   rows=rows)
    if rows is None:
        return hidden.flatten(0, 1), targets, roles, weights
    return hidden, targets[rows], roles[rows], weights[rows]


def accumulate_gradients(head, model, micro, role_weights, sc, cfg, device, autocast, scaler, where, dist=Dist()):
    """Backward over this rank's micro-batches of one optimizer step; returns the step's loss and
    stats summed over all ranks. head: a LossHead (in DDP / FSDP2) or a bare decoder to wrap.

    Exact normalisation: every micro-batch's weighted loss sum is divided by the total weight of
    the whole step (all micro-batches of all ranks), counted before any backward, so 4 micro-batches
    of 2, or 2 ranks x 2 micro-batches of 2, equal one batch of 8.
    """
    if not isinstance(head, (LossHead, DistributedDataParallel)):
        head = LossHead(head, autocast, device)
    step_weight = dist.sum(sum(role_weights[b["roles"].to(device)].sum() for b in micro))
    if step_weight.item() == 0:
        raise TrainError(f"{where}: no supervised token in the batch (role weights {sc.weights})")
    loss_total, role_sum, role_count, tokens = 0.0, torch.zeros(NUM_ROLES), torch.zeros(NUM_ROLES), 0
    for i, b in enumerate(micro):
        with grad_sync(head, last=i == len(micro) - 1):
            loss_sum, rs, rc = head(b, role_weights, sc.z_loss, sc.dft, cfg.compile_loss)
            # DDP and FSDP average gradients over ranks, but step_weight already counts every rank
            scaler.scale(loss_sum * dist.world / step_weight).backward()
        loss_total += loss_sum.item()
        role_sum += rs.cpu()
        role_count += rc.cpu()
        tokens += int((b["targets"] != -100).sum())
    if dist.world > 1:
        totals = dist.sum(torch.tensor([loss_total, tokens, *role_sum, *role_count], dtype=torch.float64,
                                       device=device)).cpu()
        loss_total, tokens = totals[0].item(), int(totals[1])
        role_sum, role_count = totals[2:2 + NUM_ROLES], totals[2 + NUM_ROLES:]
    return loss_total / step_weight.item(), role_sum, role_count, tokens


# ----------------------------------------------------------------------------- one stage

def run_stage(n, cfg, head, model, tok, train, val, device, log, resume_from=None, dist=Dist()):
    """One stage; head = wrap_model(model, ...) (the module every rank calls), model = the decoder."""
    sc = cfg.stage1 if n == 1 else cfg.stage2
    if len(sc.weights) != 3 or min(sc.weights) < 0 or sum(sc.weights[1:]) == 0:
        raise TrainError(f"stage{n}.weights = {sc.weights}: need 3 non-negative role weights "
                         "(PROMPT, COT, KEY) with COT or KEY above 0")
    role_weights = torch.tensor(list(sc.weights) + [0.0] * (NUM_ROLES - 3), device=device)
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
        step = load_train_state(resume_from, head, optimizer, scaler, sampler, dist)["step"]
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
        loss, role_sum, role_count, tokens = accumulate_gradients(
            head, model, micro, role_weights, sc, cfg, device, None, scaler, f"stage {n} step {step + 1}", dist)
        if not math.isfinite(loss):
            raise TrainError(f"stage {n} step {step + 1}: loss is {loss}; stopping, the last "
                             f"checkpoint in {stage_dir} is intact")
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        grad_norm = (grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm).item()  # FSDP2
        if not math.isfinite(grad_norm) and not scaler.is_enabled():
            raise TrainError(f"stage {n} step {step + 1}: gradient norm is {grad_norm}; stopping, "
                             f"the last checkpoint in {stage_dir} is intact")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
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
            save_checkpoint(saved, head, model, tok, optimizer, scaler, sampler, state, cfg, dist)
            for old in step_checkpoints(stage_dir)[:-cfg.keep_last] if dist.main and step < total else []:
                shutil.rmtree(old)
    bar.close()
    print(convergence_report(log.records() if log.enabled else [], n))
    for old in step_checkpoints(stage_dir) if dist.main else []:
        shutil.rmtree(old)
    dist.barrier()
    return stage_dir / "final"


def peak_memory_gb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


class JsonlLog:
    """One JSON line per optimizer step or validation; on resume, lines past the checkpoint go."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled = Path(path), enabled  # only rank 0 writes

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate(self, stage, step):
        if not self.path.exists():
            return
        records = [json.loads(line) for line in self.path.read_text().splitlines()]
        kept = [r for r in records if r["stage"] < stage or (r["stage"] == stage and 0 < r["step"] <= step)]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def records(self):
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []


# ----------------------------------------------------------------------------- main

def resolve_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available")
    return torch.device(name)


def evaluate_stage(n, model, tok, records, cfg, device):
    from eval import evaluate
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    return evaluate(model, tok, records, style=cfg.style, template=cfg.template,
                    max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                    out_dir=Path(cfg.out) / f"stage{n}" / "eval", device=device, autocast_dtype=amp_dtype)


def main(argv=None):
    cfg = parse_args(argv)
    dist, device = setup_distributed(cfg)
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
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            for old in [out / "log.jsonl", out / "results.json"] + list(out.glob("stage[12]")):
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        write_json(out / "config.json", dataclasses.asdict(cfg))
        for tmp in out.glob("stage*/.tmp-*"):
            shutil.rmtree(tmp)  # a checkpoint interrupted while being written
    if dist.local_rank != 0:
        dist.barrier()  # each node's first process writes the data caches, the others then read them
    tok, train, val, eval_records = build_data(cfg)
    if dist.local_rank == 0:
        dist.barrier()
    print(f"data: {len(train)} train, {len(val) if val else 0} validation, {len(eval_records)} eval "
          f"examples; {json.dumps(train.stats)}")
    model = build_model(cfg, tok, device)
    model.gradient_checkpointing = cfg.grad_checkpointing
    print(f"model: {model.num_params() / 1e6:.2f}M parameters on {device}, {cfg.precision}")
    log = JsonlLog(out / "log.jsonl", enabled=dist.main)
    stages = [1, 2] if cfg.stage == "both" else [int(cfg.stage)]
    results = json.loads((out / "results.json").read_text()) if cfg.resume and (out / "results.json").exists() else {}
    head = None  # the wrapped model, kept from stage 1 to stage 2 (FSDP2 shards a module only once)
    for n in stages:
        stage_dir = out / f"stage{n}"
        final = stage_dir / "final"
        if cfg.resume and (final / "train_state" / "state.json").exists():
            model, head = load_pretrained(final, dtype=torch.float32, device=device), None
            print(f"stage {n}: already finished in {final}")
        else:
            resume_from = step_checkpoints(stage_dir)[-1] if cfg.resume and step_checkpoints(stage_dir) else None
            if resume_from is not None:
                model, head = load_pretrained(resume_from, dtype=torch.float32, device=device), None
            model.gradient_checkpointing = cfg.grad_checkpointing
            head = head or wrap_model(model, cfg, dist, device)
            final = run_stage(n, cfg, head, model, tok, train, val, device, log, resume_from, dist)
        if cfg.eval and eval_records and f"stage{n}" not in results:
            if dist.main:  # on rank 0 alone, with the whole model (FSDP2: the checkpoint just written)
                whole = load_pretrained(final, dtype=torch.float32, device=device) if cfg.parallel == "fsdp" else model
                results[f"stage{n}"] = evaluate_stage(n, whole, tok, eval_records, cfg, device)
                write_json(out / "results.json", results)
            dist.barrier()
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
        print(f"stage {n} checkpoint: {out / f'stage{n}' / 'final'}")
    print(f"log: {out / 'log.jsonl'}")


if __name__ == "__main__":
    try:
        main()
    except (TrainError, ValueError, FileNotFoundError) as e:
        sys.exit(f"train.py: {e}")
    except KeyboardInterrupt:
        sys.exit("train.py: interrupted (resume with --resume)")
    finally:
        if td.is_initialized():
            td.destroy_process_group()
