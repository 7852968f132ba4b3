"""Hub names resolve through huggingface_hub's cache, offline, with no network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import load_pretrained
from model.hub import MODEL_FILES, HubError, resolve_model_dir
from tests.hub_layout import write_hub_repo

ROOT = Path(__file__).resolve().parents[2]


def run_offline(code, hf_home, offline=True):
    """Run python code in a fresh process with HF_HOME (and HF_HUB_OFFLINE) set; (rc, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), PYTHONPATH=str(ROOT))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """{file name: path} of a tiny transformers Llama saved as a Hugging Face directory."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return {p.name: p for p in path.iterdir() if p.is_file()}


def test_hub_name_resolves_to_the_cached_snapshot_offline(tmp_path, tiny_model_files):
    snapshot = write_hub_repo(tmp_path / "hf" / "hub", "tiny-org/Tiny-Llama", tiny_model_files)
    rc, folder, err = run_offline("from model.hub import resolve_model_dir\n"
                                  "print(resolve_model_dir('tiny-org/Tiny-Llama'))", tmp_path / "hf")
    assert rc == 0, err
    assert Path(folder) == snapshot
    model = load_pretrained(folder, dtype=torch.float32)  # the symlinked snapshot loads as a model dir
    expected = load_pretrained(tiny_model_files["config.json"].parent, dtype=torch.float32)
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_offline_without_a_cached_copy_says_what_to_download(tmp_path):
    (tmp_path / "hf").mkdir()
    rc, out, err = run_offline("from model.hub import resolve_model_dir\n"
                               "try:\n    resolve_model_dir('Qwen/Qwen2.5-1.5B')\n"
                               "except Exception as e:\n    print(type(e).__name__, e)", tmp_path / "hf")
    assert rc == 0, err
    assert out.startswith("HubError 'Qwen/Qwen2.5-1.5B' is not a local path")
    assert "HF_HUB_OFFLINE" in out and "hf download Qwen/Qwen2.5-1.5B" in out
    assert str(tmp_path / "hf" / "hub") in out and "\n" not in out


def test_snapshot_without_config_is_named(tmp_path):
    write_hub_repo(tmp_path / "hf" / "hub", "org/weights-only", {"model.safetensors": b"x"})
    rc, out, err = run_offline("from model.hub import resolve_model_dir\n"
                               "try:\n    resolve_model_dir('org/weights-only')\n"
                               "except Exception as e:\n    print(e)", tmp_path / "hf")
    assert rc == 0, err
    assert "has no config.json" in out


def test_local_path_is_returned_without_importing_the_hub_client(tmp_path):
    (tmp_path / "model").mkdir()
    code = ("import sys\nfrom model.hub import resolve_model_dir\n"
            f"print(resolve_model_dir({str(tmp_path / 'model')!r}))\nprint('huggingface_hub' in sys.modules)")
    rc, out, err = run_offline(code, tmp_path / "hf", offline=False)
    assert rc == 0, err
    assert out.splitlines() == [str(tmp_path / "model"), "False"]


def test_missing_local_path_that_is_no_hub_name(tmp_path):
    with pytest.raises(HubError, match="no such local path"):
        resolve_model_dir(str(tmp_path / "runs" / "x" / "stage1" / "final"))


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(HubError, match=r"pip install huggingface_hub"):
        resolve_model_dir("Qwen/Qwen2.5-1.5B")


def test_download_asks_for_weights_config_and_tokenizer_only(monkeypatch, tmp_path):
    """The allow patterns, applied by the hub client's own filter to a typical repository listing."""
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import filter_repo_objects
    listing = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
               "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json", "vocab.json", "merges.txt", "README.md", "LICENSE",
               "modeling_custom.py", "configuration_custom.py", "pytorch_model.bin", "model.pt",
               "original/consolidated.00.pth", "onnx/model.onnx", "chat_template.jinja"]
    kept = set(filter_repo_objects(listing, allow_patterns=MODEL_FILES))
    assert kept == {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                    "tokenizer_config.json", "chat_template.jinja"}
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        (tmp_path / "config.json").write_text(json.dumps({}))
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    assert resolve_model_dir("Qwen/Qwen2.5-1.5B") == str(tmp_path)
    assert calls == [("Qwen/Qwen2.5-1.5B", dict(repo_type="model", revision=None, allow_patterns=MODEL_FILES))]
