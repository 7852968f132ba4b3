"""Load and save Hugging Face model directories (config.json + safetensors, single file or sharded)."""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from atomic_io import fsync_dir
from model.config import ModelConfig
from model.decoder import Decoder
from model.safetensors_io import CheckpointError, read_header, read_into, write_file

# HF tensor name -> (our parameter name, which row block of a fused parameter); {} is the layer number
HF_NAMES = {
    "model.embed_tokens.weight": ("embed.weight", None),
    "model.layers.{}.input_layernorm.weight": ("layers.{}.attn_norm.weight", None),
    "model.layers.{}.self_attn.q_proj.weight": ("layers.{}.attn.qkv.weight", 0),
    "model.layers.{}.self_attn.k_proj.weight": ("layers.{}.attn.qkv.weight", 1),
    "model.layers.{}.self_attn.v_proj.weight": ("layers.{}.attn.qkv.weight", 2),
    "model.layers.{}.self_attn.q_proj.bias": ("layers.{}.attn.qkv.bias", 0),
    "model.layers.{}.self_attn.k_proj.bias": ("layers.{}.attn.qkv.bias", 1),
    "model.layers.{}.self_attn.v_proj.bias": ("layers.{}.attn.qkv.bias", 2),
    "model.layers.{}.self_attn.o_proj.weight": ("layers.{}.attn.o.weight", None),
    "model.layers.{}.self_attn.o_proj.bias": ("layers.{}.attn.o.bias", None),
    "model.layers.{}.self_attn.q_norm.weight": ("layers.{}.attn.q_norm.weight", None),
    "model.layers.{}.self_attn.k_norm.weight": ("layers.{}.attn.k_norm.weight", None),
    "model.layers.{}.post_attention_layernorm.weight": ("layers.{}.mlp_norm.weight", None),
    "model.layers.{}.mlp.gate_proj.weight": ("layers.{}.mlp.gate_up.weight", 0),
    "model.layers.{}.mlp.up_proj.weight": ("layers.{}.mlp.gate_up.weight", 1),
    "model.layers.{}.mlp.down_proj.weight": ("layers.{}.mlp.down.weight", None),
    "model.layers.{}.mlp.gate_proj.bias": ("layers.{}.mlp.gate_up.bias", 0),
    "model.layers.{}.mlp.up_proj.bias": ("layers.{}.mlp.gate_up.bias", 1),
    "model.layers.{}.mlp.down_proj.bias": ("layers.{}.mlp.down.bias", None),
    "model.norm.weight": ("norm.weight", None),
    "lm_head.weight": ("lm_head.weight", None),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
INDEX = "model.safetensors.index.json"


def hf_tensors(model: Decoder) -> dict[str, torch.Tensor]:
    """Every HF tensor name of this model -> a view into our parameter that holds it (a contiguous
    row block for fused q/k/v and gate/up). Loading fills these views; saving writes them."""
    cfg = model.config
    params = dict(model.named_parameters())
    blocks = {"qkv": [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim],
              "gate_up": [cfg.intermediate_size, cfg.intermediate_size]}
    out = {}
    for hf_pattern, (pattern, block) in HF_NAMES.items():
        for layer in range(cfg.num_layers) if "{}" in hf_pattern else [None]:
            name = pattern.format(layer)
            if name not in params:
                continue
            t = params[name].data
            if block is not None:
                t = t.split(blocks[name.split(".")[-2]], dim=0)[block]
            out[hf_pattern.format(layer)] = t
    return out


def _resolve_dtype(dtype, cfg: ModelConfig, path) -> torch.dtype:
    if dtype is None:
        dtype = cfg.torch_dtype or "float32"
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise CheckpointError(f"{path}: unknown dtype {dtype!r} (config torch_dtype/dtype or the dtype argument)")
        dtype = resolved
    return dtype


def read_config(path) -> ModelConfig:
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; a Hugging Face model directory needs config.json")
    try:
        d = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    try:
        return ModelConfig.from_hf_dict(d)
    except ValueError as e:
        raise type(e)(f"{config_path}: {e}") from None


def _weight_files(path: Path) -> dict[str, list[str]]:
    """file -> names the index says it holds (None for a single unindexed file)."""
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text())["weight_map"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path / INDEX}: not a valid safetensors index ({e!r})") from None
        files = {}
        for name, file in weight_map.items():
            if "/" in file or "\\" in file or file.startswith("."):
                raise CheckpointError(f"{path / INDEX}: shard name {file!r} for tensor {name!r} leaves the directory")
            files.setdefault(file, []).append(name)
        for file in files:
            if not (path / file).is_file():
                raise CheckpointError(f"{path / file}: shard listed in {INDEX} is missing")
        return files
    if (path / "model.safetensors").is_file():
        return {"model.safetensors": None}
    pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    hint = f" (found {pickles}: pickle checkpoints are never loaded; convert them to safetensors)" if pickles else ""
    raise CheckpointError(f"{path}: no model.safetensors or {INDEX}{hint}")


