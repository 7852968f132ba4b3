"""Every token gets the right role: properties over random records and the straddling rule."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import COT, KEY, PROMPT, Record, build_dataset, render_prompt, render_response
from data.tokenize import response_roles

ALPHABET = "ab xy<>/\n0123456789+=.TheanswrisThinkingAnswer"
text = st.text(alphabet=ALPHABET, max_size=40)
answer = st.text(alphabet=ALPHABET, min_size=1, max_size=8).filter(lambda s: s.strip())
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def check_example(tok, record, style):
    ds = build_dataset([record], tok, style=style, max_len=None)
    ids, roles = ds.ids[0], ds.roles[0]
    n_prompt = len(tok.encode(render_prompt(record, tok)))
    response, key_start = render_response(record, style)
    # Roles cover every token; the prompt is all PROMPT and nothing after it is.
    assert len(roles) == len(ids) and set(roles.tolist()) <= {PROMPT, COT, KEY}
    assert (roles[:n_prompt] == PROMPT).all() and (roles[n_prompt:] != PROMPT).all()
    # Roles are monotone: COT then KEY, and the last token is EOS (KEY).
    resp_roles = roles[n_prompt:]
    assert (np.diff(resp_roles.astype(int)) >= 0).all()
    assert ids[-1] == tok.eos_id and roles[-1] == KEY
    # KEY tokens decode to the Key span, plus at most the straddling token's COT characters.
    key_ids = ids[roles == KEY][:-1].tolist()
    decoded = tok.decode(key_ids)
    key_text = response[key_start:]
    assert decoded.endswith(key_text), (decoded, key_text)
    spill = decoded[: len(decoded) - len(key_text)]
    assert response[:key_start].endswith(spill)
    # COT tokens decode to the response's COT text without any Key character.
    cot_ids = ids[roles == COT].tolist()
    assert response[:key_start].startswith(tok.decode(cot_ids))
    return decoded, key_text


@SETTINGS
@given(prompt=text.filter(lambda s: s.strip()), thinking=text, ans=answer,
       style=st.sampled_from(["tagged", "plain"]))
def test_roles_properties_bytelevel_bpe(bl_tok, prompt, thinking, ans, style):
    check_example(bl_tok, Record(prompt, thinking, ans, "x", "f:1"), style)


@SETTINGS
@given(prompt=text.filter(lambda s: s.strip()), thinking=text, ans=answer,
       style=st.sampled_from(["tagged", "plain"]))
def test_roles_properties_synthetic_tokenizer(syn_tok, prompt, thinking, ans, style):
    decoded, key_text = check_example(syn_tok, Record(prompt, thinking, ans, "x", "f:1"), style)
    if style == "tagged":  # tags are whole tokens here: the KEY tokens are exactly the Key span
        assert decoded == key_text == f"<Answer>{ans}</Answer>"


def test_tagged_key_starts_after_thinking_close(syn_tok):
    r = Record("What is 1 + 2?", "1 + 2 = 3", "3", "x", "f:1")
    ds = build_dataset([r], syn_tok, style="tagged")
    tokens = [syn_tok.decode([i]) for i in ds.ids[0]]
    roles = ds.roles[0].tolist()
    k = tokens.index("</Thinking>")
    assert roles[k] == COT and roles[k + 1] == KEY and tokens[k + 1] == "<Answer>"
    assert tokens[k + 1:] == ["<Answer>", "3", "</Answer>", "<eos>"]
    assert roles[k + 1:] == [KEY] * 4
    assert tokens[roles.index(COT)] == "<Thinking>"


def test_plain_key_starts_at_answer_phrase(syn_tok):
    r = Record("What is 1 + 2?", "1 + 2 = 3", "3", "x", "f:1")
    ds = build_dataset([r], syn_tok, style="plain")
    ids, roles = ds.ids[0], ds.roles[0]
    assert syn_tok.decode(ids[roles == KEY][:-1].tolist()) == "The answer is 3"
    assert syn_tok.decode(ids[roles == COT].tolist()) == "1 + 2 = 3\n"


def test_straddling_token_is_key(bl_tok):
    # Byte-level BPE merges '><' across "</Thinking><Answer>": the token takes its last char's role.
    r = Record("q", "a b 7", "42", "x", "f:1")
    ds = build_dataset([r], bl_tok, style="tagged")
    ids, roles = ds.ids[0], ds.roles[0]
    tokens = [bl_tok.decode([i]) for i in ids]
    k = tokens.index("><")
    assert roles[k] == KEY and roles[k - 1] == COT
    assert bl_tok.decode(ids[roles == KEY][:-1].tolist()) == "><Answer>42</Answer>"


def test_response_roles_rule_on_offsets():
    # Boundary at char 10: a token ending at 10 is COT, one ending at 11 (straddling) is KEY.
    offsets = [(0, 5), (5, 10), (9, 11), (11, 12), (12, 12)]
    assert response_roles(offsets, 10).tolist() == [COT, COT, KEY, KEY, KEY]


def test_tags_as_special_tokens(bl_dir):
    from data import load_tokenizer
    tok = load_tokenizer(bl_dir)
    before = tok.vocab_size
    ds = build_dataset([Record("q", "a b 7", "42", "x", "f:1")], tok, style="tagged",
                       tags_as_special=True)
    assert ds.stats["added_tokens"] == 4 and tok.vocab_size == before + 4
    ids, roles = ds.ids[0], ds.roles[0]
    key = ids[roles == KEY].tolist()
    assert key[0] == tok.token_to_id("<Answer>") and key[-2] == tok.token_to_id("</Answer>")
    assert tok.decode(key[:-1]) == "<Answer>42</Answer>"
