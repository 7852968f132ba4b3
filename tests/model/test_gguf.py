"""GGUF import (model/gguf.py) against transformers' own GGUF loader, on a tiny GGUF written here."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

gguf = pytest.importorskip("gguf", reason="the optional `gguf` package is not installed (pip install gguf)")

from model.gguf import GGUFError, convert, main  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 128, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ h", "e l", "el l", "Ġh ell", "Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o r", "Ġ w", "Ġw or",
          "l d", "Ġwor ld", "1 2", "Ġ Ġ", "i s", "Ġ is"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SAMPLES = [
    "the world is in order",
    " Hello, world! 7 + 8 = 15 and 3.5",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "naïve café – ünïcode ✓",
    "tabs\tand  double  spaces\n\nnew lines   end ",
]
Q = gguf.GGMLQuantizationType
QUANTIZED_TYPES = {  # GGUF tensor -> type: every quantized kind on the matrices, norms stay F32
    "token_embd": Q.Q8_0, "attn_q": Q.Q4_1, "attn_k": Q.Q4_0, "attn_v": Q.Q8_0, "attn_output": Q.F32,
    "ffn_gate": Q.Q4_1, "ffn_up": Q.Q4_0, "ffn_down": Q.Q8_0,
}
FLOAT_TYPES = {
    "token_embd": Q.F32, "output": Q.F16, "attn_q": Q.F16, "attn_k": Q.BF16, "attn_v": Q.BF16,
    "attn_output": Q.F16, "ffn_gate": Q.BF16, "ffn_up": Q.F16, "ffn_down": Q.BF16,
}
HF_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def bytes_to_unicode():
    """GPT-2's printable spelling of the 256 bytes (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def tokens():
    return SPECIALS + bytes_to_unicode() + ["".join(m.split(" ")) for m in MERGES]


