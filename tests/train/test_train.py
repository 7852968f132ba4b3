"""train.py: the default run end to end (test-sized), exact accumulation, Key-only stage 2,
kill-and-resume equality, interrupted checkpoint writes, the NaN guard."""
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from data import collate
from data.roles import COT, KEY
from training import TrainError, checkpoint
from training.distributed import LossRoot
from training.step_log import JsonlLog

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "synthetic.n_train": 300, "synthetic.n_test": 8, "synthetic.n_terms": "[2, 5]", "synthetic.kind": "\"number\"",
    "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.intermediate_size": 64,
    "batch_size": 8, "micro_batch_size": 4, "stage1.max_steps": 4, "stage2.max_steps": 3,
    "val_every": 2, "val_examples": 16, "eval_max_new_tokens": 24, "compile_loss": "false",
}


def argv(out, **overrides):
    settings = {**TINY, **overrides}
    return ["--out", str(out)] + [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]


def final_weights(out, stage):
    return load_file(Path(out) / f"stage{stage}" / "final" / "model.safetensors")


def train_losses(out):
    return [(r["stage"], r["step"], r["loss"]) for r in JsonlLog(Path(out) / "log.jsonl").records()
            if r["type"] == "train"]


def test_default_config_end_to_end(tmp_path):
    results = train.main(argv(tmp_path / "run"))
    for stage in ("stage1", "stage2"):
        m = results[stage]
        assert m["n"] == 8 and 0.0 <= m["acc"] <= 1.0 and m["score"] == pytest.approx(0.7 * m["acc"] + 0.3 * m["fmt"])
        assert (tmp_path / "run" / stage / "eval" / "predictions.jsonl").exists()
        state = json.loads((tmp_path / "run" / stage / "final" / "train_state" / "state.json").read_text())
        assert state["done"] and state["config"]["stage2"]["weights"] == [0.0, 0.0, 1.0]
    log = JsonlLog(tmp_path / "run" / "log.jsonl").records()
    steps = [(r["stage"], r["step"]) for r in log if r["type"] == "train"]
    assert steps == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3)]
    stage2 = [r for r in log if r["type"] == "train" and r["stage"] == 2]
    assert all("key_loss" in r and "cot_loss" not in r for r in stage2)  # stage 2 trains the Key only
    vals = [r for r in log if r["type"] == "val"]
    assert {r["stage"] for r in vals} == {1, 2} and all("val_cot_nll" in r and "val_key_nll" in r for r in vals)
    assert all(r["supervised_tokens"] > 0 and r["tokens_per_s"] > 0 for r in stage2)


def setup_model(tmp_path, **overrides):
    cfg = train.parse_args(argv(tmp_path / "unused", precision="fp32", **overrides))
    tok, ds, _, _ = train.build_data(cfg)
    model = train.build_model(cfg, tok, torch.device("cpu"))
    return cfg, tok, ds, model


def loss_root(cfg, model, select_rows=True):
    """The module train.py's step calls, on one process in fp32."""
    return LossRoot(model, functools.partial(train.sftkey_loss, select_rows=select_rows, compile=cfg.compile_loss))


def one_step(cfg, model, micro, weights, sc=None):
    sc = sc or cfg.stage1
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train.accumulate_gradients(loss_root(cfg, model), micro, torch.tensor(weights + [0.0]), sc, scaler, "test")
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("weights", [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], ids=["stage1", "stage2"])
def test_accumulation_equals_full_batch(tmp_path, weights):
    cfg, tok, ds, model = setup_model(tmp_path)
    indices = list(range(8))
    micro = [collate(ds, indices[i:i + 2], tok.pad_id) for i in range(0, 8, 2)]
    supervised = [int(torch.tensor(weights + [0.0])[b["roles"]].sum()) for b in micro]
    assert len(set(supervised)) > 1, "the test needs micro-batches with different token counts"
    full = one_step(cfg, model, [collate(ds, indices, tok.pad_id)], weights)
    accumulated = one_step(cfg, model, micro, weights)
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], rtol=1e-5, atol=1e-7)
    # the 2024 bug: averaging per-micro-batch means gives a different gradient
    naive = {k: torch.zeros_like(v) for k, v in full.items()}
    for b in micro:
        for k, v in one_step(cfg, model, [b], weights).items():
            naive[k] += v / len(micro)
    assert not all(torch.allclose(naive[k], full[k], rtol=1e-4) for k in full)
    # and the same optimizer update
    updates = []
    for grads in (full, accumulated):
        cfg2, _, _, fresh = setup_model(tmp_path)
        opt = train.make_optimizer(fresh, 1e-3, cfg2, torch.device("cpu"))
        for name, p in fresh.named_parameters():
            p.grad = grads[name].clone()
        opt.step()
        updates.append({k: v.detach().clone() for k, v in fresh.named_parameters()})
    for name in updates[0]:
        torch.testing.assert_close(updates[1][name], updates[0][name], rtol=1e-5, atol=1e-6)  # lr 1e-3


