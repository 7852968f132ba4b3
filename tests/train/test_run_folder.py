"""A run folder is never lost: a fresh run refuses an occupied --out, --overwrite deletes only after
every check and never its own --init, --resume refuses a changed config, a failed start leaves
nothing behind, and what a kill leaves (a torn log line, stale step checkpoints) does not block
resuming."""
import dataclasses
import json
import shutil
import subprocess
import sys

import pytest
import torch

import train
from atomic_io import write_json
from tests.train.test_train import ROOT, argv, final_weights, train_losses
from training import TrainError, checkpoint
from training.step_log import JsonlLog

QUICK = {"stage1.max_steps": 2, "stage2.max_steps": 2, "eval": "false"}


def snapshot(folder):
    """Every file under folder with its bytes: equal snapshots, untouched folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-stage run (its folder is copied before a test changes it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train.main(argv(out, **QUICK))
    return out


def copy_of(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_a_fresh_run_into_an_occupied_out_is_refused_and_changes_nothing(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    with pytest.raises(TrainError) as raised:
        train.main(argv(out, **QUICK))
    assert str(raised.value) == (f"--out {out} holds a run (config.json, log.jsonl, stage1, stage2, machine.json): continue "
                                 "it with --resume, replace it with --overwrite, or choose another --out")
    assert snapshot(out) == before


def test_stage2_into_the_folder_of_its_own_init_never_deletes_the_init(finished, tmp_path):
    # the example: --stage 2 --init runs/s1/stage1/final --out runs/s1
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    init = str(out / "stage1" / "final")
    with pytest.raises(TrainError, match="holds a run"):
        train.main(argv(out, stage=2, init=init, **QUICK) + ["--stage", "2", "--init", init])
    with pytest.raises(TrainError, match=f"--init {init} lies inside --out {out}, which --overwrite would delete"):
        train.main(argv(out, **QUICK) + ["--stage", "2", "--init", init, "--overwrite"])
    assert snapshot(out) == before


@pytest.mark.parametrize("case", ["missing_data", "missing_init", "init_without_tokenizer", "bad_config"])
def test_overwrite_deletes_nothing_when_a_check_fails(case, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = snapshot(out)
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(out / "stage1" / "final", no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    extra, expected = {
        "missing_data": (["--set", "train_data=missing.jsonl", "--set", "data_format=gsm8k",
                          "--set", f"tokenizer={out / 'stage1' / 'final'}"], "missing.jsonl"),
        "missing_init": (["--stage", "2", "--init", str(tmp_path / "nowhere")], "nowhere"),
        "init_without_tokenizer": (["--stage", "2", "--init", str(no_tokenizer)], "tokenizer.json"),
        "bad_config": (["--set", "grad_clip=-1"], "grad_clip = -1.0"),
    }[case]
    result = subprocess.run([sys.executable, "train.py"] + argv(out, **QUICK) + extra + ["--overwrite"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert snapshot(out) == before


def test_overwrite_replaces_the_run_once_the_checks_pass(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / "train.out").write_text("not a run output")
    (out / "stage2" / "stale").mkdir()
    train.main(argv(out, **{**QUICK, "stage2.max_steps": 1}) + ["--overwrite"])
    assert [(s, n) for s, n, _ in train_losses(out)] == [(1, 1), (1, 2), (2, 1)]
    assert not (out / "stage2" / "stale").exists() and (out / "train.out").read_text() == "not a run output"
    assert json.loads((out / "config.json").read_text())["stage2"]["max_steps"] == 1


def test_a_failed_fresh_start_leaves_no_folder(finished, tmp_path):
    out = tmp_path / "run"
    with pytest.raises((TrainError, ValueError, OSError), match="missing.jsonl"):
        train.main(argv(out, **QUICK) + ["--set", "train_data=missing.jsonl", "--set", "data_format=gsm8k",
                                         "--set", f"tokenizer={finished / 'stage1' / 'final'}"])
    assert not out.exists()


def saved_run(tmp_path, *extra):
    """A run folder holding only the config.json a fresh start with argv(...) + extra writes."""
    out = tmp_path / "run"
    out.mkdir()
    write_json(out / "config.json", dataclasses.asdict(train.parse_args(argv(out, **QUICK) + list(extra))))
    return out


@pytest.mark.parametrize("extra, named", [
    (["--set", "stage1.lr=2e-3"], "stage1.lr: 0.00025 there, 0.002 now"),
    (["--set", "batch_size=16"], "batch_size: 8 there, 16 now"),
    (["--set", "stage1.weights=[0, 1, 5]"], "stage1.weights: [0.0, 1.0, 1.0] there, [0, 1, 5] now"),
    (["--set", "model.hidden_size=64"], "model.hidden_size: 32 there, 64 now"),
    (["--seed", "7"], "seed: 1234 there, 7 now"),
    (["--stage", "1"], "stage: 'both' there, '1' now"),
])
def test_resume_refuses_a_changed_config_naming_the_fields(extra, named, tmp_path):
    out = saved_run(tmp_path)
    with pytest.raises(TrainError) as raised:
        train.parse_args(argv(out, **QUICK) + list(extra) + ["--resume"])
    assert f"--resume: {out} was started with another config (" in str(raised.value)
    assert named in str(raised.value)


def test_resume_refuses_another_config_file(tmp_path):
    out = saved_run(tmp_path)
    other = tmp_path / "other.toml"
    other.write_text(train.DEFAULT_CONFIG.read_text().replace("seed = 1234", "seed = 99"))
    with pytest.raises(TrainError, match="seed: 1234 there, 99 now"):
        train.parse_args(argv(out, **QUICK) + ["--config", str(other), "--resume"])


def test_resume_accepts_run_only_fields_and_the_saved_config_alone(tmp_path):
    out = saved_run(tmp_path)
    cfg = train.parse_args(argv(out, **QUICK) + ["--set", "eval_batch_size=3", "--set", "val_every=5",
                                                 "--parallel", "none", "--resume"])
    assert cfg.eval_batch_size == 3 and cfg.resume
    alone = train.parse_args(["--out", str(out), "--resume"])  # the saved config, not the default file
    assert alone.stage1.max_steps == 2 and alone.model["hidden_size"] == 32


@pytest.mark.parametrize("case", ["missing", "empty", "bad_json"])
def test_resume_of_no_run_is_an_error(case, tmp_path):
    out = tmp_path / "run"
    if case != "missing":
        out.mkdir()
    if case == "bad_json":
        (out / "config.json").write_text('{"seed": 1,')
    with pytest.raises(TrainError) as raised:
        train.parse_args(["--out", str(out), "--resume"])
    expected = (f"{out / 'config.json'}: not valid JSON" if case == "bad_json" else
                f"--resume: {out} holds no run to continue (no config.json); start it without --resume")
    assert expected in str(raised.value)
    assert case != "missing" or not out.exists()


def test_resume_keeps_the_step0_validation_and_drops_a_torn_line(tmp_path, monkeypatch, capsys):
    settings = {"ckpt_every": 1, "eval": "false", "stage1.max_steps": 4, "stage2.max_steps": 2}
    train.main(argv(tmp_path / "straight", **settings))
    real = checkpoint.save

    def kill_at_step3(path, *args, **kwargs):
        if path.name == "step_000003" and path.parent.name == "stage1":
            raise KeyboardInterrupt("simulated kill before the step-3 checkpoint")
        real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", kill_at_step3)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(out, **settings))
    monkeypatch.setattr(checkpoint, "save", real)
    with open(out / "log.jsonl", "a") as f:
        f.write('{"stage": 1, "step": 4, "type": "tr')  # a write cut short by the kill
    capsys.readouterr()
    train.main(["--out", str(out), "--resume"])
    assert "log.jsonl: dropped a torn last line left by the killed run" in capsys.readouterr().out

    def timeless(records):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "peak_mem_gb")} for r in records]
    straight, resumed = JsonlLog(tmp_path / "straight" / "log.jsonl").records(), JsonlLog(out / "log.jsonl").records()
    assert {"stage": 1, "step": 0, "type": "val"}.items() <= resumed[0].items()
    assert timeless(resumed) == timeless(straight)


def test_step_checkpoints_left_after_the_final_save_go_on_resume(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    stale = out / "stage1" / "step_000001"
    shutil.copytree(out / "stage1" / "final", stale)  # a kill after saving final, before the clean-up
    train.main(["--out", str(out), "--resume"])
    assert sorted(p.name for p in (out / "stage1").iterdir()) == ["final"]


@pytest.mark.parametrize("damaged, expected", [
    ("log.jsonl", "log.jsonl:1: not a JSON line"),
    ("state.json", "train_state/state.json: not valid JSON"),
])
def test_json_errors_name_the_file(damaged, expected, tmp_path, monkeypatch):
    settings = {"ckpt_every": 1, "eval": "false", "stage1.max_steps": 3, "stage2.max_steps": 1}
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "remove_step_checkpoints", lambda *a, **k: None)  # keep step checkpoints
        train.main(argv(out, **settings))
    shutil.rmtree(out / "stage1" / "final")
    shutil.rmtree(out / "stage2")
    if damaged == "log.jsonl":
        (out / "log.jsonl").write_text("{not json}\n" + (out / "log.jsonl").read_text())
    else:
        (out / "stage1" / "step_000002" / "train_state" / "state.json").write_text("{")
    result = subprocess.run([sys.executable, "train.py", "--out", str(out), "--resume"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_non_finite_weights_stop_the_run_before_any_checkpoint(tmp_path, monkeypatch):
    real = train.make_optimizer

    def poisoned(model, *args):
        optimizer = real(model, *args)
        step = optimizer.step

        def step_then_poison(*a, **k):
            result = step(*a, **k)
            with torch.no_grad():
                model.layers[1].mlp.down.weight[0, 0] = float("inf")  # as an overflowing update would
            return result
        optimizer.step = step_then_poison
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainError) as raised:
        train.main(argv(out, ckpt_every=1, **QUICK))
    assert str(raised.value) == (
        "stage 1 step 1: weight layers.1.mlp.down.weight is not finite after the optimizer step "
        "(1 non-finite values); stopping before any checkpoint is written from it; "
        f"{out / 'stage1'} has no checkpoint yet (--resume restarts this stage)")
    assert [p.name for p in (out / "stage1").iterdir()] == []


def test_an_infinite_lr_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--out", str(tmp_path / "run"), "--stage", "1",
                             "--set", "stage1.lr=inf", "--set", "stage1.max_steps=1"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "train.py: config: stage1.lr = inf: need a finite number\n"
    assert not (tmp_path / "run").exists()


def test_a_read_only_out_is_one_line(tmp_path, monkeypatch):
    import atomic_io
    real = atomic_io.write_json

    def read_only(path, obj):
        if path.name == "config.json":
            raise OSError(30, "Read-only file system", str(path))
        real(path, obj)

    monkeypatch.setattr(atomic_io, "write_json", read_only)  # what train.py imports when run
    monkeypatch.setattr(sys, "argv", ["train.py"] + argv(tmp_path / "run", **QUICK))
    import runpy
    with pytest.raises(SystemExit) as raised:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    assert str(raised.value) == f"train.py: [Errno 30] Read-only file system: '{tmp_path / 'run' / 'config.json'}'"


def test_resume_and_overwrite_are_flags_not_settings(tmp_path):
    with pytest.raises(TrainError, match="--set: resume and overwrite are command-line flags"):
        train.parse_args(["--out", str(tmp_path / "run"), "--set", "resume=true"])
    (tmp_path / "x.toml").write_text("overwrite = true\n" + train.DEFAULT_CONFIG.read_text())
    with pytest.raises(TrainError, match="x.toml: resume and overwrite are command-line flags"):
        train.parse_args(["--config", str(tmp_path / "x.toml"), "--out", str(tmp_path / "run")])


def test_resume_finds_the_run_named_by_set_out(tmp_path):
    out = saved_run(tmp_path)
    cfg = train.parse_args(["--set", f"out='{out}'", "--resume"])
    assert cfg.out == str(out) and cfg.stage1.max_steps == 2
