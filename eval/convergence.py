"""How much a stage's validation CoT NLL still improved over its last 20% of steps."""

TAIL_FRACTION = 0.2


def tail_improvement(records, stage, metric="val_cot_nll", fraction=TAIL_FRACTION):
    """{start_step, start, end_step, end, relative} from a run's log records (log.jsonl lines).

    start is the validation value at the last validation step at or before (1 - fraction) of the
    stage's last step, so the window covers at least that fraction; relative = (start - end) /
    start (0.05: 5% lower at the end). None without two validation points in the stage.
    """
    val = sorted((r["step"], r[metric]) for r in records
                 if r.get("type") == "val" and r.get("stage") == stage and metric in r)
    if len(val) < 2:
        return None
    end_step, end = val[-1]
    start_step, start = max((p for p in val if p[0] <= (1 - fraction) * end_step), default=val[0])
    if start_step == end_step:
        return None
    return {"start_step": start_step, "start": start, "end_step": end_step, "end": end,
            "relative": (start - end) / start if start else 0.0}


def report(records, stage, fraction=TAIL_FRACTION):
    """One line for the end of a stage: the validation CoT NLL over its last steps."""
    tail = tail_improvement(records, stage, fraction=fraction)
    if tail is None:
        return f"stage {stage}: convergence not measured (fewer than two validation points)"
    share = 1 - tail["start_step"] / tail["end_step"]
    return (f"stage {stage}: val CoT NLL {tail['start']:.4f} at step {tail['start_step']} -> "
            f"{tail['end']:.4f} at step {tail['end_step']}: {100 * tail['relative']:.1f}% lower over "
            f"the last {100 * share:.0f}% of steps")
