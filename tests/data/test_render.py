"""Response renderers for the arms and prompt templates (plain, and chat like transformers)."""
import pytest

from data import Record, render_prompt, render_response
from data.render import PLAIN_TEMPLATE

R = Record("What is 2 + 3?", "2 + 3 = 5", "5", "x", "f:1")


def test_tagged_and_plain_responses():
    text, key = render_response(R, "tagged")
    assert text == "<Thinking>2 + 3 = 5</Thinking><Answer>5</Answer>"
    assert text[key:] == "<Answer>5</Answer>"
    text, key = render_response(R, "plain")
    assert text == "2 + 3 = 5\nThe answer is 5" and text[key:] == "The answer is 5"
    with pytest.raises(ValueError, match="style"):
        render_response(R, "fancy")


def test_plain_prompt(syn_tok):
    assert render_prompt(R, syn_tok) == PLAIN_TEMPLATE.format(prompt=R.prompt)
    assert render_prompt(R, syn_tok) == "Problem: What is 2 + 3?\nSolution:\n"


def test_chat_template_missing(syn_tok):
    with pytest.raises(ValueError, match="no chat_template"):
        render_prompt(R, syn_tok, template="chat")


TEMPLATES = {
    "chatml": None,  # the fixture's own template
    "bos_raise_loop": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'system'] %}"
        "{{ raise_exception('bad role') }}{% endif %}"
        "{% if loop.first and m['role'] == 'system' %}[SYS]{{ m['content'] | trim }}\n"
        "{% else %}[{{ m['role'] | upper }}] {{ m['content'] | tojson }}\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}[ASSISTANT]{% endif %}"),
    "generation_tag": (
        "{% for m in messages %}{% generation %}<{{ m['role'] }}>{{ m['content'] }}"
        "{% endgeneration %}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"),
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("system", [None, "Be brief. é"])
def test_chat_template_matches_transformers(bl_dir, tmp_path, name, system):
    transformers = pytest.importorskip("transformers")
    import json
    import shutil

    from data import load_tokenizer
    d = tmp_path / "tok"
    shutil.copytree(bl_dir, d)
    if TEMPLATES[name]:
        config = json.loads((d / "tokenizer_config.json").read_text())
        config["chat_template"] = TEMPLATES[name]
        config["bos_token"] = "<|im_start|>"
        (d / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(str(d))
    ref = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"), eos_token=tok.eos_token,
        bos_token=tok.bos_token, pad_token=tok.pad_token)
    ref.chat_template = tok.chat_template
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": R.prompt}]
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_prompt(R, tok, template="chat", system=system) == expected