def load_pretrained(path, dtype=None, device="cpu") -> Decoder:
    """A Decoder with the weights of the Hugging Face directory `path`, built on the meta device and
    filled tensor by tensor straight from the files (no random init, no second copy in memory)."""
    path = Path(path)
    cfg = read_config(path)
    dtype = _resolve_dtype(dtype, cfg, path)
    with torch.device("meta"):
        model = Decoder(cfg).to(dtype)
    model.to_empty(device=device)
    targets = hf_tensors(model)
    loaded = set()
    for file, listed in _weight_files(path).items():
        entries, _ = read_header(path / file)
        for name in listed or []:
            if name not in entries:
                raise CheckpointError(f"{path / file}: missing tensor {name!r} (listed there by {INDEX})")
        with open(path / file, "rb", buffering=0) as f:
            for name, (file_dtype, shape, begin, end) in entries.items():
                if name not in targets:
                    if name == "lm_head.weight" and cfg.tie_word_embeddings:
                        continue  # tied: transformers also ignores a stored copy of the output embedding
                    raise CheckpointError(f"{path / file}: unexpected tensor {name!r} (not part of a "
                                          f"{cfg.architecture} with this config)")
                out = targets[name]
                if tuple(out.shape) != shape:
                    raise CheckpointError(f"{path / file}: tensor {name!r} has shape {list(shape)}, expected "
                                          f"{list(out.shape)} from config.json")
                if name in loaded:
                    raise CheckpointError(f"{path / file}: tensor {name!r} appears in more than one file")
                if file_dtype == out.dtype and out.device.type == "cpu":
                    read_into(f, begin, end, out, path / file, name)
                else:
                    staging = torch.empty(shape, dtype=file_dtype)
                    read_into(f, begin, end, staging, path / file, name)
                    out.copy_(staging)
                loaded.add(name)
    missing = [n for n in targets if n not in loaded]
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}" +
                              (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    cfg.torch_dtype = str(dtype).removeprefix("torch.")
    return model


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)I?B\s*", str(size).upper())
    if not m:
        raise ValueError(f"max_shard_size: {size!r} is not a size like 5GB or an int of bytes")
    return int(float(m.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[m.group(2)])


def save_pretrained(model: Decoder, path, tokenizer_dir=None, max_shard_size="5GB"):
    """Write a directory that transformers loads as is, atomically: everything goes into a temporary
    folder next to `path`, is fsynced, and only then replaces `path` (the old one stays until then)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    tensors = hf_tensors(model)
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    shards, size = [{}], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        cfg = model.config.to_hf_dict()
        cfg["torch_dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if len(shards) == 1:
            write_file(tmp / "model.safetensors", shards[0])
        else:
            weight_map = {}
            for i, shard in enumerate(shards):
                file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                write_file(tmp / file, shard)
                weight_map.update({name: file for name in shard})
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if tokenizer_dir is not None:
            for file in TOKENIZER_FILES:
                if (Path(tokenizer_dir) / file).is_file():
                    shutil.copyfile(Path(tokenizer_dir) / file, tmp / file)
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.rename(path, old / path.name)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old / path.name, path)  # put the previous checkpoint back
            raise
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
