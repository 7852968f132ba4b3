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


def change(relative):
    """'12.3% lower' / '0.6% higher' for a relative fall (start - end) / start."""
    return f"{100 * abs(relative):.1f}% {'lower' if relative >= 0 else 'higher'}"


def report(records, stage, fraction=TAIL_FRACTION):
    """One line for the end of a stage: the validation CoT and Key NLL over its last steps, three
    significant figures (a CoT NLL near zero still shows its relative fall)."""
    tail = tail_improvement(records, stage, fraction=fraction)
    if tail is None:
        return f"stage {stage}: convergence not measured (fewer than two validation points)"
    share = 1 - tail["start_step"] / tail["end_step"]
    line = (f"stage {stage}: over the last {100 * share:.0f}% of steps (step {tail['start_step']} -> "
            f"{tail['end_step']}) val CoT NLL {tail['start']:.3g} -> {tail['end']:.3g} "
            f"({change(tail['relative'])})")
    key = tail_improvement(records, stage, metric="val_key_nll", fraction=fraction)
    if key is not None:
        line += f", val Key NLL {key['start']:.3g} -> {key['end']:.3g} ({change(key['relative'])})"
    return line
