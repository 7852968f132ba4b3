"""python -m eval.plot: the curves drawn are the log's numbers, stage 2 after stage 1."""
import json

import pytest

pytest.importorskip("matplotlib")

from eval.plot import PlotError, main, plot, series  # noqa: E402

RUN_A = [dict(stage=1, step=0, type="val", val_cot_nll=3.0, val_key_nll=2.0),
         dict(stage=1, step=1, type="train", loss=2.5, cot_loss=2.6, key_loss=2.0, lr=1e-4),
         dict(stage=1, step=2, type="train", loss=2.0, cot_loss=2.1, key_loss=1.5, lr=2e-4),
         dict(stage=1, step=2, type="val", val_cot_nll=2.2, val_key_nll=1.2),
         dict(stage=2, step=0, type="val", val_cot_nll=2.2, val_key_nll=1.2),
         dict(stage=2, step=1, type="train", loss=1.0, key_loss=1.0, lr=5e-5),
         dict(stage=2, step=1, type="val", val_cot_nll=2.4, val_key_nll=0.8)]
RUN_B = [dict(stage=1, step=1, type="train", loss=3.0, cot_loss=3.1, key_loss=2.5, lr=1e-3)]


def write_run(folder, records, results=None):
    folder.mkdir(parents=True)
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if results:
        (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_series_puts_stage_two_after_stage_one():
    curves, start = series(RUN_A)
    assert start == 2
    assert curves["loss"] == ([1, 2, 3], [2.5, 2.0, 1.0])
    assert curves["cot_loss"] == ([1, 2], [2.6, 2.1])
    assert curves["key_loss"] == ([1, 2, 3], [2.0, 1.5, 1.0])
    assert curves["val_key_nll"] == ([0, 2, 2, 3], [2.0, 1.2, 1.2, 0.8])
    assert curves["lr"] == ([1, 2, 3], [1e-4, 2e-4, 5e-5])
    assert series(RUN_B)[1] is None


def test_figure_holds_every_run_and_metric(tmp_path):
    a = write_run(tmp_path / "a", RUN_A, {"stage1": {"acc": 0.5, "fmt": 1.0}, "stage2": {"acc": 0.25, "fmt": 0.75}})
    b = write_run(tmp_path / "b", RUN_B)
    fig = plot([str(a), str(b)], tmp_path / "out" / "curves.png")
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss, roles, val, lr = fig.axes
    drawn = [(list(line.get_xdata()), list(line.get_ydata())) for line in loss.lines if len(line.get_xdata()) > 0]
    assert ([1, 2, 3], [2.5, 2.0, 1.0]) in drawn and ([1], [3.0]) in drawn
    assert [list(line.get_ydata()) for line in lr.lines if line.get_linestyle() == "-"] == [[1e-4, 2e-4, 5e-5], [1e-3]]
    assert loss.get_yscale() == "log" and lr.get_yscale() == "linear"
    labels = loss.get_legend_handles_labels()[1]
    assert "a; s1 Acc 0.50 Fmt 1.00; s2 Acc 0.25 Fmt 0.75: loss" in labels and "b: loss" in labels
    assert any(list(line.get_xdata()) == [2.5, 2.5] for line in val.lines)  # stage boundary of run a
    assert len([line for line in roles.lines if line.get_linestyle() == "--"]) == 2  # key_loss of both runs


def test_bad_runs_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"eval.plot: .*nothing/log.jsonl: no such file"):
        main([str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "log.jsonl").write_text(json.dumps(RUN_B[0]) + "\n{oops\n")
    with pytest.raises(PlotError, match=r"bad/log.jsonl:2: malformed JSON"):
        plot([str(bad)], tmp_path / "x.png")
    (bad / "log.jsonl").write_text('{"stage": "1", "step": 1}\n')
    with pytest.raises(PlotError, match=r"bad/log.jsonl:1: a step-log line needs integer 'stage' and 'step'"):
        plot([str(bad)], tmp_path / "x.png")
