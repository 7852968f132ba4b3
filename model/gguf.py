"""Convert a llama-architecture GGUF checkpoint (llama.cpp) into a Hugging Face directory.

    python -m model.gguf SRC.gguf OUT_DIR [--dtype auto|bfloat16|float32|float16] [--overwrite]

Writes config.json (LlamaForCausalLM), model.safetensors, tokenizer.json rebuilt from the GGUF
metadata, tokenizer_config.json (chat template, special tokens) and generation_config.json.
Needs the optional `gguf` package (pure Python + numpy). Reads only data: nothing in the GGUF is
executed, and nothing is pickled.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}

# Per-block GGUF tensor name -> Hugging Face Llama name.
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(.+)")

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1")

# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> how text is split before byte-level BPE.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _pre_tokenizer(name):
    if name == "smollm":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    if name in ("gpt-2", "gpt2", "default"):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name in ("llama-bpe", "llama3", "llama-v3"):
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    return None


KNOWN_PRE = ("smollm", "gpt-2", "gpt2", "default", "llama-bpe", "llama3", "llama-v3")


class GGUFError(ValueError):
    pass


def import_gguf():
    try:
        import gguf
    except ImportError as error:
        raise ImportError(
            "model.gguf needs the optional `gguf` package to read GGUF files: pip install gguf"
        ) from error
    return gguf


def read_metadata(reader):
    """All key/value fields of the file as plain Python values (strings, numbers, lists)."""
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def _need(meta, key, src):
    if key not in meta:
        raise GGUFError(f"{src}: metadata field {key!r} is missing; cannot build a Llama config")
    value = meta[key]
    if isinstance(value, list):
        raise GGUFError(f"{src}: metadata field {key!r} varies per layer ({value[:4]}...); not supported")
    return value


def natural_dtype(reader):
    """The float type that holds every weight matrix exactly: F16/BF16 files stay so, else float32."""
    types = {t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2}
    if types == {"F16"}:
        return torch.float16
    if types == {"BF16"}:
        return torch.bfloat16
    return torch.float32


def hf_config(meta, tensor_names, dtype, src):
    """config.json for LlamaForCausalLM in the dialect the hub uses (top-level rope_theta)."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise GGUFError(f"{src}: general.architecture is {arch!r}; only 'llama' is supported")
    if "rope_freqs.weight" in tensor_names or meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise GGUFError(
            f"{src}: RoPE scaling (rope_freqs.weight / llama.rope.scaling.type) is not supported"
        )
    hidden = int(_need(meta, "llama.embedding_length", src))
    heads = int(_need(meta, "llama.attention.head_count", src))
    kv_heads = int(meta.get("llama.attention.head_count_kv", heads))
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim or int(meta.get("llama.attention.value_length", head_dim)) != head_dim:
        raise GGUFError(f"{src}: partial RoPE or value_length != key_length is not supported")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = int(meta.get("llama.vocab_size", len(tokens) if tokens else 0))
    if vocab <= 0:
        raise GGUFError(f"{src}: no llama.vocab_size and no tokenizer.ggml.tokens to count")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_need(meta, "llama.feed_forward_length", src)),
        "num_hidden_layers": int(_need(meta, "llama.block_count", src)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
    }


def hf_name(gguf_name, src):
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    match = BLOCK_NAME.fullmatch(gguf_name)
    if match and match.group(2) in LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{LAYER_NAMES[match.group(2)]}"
    raise GGUFError(f"{src}: tensor {gguf_name!r} has no Llama counterpart; cannot convert")