def llama_cpp_permute(weight, n_heads):
    """What llama.cpp's convert_hf_to_gguf.py does to Q/K rows (the converter must undo it)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def roundtrip(weight, qtype):
    """The fp32 values a reader gets back after storing weight as qtype."""
    if qtype == Q.F32:
        return weight
    if qtype == Q.F16:
        return weight.astype(np.float16).astype(np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(weight, qtype), qtype)


def add_tensor(writer, name, weight, qtype):
    if qtype == Q.F32:
        writer.add_tensor(name, weight.astype(np.float32))
    elif qtype == Q.F16:
        writer.add_tensor(name, weight.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(weight, qtype), raw_dtype=qtype)


def write_tiny_gguf(path, types=QUANTIZED_TYPES, arch="llama", pre="smollm", tokenizer_model="gpt2", seed=0):
    """A 2-layer llama GGUF as llama.cpp writes it; returns the HF tensors a reader should recover."""
    rng = np.random.default_rng(seed)
    vocab = tokens()
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(100000.0)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def matrix(rows, cols):
        return rng.normal(0.0, 0.15, size=(rows, cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.normal(size=HIDDEN)).astype(np.float32)

    expected = {}
    embed = matrix(len(vocab), HIDDEN)
    add_tensor(writer, "token_embd.weight", embed, types["token_embd"])
    expected["model.embed_tokens.weight"] = roundtrip(embed, types["token_embd"])
    if "output" in types:
        output = matrix(len(vocab), HIDDEN)
        add_tensor(writer, "output.weight", output, types["output"])
        expected["lm_head.weight"] = roundtrip(output, types["output"])
    final_norm = norm()
    writer.add_tensor("output_norm.weight", final_norm)
    expected["model.norm.weight"] = final_norm
    shapes = {"attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN),
              "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_output": (HIDDEN, HEADS * HEAD_DIM),
              "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
    for layer in range(LAYERS):
        prefix, hf_prefix = f"blk.{layer}.", f"model.layers.{layer}."
        for norm_name, hf_norm in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            weight = norm()
            writer.add_tensor(f"{prefix}{norm_name}.weight", weight)
            expected[f"{hf_prefix}{hf_norm}.weight"] = weight
        for name, shape in shapes.items():
            weight = matrix(*shape)
            stored = weight
            if name == "attn_q":
                stored = llama_cpp_permute(weight, HEADS)
            elif name == "attn_k":
                stored = llama_cpp_permute(weight, KV_HEADS)
            add_tensor(writer, f"{prefix}{name}.weight", stored, types[name])
            # Quantization works on whole rows, so it commutes with the row permutation.
            expected[f"{hf_prefix}{HF_NAMES[name]}.weight"] = roundtrip(weight, types[name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in expected.items()}


def allow_gguf_without_accelerate():
    # transformers refuses gguf_file= without accelerate, which its CPU GGUF path never uses.
    import transformers.modeling_utils

    if importlib.util.find_spec("accelerate") is None:
        transformers.modeling_utils.is_accelerate_available = lambda: True


def transformers_from_gguf(path):
    from transformers import AutoModelForCausalLM

    allow_gguf_without_accelerate()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def transformers_from_dir(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


INPUT_IDS = torch.tensor([[1, 60, 100, 262, 270, 3, 2, 200, 77, 5, 9, 263], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 2]])


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_quantized")
    src = root / "tiny.gguf"
    expected = write_tiny_gguf(src)
    out = convert(src, root / "hf")
    return src, out, expected


@pytest.fixture(scope="module")
def floats(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf_floats")
    src = root / "tiny-f16-bf16.gguf"
    expected = write_tiny_gguf(src, types=FLOAT_TYPES, pre="gpt-2", seed=1)
    out = convert(src, root / "hf")
    return src, out, expected


@pytest.mark.parametrize("case", ["quantized", "floats"])
def test_tensors_are_the_dequantized_originals(case, request):
    _, out, expected = request.getfixturevalue(case)
    ours = load_file(out / "model.safetensors")
    assert ours.keys() == expected.keys()
    for name, value in expected.items():
        assert ours[name].dtype == torch.float32, name
        torch.testing.assert_close(ours[name], value, rtol=0, atol=0, msg=name)


def test_config_files(quantized, floats):
    config = json.loads((quantized[1] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (HIDDEN, LAYERS, FFN)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (HEADS, KV_HEADS,
                                                                                                 HEAD_DIM)
    assert config["vocab_size"] == len(tokens()) and config["max_position_embeddings"] == 256
    assert config["rope_theta"] == 100000.0 and config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32"
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert json.loads((floats[1] / "config.json").read_text())["tie_word_embeddings"] is False
    generation = json.loads((quantized[1] / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    tok_config = json.loads((quantized[1] / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATE and tok_config["add_bos_token"] is False
    assert (tok_config["bos_token"], tok_config["eos_token"], tok_config["pad_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>")


@pytest.mark.parametrize("case", ["quantized", "floats"])
def test_matches_transformers_gguf_loader(case, request):
    src, out, _ = request.getfixturevalue(case)
    reference, ours = transformers_from_gguf(src), transformers_from_dir(out)
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert ref_state.keys() == our_state.keys()
    for name in ref_state:
        torch.testing.assert_close(our_state[name], ref_state[name], rtol=0, atol=0, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(ours(INPUT_IDS).logits, reference(INPUT_IDS).logits)


def test_tokenizer_matches_transformers_gguf_tokenizer(quantized):
    from transformers import AutoTokenizer

    src, out, _ = quantized
    ours = Tokenizer.from_file(str(out / "tokenizer.json"))
    reference = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    ours_hf = AutoTokenizer.from_pretrained(out)
    for text in SAMPLES:
        ids = ours.encode(text).ids
        assert ids == reference(text, add_special_tokens=False)["input_ids"], text
        assert ids == ours_hf(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text
    assert ours_hf.eos_token == "<|im_end|>" and ours_hf.pad_token_id == 2
    messages = [{"role": "user", "content": "hi"}]
    assert ours_hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_tokenizer_merges_specials_and_digits(quantized):
    tok = Tokenizer.from_file(str(quantized[1] / "tokenizer.json"))
    vocab = {t: i for i, t in enumerate(tokens())}
    assert tok.encode(" the world").tokens == ["Ġthe", "Ġworld"]
    assert tok.encode("<|im_start|>hell").ids == [1, vocab["h"], vocab["ell"]]
    assert tok.encode(" hell").tokens == ["Ġhell"]
    # Merge rank decides: "e l" comes before "h e", so "hello" never contains "he".
    assert tok.encode("hello").tokens == ["h", "ell", "o"]
    # smollm splits digits one by one (llama.cpp's regex), so the "1 2" merge never applies.
    assert tok.encode("x 123").tokens == ["x", "Ġ", "1", "2", "3"]
    # Digits are cut out before the byte-level regex, so spaces before a digit stay one run
    # (as llama.cpp and SmolLM2's own tokenizer.json do; transformers' GGUF tokenizer splits it).
    assert tok.encode("x  12").tokens == ["x", "ĠĠ", "1", "2"]
    assert tok.token_to_id("<|im_end|>") == 2


def test_gpt2_pre_tokenizer_keeps_digit_runs(floats):
    tok = Tokenizer.from_file(str(floats[1] / "tokenizer.json"))
    assert tok.encode("x 123").tokens == ["x", "Ġ", "12", "3"]


def test_cli_dtype_and_overwrite(quantized, tmp_path, capsys):
    src = quantized[0]
    out = tmp_path / "bf16"
    assert main([str(src), str(out), "--dtype", "bfloat16"]) == 0
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    reference = load_file(quantized[1] / "model.safetensors")
    for name, value in weights.items():
        assert torch.equal(value, reference[name].to(torch.bfloat16)), name
    assert main([str(src), str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(src), str(out), "--overwrite"]) == 0
    assert load_file(out / "model.safetensors")["model.norm.weight"].dtype == torch.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bf16"]


@pytest.mark.parametrize("change, message", [
    ({"arch": "qwen2"}, "general.architecture is 'qwen2'"),
    ({"types": {**QUANTIZED_TYPES, "attn_v": Q.Q5_0}}, "type Q5_0"),
    ({"pre": "tekken"}, "tokenizer.ggml.pre is 'tekken'"),
    ({"tokenizer_model": "llama"}, "tokenizer.ggml.model is 'llama'"),
])
def test_refuses_what_it_cannot_convert(tmp_path, change, message):
    src = tmp_path / "bad.gguf"
    write_tiny_gguf(src, **change)
    with pytest.raises(GGUFError, match=message):
        convert(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf"]


def test_refuses_a_file_that_is_not_gguf(tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"PK\x03\x04 not a gguf file at all" * 4)
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["quantized", "floats"])
def test_load_pretrained_matches_transformers(case, request):
    from model import load_pretrained

    out = request.getfixturevalue(case)[1]
    ours = load_pretrained(out, dtype=torch.float32).eval()
    reference = transformers_from_dir(out)
    with torch.no_grad():
        torch.testing.assert_close(ours(INPUT_IDS), reference(INPUT_IDS).logits, rtol=1e-4, atol=1e-4)


def unwritable(error):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("case", ["truncated_200_bytes", "out_is_a_file", "disk_full", "read_only"])
def test_cli_failures_are_one_line_naming_the_file(case, quantized, tmp_path, capsys, monkeypatch):
    import model.gguf
    import errno
    src, out = quantized[0], tmp_path / "out"
    expected = str(out)
    if case == "truncated_200_bytes":
        src = tmp_path / "cut.gguf"
        src.write_bytes(quantized[0].read_bytes()[:200])
        expected = f"{src}: not a readable GGUF file"
    elif case == "out_is_a_file":
        out.write_text("keep me")
        expected = f"{out}: is a file"
    elif case == "disk_full":
        monkeypatch.setattr(model.gguf, "save_file", unwritable(OSError(errno.ENOSPC, "No space left on device")))
        expected = f"{out}: [Errno {errno.ENOSPC}] No space left on device"
    else:
        monkeypatch.setattr(model.gguf.tempfile, "mkdtemp", unwritable(
            OSError(errno.EROFS, "Read-only file system", str(tmp_path))))
        expected = f"Read-only file system: '{tmp_path}'"
    assert main([str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert case == "out_is_a_file" and out.read_text() == "keep me" or not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporary left