@pytest.mark.parametrize("weights", [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]], ids=["stage1", "stage2"])
def test_selecting_the_weighted_rows_gives_the_full_forwards_gradients(tmp_path, weights):
    # select_rows (default): the last layer's queries and MLP only where a weighted target is
    cfg, tok, ds, model = setup_model(tmp_path)
    micro = [collate(ds, list(range(6)), tok.pad_id)]
    grads = {}
    for select in (True, False):
        model.zero_grad(set_to_none=True)
        loss, role_sum, role_count, _ = train.accumulate_gradients(
            loss_root(cfg, model, select), micro, torch.tensor(weights + [0.0]), cfg.stage1,
            torch.amp.GradScaler("cpu", enabled=False), "test")
        grads[select] = (loss, role_sum, role_count, {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_a, sum_a, count_a, a), (loss_b, sum_b, count_b, b) = grads[True], grads[False]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert torch.equal(count_a, count_b) and count_a.sum() > 0
    torch.testing.assert_close(sum_a, sum_b, rtol=1e-5, atol=1e-6)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_stage2_gradients_come_only_from_key_tokens(tmp_path):
    cfg, tok, ds, model = setup_model(tmp_path)
    batch = collate(ds, [0, 1, 2], tok.pad_id)
    base = one_step(cfg, model, [batch], [0.0, 0.0, 1.0], cfg.stage2)
    cot = (batch["roles"] == COT).nonzero()[5]
    key = (batch["roles"] == KEY).nonzero()[1]
    for position, should_change in ((cot, False), (key, True)):
        changed = {k: v.clone() for k, v in batch.items() if v is not None}
        changed["segment_ids"] = None
        b, t = position.tolist()
        changed["targets"][b, t] = (changed["targets"][b, t] + 7) % tok.vocab_size
        grads = one_step(cfg, model, [changed], [0.0, 0.0, 1.0], cfg.stage2)
        same = all(torch.equal(grads[k], base[k]) for k in base)
        assert same != should_change


def test_kill_and_resume_reproduces_the_uninterrupted_run(tmp_path):
    settings = {"stage1.max_steps": 25, "stage2.max_steps": 15, "ckpt_every": 1, "eval": "false"}
    train.main(argv(tmp_path / "straight", **settings))
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "train.py"] + argv(killed, **settings), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(killed.glob("stage1/step_00000[3-9]")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "stage2" / "final").exists()
    train.main(["--out", str(killed), "--resume"])
    assert train_losses(killed) == train_losses(tmp_path / "straight")
    for stage in (1, 2):
        a, b = final_weights(tmp_path / "straight", stage), final_weights(killed, stage)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_crash_while_writing_a_checkpoint_resumes_from_the_previous_one(tmp_path, monkeypatch):
    settings = {"ckpt_every": 1, "eval": "false"}
    train.main(argv(tmp_path / "straight", **settings))
    real = checkpoint.write_json

    def crash_at_step3(path, obj):
        if Path(path).name == "state.json" and obj.get("stage") == 1 and obj.get("step") == 3:
            raise KeyboardInterrupt("simulated kill while writing the step-3 checkpoint")
        real(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", crash_at_step3)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(out, **settings))
    assert (out / "stage1" / ".tmp-step_000003").exists()
    assert sorted(p.name for p in (out / "stage1").glob("step_*")) == ["step_000001", "step_000002"]
    monkeypatch.setattr(checkpoint, "write_json", real)
    train.main(["--out", str(out), "--resume"])
    assert not list(out.glob("stage1/.tmp-*"))
    assert train_losses(out) == train_losses(tmp_path / "straight")
    a, b = final_weights(tmp_path / "straight", 2), final_weights(out, 2)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = train.weighted_linear_cross_entropy
    calls = {"n": 0}

    def nan_on_third_step(*args, **kwargs):
        loss, s, c = real(*args, **kwargs)
        calls["n"] += torch.is_grad_enabled()  # validation batches do not count
        return (loss * float("nan"), s, c) if calls["n"] > 4 else (loss, s, c)  # 2 micro-batches a step

    monkeypatch.setattr(train, "weighted_linear_cross_entropy", nan_on_third_step)
    out = tmp_path / "nan"
    with pytest.raises(TrainError, match="stage 1 step 3: loss is nan"):
        train.main(argv(out, ckpt_every=1, val_every=0))
    checkpoint = out / "stage1" / "step_000002"
    assert json.loads((checkpoint / "train_state" / "state.json").read_text())["step"] == 2
    assert not (out / "stage1" / "final").exists()


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(TrainError, match="unknown field 'lrr'"):
        train.parse_args(["--set", "stage1.lrr=1"])
    with pytest.raises(TrainError, match="expected float"):
        train.parse_args(["--set", "stage1.lr=fast"])
    with pytest.raises(TrainError, match="--stage 2 needs --init"):
        train.parse_args(["--stage", "2"])
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 1\n[stage1]\nwarmpu = 3\n")
    with pytest.raises(TrainError, match="unknown field 'warmpu'"):
        train.parse_args(["--config", str(bad)])


def test_tags_as_special_grows_a_pretrained_vocabulary_and_saves_the_tokenizer(tmp_path):
    # a "pretrained" model whose tokenizer lacks the tags (the synthetic tokenizer's last four
    # tokens, cut from a stage-1 checkpoint), then stage 2 from it with the tags registered as
    # special tokens: the embedding grows by four rows and the checkpoint keeps the new tokenizer
    from safetensors.torch import save_file

    from data import load_tokenizer
    train.main(argv(tmp_path / "base", stage=1, eval="false"))
    base, cut = tmp_path / "base" / "stage1" / "final", tmp_path / "cut"
    cut.mkdir()
    config = json.loads((base / "config.json").read_text())
    tokenizer = json.loads((base / "tokenizer.json").read_text())
    tags = ("<Thinking>", "</Thinking>", "<Answer>", "</Answer>")
    vocab = config["vocab_size"] - 4
    assert sorted(t["id"] for t in tokenizer["added_tokens"] if t["content"] in tags) == \
        list(range(vocab, vocab + 4))
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] not in tags]
    (cut / "tokenizer.json").write_text(json.dumps(tokenizer))
    (cut / "config.json").write_text(json.dumps(dict(config, vocab_size=vocab)))
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).exists():
            (cut / name).write_text((base / name).read_text())
    weights = final_weights(tmp_path / "base", 1)
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:vocab].clone()
    save_file(weights, cut / "model.safetensors")
    assert load_tokenizer(str(cut)).vocab_size == vocab

    results = train.main(argv(tmp_path / "tags", stage=2, init=str(cut), tags_as_special="true"))
    final = tmp_path / "tags" / "stage2" / "final"
    assert json.loads((final / "config.json").read_text())["vocab_size"] == vocab + 4
    grown = final_weights(tmp_path / "tags", 2)["model.embed_tokens.weight"]
    assert grown.shape[0] == vocab + 4
    added = {t["content"]: t for t in json.loads((final / "tokenizer.json").read_text())["added_tokens"]}
    assert all(added[tag]["special"] for tag in tags)
    assert load_tokenizer(str(final)).encode("<Answer>") == [vocab + 2]
    assert results["stage2"]["n"] == 8


def test_a_tokenizer_larger_than_the_model_is_an_error_not_a_resize(tmp_path):
    train.main(argv(tmp_path / "base", stage=1, eval="false"))
    base, cut = tmp_path / "base" / "stage1" / "final", tmp_path / "cut"
    cut.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (base / name).exists():
            (cut / name).write_text((base / name).read_text())
    config = json.loads((base / "config.json").read_text())
    (cut / "config.json").write_text(json.dumps(dict(config, vocab_size=config["vocab_size"] - 10)))
    weights = final_weights(tmp_path / "base", 1)
    weights["model.embed_tokens.weight"] = weights["model.embed_tokens.weight"][:-10].clone()
    from safetensors.torch import save_file
    save_file(weights, cut / "model.safetensors")
    with pytest.raises(TrainError, match="not this model's tokenizer"):
        train.main(argv(tmp_path / "run", stage=2, init=str(cut)))
