"""python -m eval: each expected failure is one line naming the argument or file, found before
any generation."""
import errno
import importlib

import pytest

from data import load_tokenizer
from data.synthetic import build_task
from eval.__main__ import main
from model import Decoder, ModelConfig, save_pretrained

evaluate_module = importlib.import_module("eval.evaluate")  # eval.evaluate is also the function


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    task = build_task(str(root / "task"), n_train=8, n_test=4, seed=0)
    tok = load_tokenizer(task["tokenizer"])
    for name, vocab in (("ckpt", tok.vocab_size), ("small", tok.vocab_size - 5)):
        decoder = Decoder(ModelConfig(vocab_size=vocab, hidden_size=16, num_layers=1, num_heads=2,
                                      num_kv_heads=1, head_dim=8, intermediate_size=32,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
        decoder.init_weights(0)
        save_pretrained(decoder, root / name, tokenizer_dir=task["tokenizer"])
    return root, task


def fail(error):
    def raise_it(*args, **kwargs):
        raise error
    return raise_it


CASES = {
    "tokenizer_larger_than_model": ([], "has {vocab} tokens but the model {root}/small has"),
    "batch_size_0": (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "max_new_tokens_0": (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    "unknown_dtype": (["--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
    "integer_dtype": (["--dtype", "int8"], "--dtype: unknown dtype 'int8'"),
    "unknown_autocast": (["--autocast", "half-ish"], "--autocast: unknown dtype 'half-ish'"),
    "negative_temperature": (["--temperature", "-1"], "--temperature must be >= 0"),
    "top_p_0": (["--top-p", "0"], "--top-p must be in (0, 1], got 0.0"),
    "bad_device": (["--device", "gpu"], "--device gpu: not a device name"),
    "out_is_a_file": ([], "--out {out}: is a file"),
    "out_read_only": ([], "--out {out}: cannot write there (Read-only file system)"),
    "out_holds_results": ([], "--out {out}: holds an earlier evaluation (metrics.json); pass --overwrite"),
    "disk_full_while_writing": ([], "{out}: [Errno 28] No space left on device"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cli_failure_is_one_line(case, setup, tmp_path, monkeypatch):
    root, task = setup
    extra, expected = CASES[case]
    out = tmp_path / "out"
    model = root / ("small" if case == "tokenizer_larger_than_model" else "ckpt")
    generated = []
    if case != "disk_full_while_writing":  # every other failure is found before generating
        monkeypatch.setattr(evaluate_module, "generate", lambda *a, **k: generated.append(1))
    if case == "out_is_a_file":
        out.write_text("keep")
    elif case == "out_read_only":
        monkeypatch.setattr("tempfile.TemporaryFile", fail(OSError(errno.EROFS, "Read-only file system")))
    elif case == "out_holds_results":
        out.mkdir()
        (out / "metrics.json").write_text("{}")
    elif case == "disk_full_while_writing":
        monkeypatch.setattr(evaluate_module, "atomic_write", fail(OSError(errno.ENOSPC, "No space left on device")))
    argv = ["--model", str(model), "--tokenizer", task["tokenizer"], "--data", task["test"],
            "--out", str(out), "--max-new-tokens", "4", *extra]
    with pytest.raises(SystemExit) as raised:
        main(argv)
    message = str(raised.value)
    vocab = load_tokenizer(task["tokenizer"]).vocab_size
    assert "\n" not in message and expected.format(out=out, root=root, vocab=vocab) in message, message
    assert not generated
    if case == "out_is_a_file":
        assert out.read_text() == "keep"
    if case == "out_holds_results":
        assert (out / "metrics.json").read_text() == "{}"
