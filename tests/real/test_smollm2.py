"""The real recipe (configs/smollm2_gsm8k.toml) end to end on 8 examples, then the stage-2
checkpoint in transformers: it loads, and its greedy tokens equal eval.generate's.

    bash scripts/fetch_real.sh              # once: downloads/ (model + GSM8K), git-ignored
    python -m pytest -m slow tests/real     # not run by CI (pytest.ini skips `slow`)

Data: the GSM8K test set split by scripts/split_jsonl.py (no train split offline), written to a
temporary folder so the test does not depend on downloads/gsm8k_split.
"""
import gzip
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "downloads" / "SmolLM2-135M-Instruct"
GSM8K = ROOT / "downloads" / "olmo" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
CONFIG = ROOT / "configs" / "smollm2_gsm8k.toml"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MODEL / "model.safetensors").exists() or not GSM8K.exists(),
                       reason=f"real files missing ({MODEL.relative_to(ROOT)}, "
                              f"{GSM8K.relative_to(ROOT)}): run `bash scripts/fetch_real.sh` first"),
]

# The recipe as configured, shrunk: 8 training examples, 2 optimizer steps per stage, 3 questions.
SMALL = {"limit_train": 8, "batch_size": 4, "micro_batch_size": 2, "stage1.max_steps": 2,
         "stage2.max_steps": 2, "stage1.warmup_steps": 1, "stage2.warmup_steps": 1,
         "limit_eval": 3, "eval_max_new_tokens": 24, "eval_batch_size": 3,
         "compile_loss": "false"}  # torch.compile of the loss costs minutes on 2 cores; same math eager


def load_split_module():
    spec = importlib.util.spec_from_file_location("split_jsonl", ROOT / "scripts" / "split_jsonl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import train

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    root = tmp_path_factory.mktemp("smollm2_gsm8k")
    n_train, n_test = load_split_module().split(str(GSM8K), str(root / "split"), test_size=319, seed=0)
    assert (n_train, n_test) == (1000, 319)
    overrides = {**SMALL, "train_data": str(root / "split" / "train.jsonl.gz"),
                 "eval_data": str(root / "split" / "test.jsonl.gz"), "init": str(MODEL)}
    argv = ["--config", str(CONFIG), "--out", str(root / "run")]
    argv += [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    results = train.main(argv)
    return root / "run", results


def test_split_is_disjoint_and_keeps_the_format(run, tmp_path):
    from data import load_records

    split = run[0].parent / "split"
    train_ids = {r.id for r in load_records(str(split / "train.jsonl.gz"), format="olmo")}
    test_ids = {r.id for r in load_records(str(split / "test.jsonl.gz"), format="olmo")}
    assert len(train_ids) == 1000 and len(test_ids) == 319 and not train_ids & test_ids
    again = load_split_module().split(str(GSM8K), str(tmp_path), test_size=319, seed=0)
    assert again == (1000, 319)
    assert gzip.open(tmp_path / "test.jsonl.gz").read() == gzip.open(split / "test.jsonl.gz").read()


def test_both_stages_train_and_evaluate(run):
    from training.step_log import JsonlLog

    out, results = run
    for stage in ("stage1", "stage2"):
        m = results[stage]
        assert m["n"] == 3 and 0.0 <= m["acc"] <= 1.0 and 0.0 <= m["fmt"] <= 1.0
        assert m["score"] == pytest.approx(0.7 * m["acc"] + 0.3 * m["fmt"])
        assert (out / stage / "final" / "model.safetensors").exists()
        assert (out / stage / "eval" / "predictions.jsonl").exists()
    log = JsonlLog(out / "log.jsonl").records()
    steps = [(r["stage"], r["step"]) for r in log if r["type"] == "train"]
    assert steps == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for r in log:
        if r["type"] == "train":
            assert torch.isfinite(torch.tensor(r["loss"])) and r["tokens_per_s"] > 0
            # stage 2 is Key-only: no CoT token reaches the loss
            assert ("cot_loss" in r) == (r["stage"] == 1) and "key_loss" in r


def test_stage2_checkpoint_loads_in_transformers_and_generates_the_same_greedy_tokens(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data import load_records, load_tokenizer, render_prompt
    from eval.generate import generate
    from model import load_pretrained

    ckpt = run[0] / "stage2" / "final"
    reference = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ours = load_pretrained(ckpt, dtype=torch.float32)
    tok = load_tokenizer(ckpt)
    hf_tok = AutoTokenizer.from_pretrained(ckpt)
    records = load_records(str(run[0].parent / "split" / "test.jsonl.gz"), format="olmo", limit=2)
    prompts = [tok.encode(render_prompt(r, tok, "plain")) for r in records]
    for record, ids in zip(records, prompts):
        assert ids == hf_tok(render_prompt(record, tok, "plain"), add_special_tokens=False)["input_ids"]
    eos = [tok.eos_id]
    new_tokens = 32
    mine = generate(ours, prompts, new_tokens, eos, batch_size=2, pad_id=tok.pad_id)  # left-padded batch
    for ids, our_new in zip(prompts, mine):
        with torch.no_grad():
            out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos,
                                     pad_token_id=tok.pad_id)
        theirs = out[0, len(ids):].tolist()
        assert our_new == theirs, f"ours {tok.decode(our_new)!r} vs transformers {tok.decode(theirs)!r}"
        assert len(our_new) > 0
