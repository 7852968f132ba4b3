"""benchmarks/ab_train.py: both sides run (each run into its own --out), their steps are paired
from log.jsonl, and a failing side stops it with train.py's error, not a traceback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"synthetic.n_train": 120, "synthetic.n_test": 8, "model.hidden_size": 32, "model.num_layers": 1,
        "model.num_heads": 2, "model.num_kv_heads": 1, "model.head_dim": 16, "model.intermediate_size": 64,
        "batch_size": 8, "micro_batch_size": 8, "stage1.max_steps": 2, "stage2.max_steps": 1,
        "val_every": 0, "val_examples": 8, "limit_eval": 2, "eval_max_new_tokens": 4}


def ab_train(*sides, rounds=2, extra=()):
    common = [a for key, value in TINY.items() for a in ("--set", f"{key}={value}")]
    args = [a for side in sides for a in ("--side", side)]
    return subprocess.run([sys.executable, "benchmarks/ab_train.py", *args, "--rounds", str(rounds), *extra, "--", *common],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_two_sides_two_rounds_give_a_ratio_row_each():
    done = ab_train(f"a={ROOT}", f"b={ROOT}@--set seed=2")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| a |", "| b |"))]
    assert len(rows) == 2
    assert rows[0].split("|")[4].strip().startswith("1.000x")
    assert "--set seed=2" in rows[1]
    cells = [[c.strip() for c in row.split("|")[5:8]] for row in rows]
    # 2 + 1 steps per run, 2 rounds, each paired with itself
    assert cells[0] == ["6", "1.000x (1.000-1.000)", "1.000x"]
    assert cells[1][0] == "6" and all(float(c.split("x")[0]) > 0 for c in cells[1][1:])
    assert sum(line.startswith("round ") for line in done.stdout.splitlines()) == 4


def test_a_failing_side_names_train_py_error():
    done = ab_train(f"a={ROOT}", f"bad={ROOT}@--set stage1.lr=-1", rounds=1)
    assert done.returncode != 0
    assert "failed" in done.stderr and "stage1.lr" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="a core per side")
def test_concurrent_sides_pair_their_steps():
    done = ab_train(f"a={ROOT}", f"b={ROOT}", extra=["--concurrent"])
    assert done.returncode == 0, done.stderr
    assert "at once, a core and one thread each" in done.stdout
    rows = [line.split("|") for line in done.stdout.splitlines() if line.startswith(("| a |", "| b |"))]
    assert [row[5].strip() for row in rows] == ["6", "6"]
    assert rows[0][7].strip() == "1.000x" and float(rows[1][7].strip().rstrip("x")) > 0
