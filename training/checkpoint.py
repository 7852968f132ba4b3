"""Checkpoints and resume: `save` writes a Hugging Face model directory plus train_state/
(optimizer, gradient scaler, sampler position, RNG states, step, config; safetensors and JSON),
under a temporary name renamed into place; `load` restores all of it but the weights."""
import dataclasses
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)

from atomic_io import fsync_dir, read_json, write_json
from model import Decoder, save_pretrained
from training.distributed import Dist

FULL_STATE = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered, on rank 0's CPU


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


def save(path, head, model, tok, optimizer, scaler, sampler, state, cfg, dist=Dist()):
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


def load(path, head, optimizer, scaler, sampler, dist=Dist()):
    """Optimizer, scaler, sampler and RNG state of the checkpoint at path (its weights are loaded
    with the model); returns its state.json. Rank 0 reads the whole optimizer state and broadcasts
    it; each rank keeps its share."""
    ts = Path(path) / "train_state"
    meta = read_json(ts / "state.json")
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


def is_finished(stage_dir):
    return (Path(stage_dir) / "final" / "train_state" / "state.json").exists()


def step_checkpoints(stage_dir):
    """The complete step_NNNNNN checkpoints of a stage, oldest first."""
    return sorted(p for p in Path(stage_dir).glob("step_*") if (p / "train_state" / "state.json").exists())


def latest_step_checkpoint(stage_dir):
    found = step_checkpoints(stage_dir)
    return found[-1] if found else None


def remove_step_checkpoints(stage_dir, keep_last=0):
    """Deletes all but the newest keep_last step checkpoints (all of them with 0)."""
    found = step_checkpoints(stage_dir)
    for old in found[:len(found) - keep_last]:
        shutil.rmtree(old)


def remove_interrupted_writes(out):
    """Temporary checkpoint folders left by a process killed while writing one."""
    for tmp in Path(out).glob("stage*/.tmp-*"):
        shutil.rmtree(tmp)
