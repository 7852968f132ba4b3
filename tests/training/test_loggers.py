"""TensorBoard and W&B viewers get the step log's numbers; packages load only when asked for."""
import subprocess
import sys
import types
from pathlib import Path

import pytest

from training.loggers import LoggerError, ViewedLog, open_viewers, scalars

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [dict(stage=1, step=1, type="train", loss=2.5, lr=1e-4, cot_loss=2.7, key_loss=1.5, tokens_per_s=900.0),
           dict(stage=1, step=2, type="train", loss=2.0, lr=2e-4, cot_loss=2.2, key_loss=1.0, tokens_per_s=950.0),
           dict(stage=1, step=2, type="val", val_cot_nll=2.1, val_key_nll=0.9),
           dict(stage=2, step=1, type="train", loss=0.5, lr=5e-5, key_loss=0.5, tokens_per_s=1000.0)]


class ListLog:
    def __init__(self):
        self.lines = []

    def write(self, record):
        self.lines.append(record)

    def truncate(self, stage, step):
        self.lines = [r for r in self.lines if (r["stage"], r["step"]) <= (stage, step)]

    def records(self):
        return list(self.lines)


def test_scalars_are_tagged_by_stage_and_kind():
    assert dict(scalars(RECORDS[2])) == {"stage1/val/val_cot_nll": 2.1, "stage1/val/val_key_nll": 0.9}
    assert dict(scalars(dict(stage=2, step=3, loss=1.0, done=True, note="x"))) == {"stage2/train/loss": 1.0}


def test_tensorboard_event_file_holds_every_number(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log = ViewedLog(ListLog(), open_viewers(["tensorboard"], str(tmp_path), {"seed": 1}))
    for record in RECORDS:
        log.write(record)
    log.close()
    assert log.records() == RECORDS  # the step log itself is untouched
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    expected = {}
    for record in RECORDS:
        for tag, value in scalars(record):
            expected.setdefault(tag, []).append((record["step"], value))
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(s, pytest.approx(v, rel=1e-6)) for s, v in points], tag


def test_wandb_gets_each_stage_against_its_own_step(tmp_path, monkeypatch):
    calls = []
    run = types.SimpleNamespace(define_metric=lambda *a, **k: calls.append(("define", a, k)),
                                log=lambda d: calls.append(("log", d)), finish=lambda: calls.append(("finish",)))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return run

    fake = types.SimpleNamespace(init=init, util=types.SimpleNamespace(generate_id=lambda: "abc123"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    log = ViewedLog(ListLog(), open_viewers(["wandb"], str(tmp_path / "run1"), {"seed": 1}))
    log.write(RECORDS[0])
    log.write(RECORDS[3])
    log.close()
    assert calls[0] == ("init", dict(project="proj", name="run1", id="abc123", resume="allow",
                                     dir=str(tmp_path / "run1"), config={"seed": 1}))
    assert ("define", ("stage2/*",), {"step_metric": "stage2/step"}) in calls
    logged = [c[1] for c in calls if c[0] == "log"]
    assert logged == [{"stage1/step": 1, **dict(scalars(RECORDS[0]))}, {"stage2/step": 1, **dict(scalars(RECORDS[3]))}]
    assert calls[-1] == ("finish",)
    fake.util.generate_id = lambda: "other"  # a resumed run continues the same W&B run
    open_viewers(["wandb"], str(tmp_path / "run1"), {})
    assert [c[1]["id"] for c in calls if c[0] == "init"] == ["abc123", "abc123"]


def test_unknown_viewer_and_missing_package(monkeypatch, tmp_path):
    with pytest.raises(LoggerError, match=r"unknown \['tensorbord'\]; use any of \['tensorboard', 'wandb'\]"):
        open_viewers(["tensorbord"], str(tmp_path), {})
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(LoggerError, match="pip install wandb"):
        open_viewers(["wandb"], str(tmp_path), {})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(LoggerError, match="pip install tensorboard"):
        open_viewers(["tensorboard"], str(tmp_path), {})


def test_no_viewer_imports_nothing():
    code = ("import sys\nfrom training.loggers import open_viewers\nassert open_viewers([], '.', {}) == []\n"
            "print(sorted(m for m in ('tensorboard', 'wandb', 'torch.utils.tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
