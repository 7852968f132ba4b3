"""train.py with a hub name for --init (offline, from a hub-layout cache) and the TensorBoard viewer."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train
from tests.hub_layout import write_hub_repo
from training import TrainError
from training.loggers import LoggerError
from training.step_log import JsonlLog

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "synthetic.n_train": 120, "synthetic.n_test": 4, "synthetic.n_val": 0, "synthetic.n_terms": "[2, 3]",
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.intermediate_size": 64, "batch_size": 8, "micro_batch_size": 8,
    "stage1.max_steps": 2, "stage2.max_steps": 2, "val_every": 1, "val_examples": 8, "eval": "false",
    "compile_loss": "false",
}


def argv(out, **overrides):
    return ["--out", str(out)] + [x for k, v in {**TINY, **overrides}.items() for x in ("--set", f"{k}={v}")]


def test_stage_two_from_a_hub_name_offline_with_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    train.main(argv(tmp_path / "s1", stage="1") + ["--stage", "1"])
    final = tmp_path / "s1" / "stage1" / "final"
    files = {p.name: p for p in final.iterdir() if p.is_file()}
    snapshot = write_hub_repo(tmp_path / "hf" / "hub", "tiny-org/tiny-sftkey", files)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "s2"
    cmd = [sys.executable, "train.py", "--stage", "2", "--init", "tiny-org/tiny-sftkey", "--set", 'log=["tensorboard"]']
    p = subprocess.run(cmd + argv(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["init"] == "tiny-org/tiny-sftkey"  # the name, not the cache path
    losses = [(r["step"], r["loss"]) for r in JsonlLog(out / "log.jsonl").records() if r["type"] == "train"]
    assert [s for s, _ in losses] == [1, 2]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("stage2/train/loss")] == losses
    assert "stage2/val/val_key_nll" in events.Tags()["scalars"]
    assert snapshot.exists()


def test_hub_name_missing_offline_is_one_line(tmp_path):
    (tmp_path / "hf").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "train.py", "--stage", "2", "--init", "tiny-org/absent"] + argv(tmp_path / "run")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: 'tiny-org/absent' is not a local path") and "hf download tiny-org/absent" in last


def test_unknown_viewer_stops_before_the_data(tmp_path):
    with pytest.raises(TrainError, match=r"config: log = \['tensorbord'\]: need a list of viewer names"):
        train.main(argv(tmp_path / "run", log='["tensorbord"]'))
    assert not (tmp_path / "run").exists()


def test_a_missing_viewer_package_stops_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(LoggerError, match=r"log = \['wandb'\] needs the wandb package: pip install wandb"):
        train.main(argv(tmp_path / "run", log='["wandb"]'))
    assert not (tmp_path / "run").exists()
