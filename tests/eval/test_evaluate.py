import json

import pytest
import torch

from data import Record, load_tokenizer
from eval import evaluate
from eval.__main__ import main


class ScriptedModel(torch.nn.Module):
    """Follows the model contract but emits a fixed response per prompt: one-hot hidden states
    through an identity output matrix. Checks that padding carries segment id 0."""

    def __init__(self, scripts, vocab_size, eos_id):
        super().__init__()
        self.scripts, self.eos_id = scripts, eos_id
        self.weight = torch.nn.Parameter(torch.eye(vocab_size))

    @property
    def output_weight(self):
        return self.weight

    def new_cache(self, batch_size, max_len):
        return {"rows": None, "step": 0}

    def forward(self, input_ids, positions=None, segment_ids=None, cache=None, return_hidden=False):
        if cache["rows"] is None:
            real = segment_ids.bool() if segment_ids is not None else torch.ones_like(input_ids).bool()
            cache["rows"] = [self.scripts[tuple(ids[mask].tolist())]
                             for ids, mask in zip(input_ids, real)]
        step = cache["step"]
        cache["step"] += 1
        nxt = [row[step] if step < len(row) else self.eos_id for row in cache["rows"]]
        hidden = torch.zeros(input_ids.shape[0], input_ids.shape[1], self.weight.shape[0])
        hidden[torch.arange(len(nxt)), -1, torch.tensor(nxt)] = 1.0
        return hidden


RESPONSES = [
    ("What is 12 + 30?", "42", "<Thinking>12 + 30 = 42</Thinking><Answer>42</Answer>"),
    ("What is 1 + 2?", "3", "<Thinking>1 + 2 = 3</Thinking><Answer>4</Answer>"),
    ("What is 5 + 5 + 5?", "15", "5 + 5 = 10\n10 + 5 = 15 The answer is 15"),
    ("What is 7 + 1?", "8", "<Thinking>7 + 1 = 8</Thinking><Answer>8</Answer> and more text"),
    ("What is 20 + 22 + 1?", "43", "<Thinking>20 + 22 = 42\n42 + 1 = 43</Thinking><Answer>43"),
]


def scripted(tok, responses, eos_after=True):
    from data import render_prompt
    records, scripts = [], {}
    for i, (prompt, answer, response) in enumerate(responses):
        record = Record(prompt=prompt, thinking="", answer=answer, id=f"r{i}", source=f"t:{i + 1}",
                        kind="number")
        records.append(record)
        ids = tok.encode(response) + ([tok.eos_id] if eos_after else [])
        scripts[tuple(tok.encode(render_prompt(record, tok)))] = ids
    return records, ScriptedModel(scripts, tok.vocab_size, tok.eos_id)


def test_tagged_pipeline_judges_each_output(syn_tok, tmp_path):
    records, model = scripted(syn_tok, RESPONSES)
    metrics = evaluate(model, syn_tok, records, style="tagged", max_new_tokens=64, batch_size=3,
                       out_dir=tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
    assert [r["correct"] for r in rows] == [True, False, False, True, True]
    assert [r["format_ok"] for r in rows] == [True, True, False, True, False]
    assert [r["extracted"] for r in rows] == ["42", "4", None, "8", "43"]
    # generation stopped at </Answer>: nothing after it, no EOS text
    assert rows[3]["output"] == "<Thinking>7 + 1 = 8</Thinking><Answer>8</Answer>"
    assert [r["stopped"] for r in rows] == ["stop", "stop", "eos", "stop", "eos"]
    assert rows[0]["prompt"].startswith("Problem: What is 12 + 30?")
    assert metrics["acc"] == pytest.approx(0.6) and metrics["fmt"] == pytest.approx(0.6)
    assert metrics["score"] == pytest.approx(0.6)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["n"] == 5 and metrics["no_answer"] == pytest.approx(0.2)


def test_plain_pipeline_reads_the_answer_phrase(syn_tok):
    records, model = scripted(syn_tok, RESPONSES[2:3] + [
        ("What is 2 + 2?", "4", "2 + 2 = 4\nThe answer is 4"),
        ("What is 9 + 9?", "18", "9 + 9 = 17")])
    metrics = evaluate(model, syn_tok, records, style="plain", max_new_tokens=64)
    assert metrics["acc"] == pytest.approx(2 / 3)
    assert metrics["fmt"] == 0.0


def test_max_new_tokens_truncates(syn_tok):
    records, model = scripted(syn_tok, RESPONSES[:1], eos_after=False)
    metrics = evaluate(model, syn_tok, records, style="tagged", max_new_tokens=5)
    assert metrics["hit_max_new_tokens"] == 1.0 and metrics["acc"] == 0.0


def test_cli_runs_a_real_decoder_and_names_bad_paths(task, syn_tok, tmp_path, capsys):
    from model import Decoder, ModelConfig, save_pretrained
    config = ModelConfig(vocab_size=syn_tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, intermediate_size=64,
                         eos_token_id=syn_tok.eos_id, pad_token_id=syn_tok.pad_id)
    decoder = Decoder(config)
    decoder.init_weights(0)
    save_pretrained(decoder, tmp_path / "ckpt", tokenizer_dir=task["tokenizer"])
    out = tmp_path / "out"
    metrics = main(["--model", str(tmp_path / "ckpt"), "--data", task["test"], "--out", str(out),
                    "--limit", "3", "--max-new-tokens", "6", "--batch-size", "2"])
    assert metrics["n"] == 3
    assert '"acc"' in capsys.readouterr().out
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    with pytest.raises(SystemExit, match="no config.json"):
        main(["--model", str(tmp_path / "nope"), "--data", task["test"], "--out", str(out)])
    with pytest.raises(SystemExit, match="--data .*no such file"):
        main(["--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "x.jsonl"),
              "--out", str(out)])


def test_bad_style_is_named(syn_tok):
    with pytest.raises(ValueError, match="style"):
        evaluate(None, syn_tok, [], style="tag")


def test_tags_registered_as_special_tokens_survive_decoding(task):
    special_tok = load_tokenizer(task["tokenizer"])
    special_tok.add_special_tokens(["<Thinking>", "</Thinking>", "<Answer>", "</Answer>"])
    records, model = scripted(special_tok, RESPONSES[:1])
    metrics = evaluate(model, special_tok, records, style="tagged", max_new_tokens=64)
    assert metrics["acc"] == 1.0 and metrics["fmt"] == 1.0
