"""load_tokenizer reads tokenizer.json plus the special tokens and chat template beside it."""
import json
import shutil

import pytest

from data import DataError, load_tokenizer


def test_reads_special_tokens_and_template(bl_dir):
    tok = load_tokenizer(bl_dir)
    assert tok.eos_token == "<|im_end|>" and tok.eos_id == 2 and tok.pad_id == 0
    assert tok.bos_id is None and "im_start" in tok.chat_template and tok.path == bl_dir
    assert tok.decode(tok.encode("The answer is 42")) == "The answer is 42"


def test_special_tokens_map_dicts_and_jinja_file(bl_dir, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(bl_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    (d / "special_tokens_map.json").write_text(json.dumps({
        "eos_token": {"content": "<|im_end|>", "lstrip": False},
        "bos_token": "<|im_start|>"}))
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    tok = load_tokenizer(str(d))
    assert tok.eos_id == 2 and tok.bos_id == 1 and tok.add_bos_token
    assert tok.pad_id == tok.eos_id  # no pad token: EOS pads
    assert tok.chat_template == "{{ messages[0]['content'] }}"


def test_named_chat_templates(bl_dir, tmp_path):
    d = tmp_path / "tok"
    shutil.copytree(bl_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>",
        "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert load_tokenizer(str(d)).chat_template == "D"


@pytest.mark.parametrize("config,match", [({}, "eos_token"), ({"eos_token": "<nope>"}, "not in the vocab")])
def test_bad_tokenizer_configs(bl_dir, tmp_path, config, match):
    d = tmp_path / "tok"
    shutil.copytree(bl_dir, d)
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=match):
        load_tokenizer(str(d))


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        load_tokenizer(str(tmp_path))