def unpermute_rows(weight, n_heads):
    """Undo llama.cpp's Q/K row order (pairs interleaved for its RoPE) back to HF's rotate-half."""
    return weight.reshape(n_heads, weight.shape[0] // n_heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def convert_tensors(reader, config, dtype, src):
    """Dequantize every tensor to fp32, fix Q/K row order, rename, cast to dtype."""
    gguf = import_gguf()
    out = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise GGUFError(
                f"{src}: tensor {tensor.name!r} has type {kind}; supported: {', '.join(SUPPORTED_TYPES)}"
            )
        name = hf_name(tensor.name, src)
        # A fresh writable fp32 copy: F32 tensors come back as read-only views of the memory map.
        weight = np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        # GGML lists dims fastest-first; numpy/torch want them slowest-first.
        shape = tuple(int(d) for d in reversed(tensor.shape))
        if weight.size != int(np.prod(shape)):
            raise GGUFError(f"{src}: tensor {tensor.name!r} holds {weight.size} values, shape says {shape}")
        weight = weight.reshape(shape)
        if tensor.name.endswith("attn_q.weight"):
            weight = unpermute_rows(weight, config["num_attention_heads"])
        elif tensor.name.endswith("attn_k.weight"):
            weight = unpermute_rows(weight, config["num_key_value_heads"])
        out[name] = torch.from_numpy(np.ascontiguousarray(weight)).to(dtype)
    _check_complete(out, config, src)
    return out


def _check_complete(tensors, config, src):
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    expected |= {f"model.layers.{i}.{n}" for i in range(config["num_hidden_layers"]) for n in LAYER_NAMES.values()}
    missing = sorted(expected - tensors.keys())
    if missing:
        raise GGUFError(f"{src}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    vocab, hidden = tensors["model.embed_tokens.weight"].shape
    if (vocab, hidden) != (config["vocab_size"], config["hidden_size"]):
        raise GGUFError(
            f"{src}: token_embd.weight is {vocab}x{hidden}, metadata says "
            f"{config['vocab_size']}x{config['hidden_size']}"
        )


def build_tokenizer(meta, src):
    """Byte-level BPE tokenizer from tokens, merges and token types stored in the GGUF."""
    model_kind = meta.get("tokenizer.ggml.model")
    if model_kind != "gpt2":
        raise GGUFError(
            f"{src}: tokenizer.ggml.model is {model_kind!r}; only byte-level BPE ('gpt2') is supported"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    pre_tokenizer = _pre_tokenizer(pre)
    if pre_tokenizer is None:
        raise GGUFError(
            f"{src}: tokenizer.ggml.pre is {pre!r}; known pre-tokenizers: {', '.join(KNOWN_PRE)}"
        )
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    # 3 = CONTROL (<|im_start|>, ...) -> special; 4 = USER_DEFINED -> matched whole, not special.
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3]
    )
    user_defined = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4]
    if user_defined:
        tokenizer.add_tokens(user_defined)
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
            ),
        ])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _token(meta, key):
    token_id = meta.get(key)
    return None if token_id is None else meta["tokenizer.ggml.tokens"][token_id]


def tokenizer_config(meta, max_length):
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "bos_token": _token(meta, "tokenizer.ggml.bos_token_id"),
        "eos_token": _token(meta, "tokenizer.ggml.eos_token_id"),
        "pad_token": _token(meta, "tokenizer.ggml.padding_token_id"),
        "unk_token": _token(meta, "tokenizer.ggml.unknown_token_id"),
        "additional_special_tokens": [t for t, k in zip(tokens, types) if k == 3],
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def generation_config(meta):
    eos = meta.get("tokenizer.ggml.eos_token_id")
    eot = meta.get("tokenizer.ggml.eot_token_id")
    # Chat models stop at end-of-turn too, when the file names a different one.
    eos_ids = [eos, eot] if eot is not None and eos is not None and eot != eos else eos
    config = {"bos_token_id": meta.get("tokenizer.ggml.bos_token_id"), "eos_token_id": eos_ids}
    if meta.get("tokenizer.ggml.padding_token_id") is not None:
        config["pad_token_id"] = meta["tokenizer.ggml.padding_token_id"]
    return config


def _write_json(path, obj):
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert(src, out_dir, dtype="auto", overwrite=False):
    """Convert GGUF file `src` into the Hugging Face directory `out_dir` (written atomically)."""
    gguf = import_gguf()
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such GGUF file")
    if out_dir.exists() and not out_dir.is_dir():
        raise GGUFError(f"{out_dir}: is a file; the output must be a folder (a new or empty one)")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir}: exists and is not empty; pass overwrite=True (--overwrite)")
    try:
        reader = gguf.GGUFReader(src)
    except Exception as error:  # a truncated or foreign file fails anywhere inside gguf/numpy parsing
        raise GGUFError(f"{src}: not a readable GGUF file ({type(error).__name__}: {error})") from error
    meta = read_metadata(reader)
    if dtype == "auto":
        torch_dtype = natural_dtype(reader)
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ValueError(f"dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    config = hf_config(meta, {t.name for t in reader.tensors}, torch_dtype, src)
    tokenizer = build_tokenizer(meta, src)
    tensors = convert_tensors(reader, config, torch_dtype, src)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", generation_config(meta))
        _write_json(tmp / "tokenizer_config.json", tokenizer_config(meta, config["max_position_embeddings"]))
        tokenizer.save(str(tmp / "tokenizer.json"))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": src.name})
        _default_permissions(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _default_permissions(folder):
    # mkdtemp makes the folder private (0700); give it the modes a plain mkdir/open would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def _replace_dir(tmp, out_dir):
    """Rename tmp into place; an old out_dir is moved aside first and removed only after."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m model.gguf", description=__doc__.splitlines()[0])
    parser.add_argument("src", help="llama-architecture .gguf file")
    parser.add_argument("out_dir", help="Hugging Face directory to write")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", *DTYPES],
        help="weight dtype (auto: float32 for quantized/F32 files, lossless; F16/BF16 files keep theirs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)
    except (GGUFError, ImportError, OSError) as error:  # OSError: missing source, disk full, read-only
        unnamed = isinstance(error, OSError) and not error.filename  # a failed write names no file
        print(f"error: {args.out_dir + ': ' if unnamed else ''}{error}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
