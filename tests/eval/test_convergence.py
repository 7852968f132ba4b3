"""The end-of-stage convergence figure: validation CoT NLL over the last 20% of steps."""
from eval.convergence import report, tail_improvement


def val(stage, step, cot):
    return {"stage": stage, "step": step, "type": "val", "val_cot_nll": cot, "val_key_nll": 0.1}


def test_tail_improvement_uses_the_last_point_at_or_before_80_percent():
    records = [val(1, 0, 5.0), {"stage": 1, "step": 1, "type": "train", "loss": 3.0},
               val(1, 50, 1.0), val(1, 100, 0.2), val(1, 150, 0.12), val(1, 184, 0.1), val(2, 0, 0.1),
               val(2, 40, 0.5)]
    # 0.8 * 184 = 147.2: the point at step 100 starts the window (at least 20% of the steps)
    tail = tail_improvement(records, 1)
    assert tail == {"start_step": 100, "start": 0.2, "end_step": 184, "end": 0.1, "relative": 0.5}
    assert tail_improvement(records, 2)["relative"] == -4.0  # stage 2: 0.1 -> 0.5
    assert "val CoT NLL 0.1 -> 0.5 (400.0% higher)" in report(records, 2)
    line = report(records, 1)
    assert line == ("stage 1: over the last 46% of steps (step 100 -> 184) val CoT NLL 0.2 -> 0.1 (50.0% lower), "
                    "val Key NLL 0.1 -> 0.1 (0.0% lower)")


def test_report_keeps_small_values_readable():
    records = [dict(val(1, 0, 3e-5), val_key_nll=0.2), dict(val(1, 10, 2e-5), val_key_nll=0.15)]
    assert report(records, 1) == ("stage 1: over the last 100% of steps (step 0 -> 10) val CoT NLL 3e-05 -> 2e-05 "
                                  "(33.3% lower), val Key NLL 0.2 -> 0.15 (25.0% lower)")


def test_tail_improvement_needs_two_points():
    assert tail_improvement([val(1, 0, 5.0)], 1) is None
    assert "not measured" in report([], 1)
