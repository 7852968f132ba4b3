"""The ablation protocol end to end on a test-sized config: tuning on a validation split, every arm,
two fresh seeds, statistics, picture, resume; the continuation control's schedule; bad input."""
import json

import pytest

import train
from eval import ablation
from eval.metrics import proportion_interval

TINY = {
    "synthetic.n_train": 200, "synthetic.n_test": 6, "synthetic.n_terms": 2, "synthetic.n_digits": 2,
    "synthetic.kind": '"mixed"', "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2,
    "model.num_kv_heads": 1, "model.head_dim": 16, "model.intermediate_size": 64, "batch_size": 8,
    "micro_batch_size": 8, "stage1.max_steps": 3, "stage2.max_steps": 2, "stage2.warmup_steps": 1,
    "val_every": 0, "val_examples": 8, "eval_max_new_tokens": 12, "eval_batch_size": 200,
    "compile_loss": "false",
}


def overrides(values):
    return [x for k, v in values.items() for x in ("--set", f"{k}={v}")]


def config(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def train_lrs(run_dir, stage):
    return [r["lr"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
            if r["type"] == "train" and r["stage"] == stage]


def prompts(path):
    """The arithmetic of each problem in a data or predictions file (without the template's 'Problem: ')."""
    return {json.loads(line)["prompt"].splitlines()[0].removeprefix("Problem: ")
            for line in path.read_text().splitlines()}


def test_tuned_protocol_end_to_end(tmp_path, monkeypatch):
    argv = ["--config", "configs/demo.toml", "--seeds", "2", "--out", str(tmp_path), "--tune",
            "--grid-factors", "1,2"] + overrides({**TINY, "synthetic.n_val": 200})
    summary = ablation.main(argv)
    tuning = json.loads((tmp_path / "tuning.json").read_text())
    assert summary["tuning"] == tuning and tuning["seed"] == ablation.TUNE_SEED not in summary["seeds"]

    # every arm's added hyper-parameter, the same number of values, chosen by validation accuracy
    entries = {e["arm"]: e for e in tuning["entries"]}
    assert {a: e["param"] for a, e in entries.items()} == {
        "sft_tag": "stage1.lr", "sftkey_tag": "stage2.lr", "sft_tag_continue": "stage2.lr",
        "weighted": "key_weight", "sft": "lr", "key_tag": "lr", "dft": "lr"}
    demo = train.parse_args(["--config", "configs/demo.toml"])
    lr1, lr2 = demo.stage1.lr, demo.stage2.lr
    assert entries["sft_tag"]["grid"] == entries["sft"]["grid"] == entries["dft"]["grid"] == [lr1, 2 * lr1]
    assert entries["sftkey_tag"]["grid"] == entries["sft_tag_continue"]["grid"] == [lr2, 2 * lr2]
    assert entries["weighted"]["grid"] == [5.0, 10.0]
    val_path = tuning["validation"]["path"]
    assert tuning["validation"]["problems"] == 200
    for e in entries.values():
        assert len(e["scores"]) == 2 and e["chosen"] == ablation.choose(e["grid"], e["scores"], e["grid"][0])
        for s in e["scores"]:
            run_dir = tmp_path / "tune" / e["arm"] / f"{e['param']}={s['value']:g}"
            assert s["run"] == str(run_dir) and config(run_dir)["seed"] == ablation.TUNE_SEED
            assert config(run_dir)["eval_data"] == val_path  # never the test split
            metrics = json.loads((run_dir / "results.json").read_text())
            assert s["acc"] == next(iter(metrics.values()))["acc"]
    chosen = tuning["chosen"]
    assert chosen["sftkey_tag"]["stage1.lr"] == chosen["weighted"]["stage1.lr"] == entries["sft_tag"]["chosen"]
    stage1_tune = tmp_path / "tune" / "sft_tag" / f"stage1.lr={entries['sft_tag']['chosen']:g}"
    for s in entries["sftkey_tag"]["scores"]:  # stage-2 tuning starts from the chosen stage 1
        assert config(tmp_path / s["run"])["init"] == str(stage1_tune / "stage1" / "final")

    # the validation split: >= 200 problems, disjoint from the training and the test problems
    task = tmp_path / "task"
    val = prompts(stage1_tune / "stage1" / "eval" / "predictions.jsonl")
    test = prompts(tmp_path / "sft" / "seed0" / "stage1" / "eval" / "predictions.jsonl")
    train_problems = prompts(task / "train.jsonl")
    assert len(val) == 200 and len(test) == 6 and len(train_problems) == 200
    assert not val & test and not val & train_problems and not test & train_problems
    assert val == prompts(task / "val.jsonl") and test == prompts(task / "test.jsonl")

    # final runs: fresh seeds at the chosen values, every arm, the stage-2 arms from sft_tag's stage 1
    runs = summary["runs"]
    assert sorted({r["arm"] for r in runs}) == sorted(ablation.ARMS) and len(runs) == 2 * len(ablation.ARMS)
    for seed in (0, 1):
        stage1 = tmp_path / "sft_tag" / f"seed{seed}"
        key, cont = tmp_path / "sftkey_tag" / f"seed{seed}", tmp_path / "sft_tag_continue" / f"seed{seed}"
        for run_dir, weights, arm in ((key, [0.0, 0.0, 1.0], "sftkey_tag"), (cont, [0.0, 1.0, 1.0], "sft_tag_continue")):
            cfg = config(run_dir)
            assert cfg["init"] == str(stage1 / "stage1" / "final") and cfg["stage"] == "2"
            assert cfg["stage2"]["weights"] == weights and cfg["stage2"]["lr"] == chosen[arm]["stage2.lr"]
            assert cfg["seed"] == seed
        # the continuation: sftkey_tag's steps, warmup and schedule (lr relative to its peak)
        key_lrs, cont_lrs = train_lrs(key, 2), train_lrs(cont, 2)
        assert len(key_lrs) == len(cont_lrs) == 2
        assert [x / chosen["sftkey_tag"]["stage2.lr"] for x in key_lrs] == pytest.approx(
            [x / chosen["sft_tag_continue"]["stage2.lr"] for x in cont_lrs])
        equal = tmp_path / "sft_tag_equal" / f"seed{seed}"
        assert ablation.steps_per_stage(equal) == {1: 5} and config(equal)["stage1"]["lr"] == chosen["sft_tag"]["stage1.lr"]
        assert config(tmp_path / "dft" / f"seed{seed}")["stage1"]["dft"] is True
        assert config(tmp_path / "sft" / f"seed{seed}")["style"] == "plain"
        assert config(tmp_path / "weighted" / f"seed{seed}")["stage1"]["weights"] == [0.0, 1.0, chosen["weighted"]["key_weight"]]
        for arm in ablation.ARMS:
            assert config(tmp_path / arm / f"seed{seed}")["eval_data"] == ""  # the test split
    by = {(r["arm"], r["seed"]): r for r in runs}
    assert by[("sftkey_tag", 1)]["hparams"] == chosen["sftkey_tag"]
    assert set(by[("dft", 0)]["acc_by_kind"]) == {"number", "choice"}
    sft_tag = [json.loads(line) for line in (tmp_path / "sft_tag" / "seed0" / "stage1" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert by[("sft_tag", 0)]["acc"] == sum(p["correct"] for p in sft_tag) / len(sft_tag)

    # statistics, table, picture
    stats = summary["statistics"]
    correct = [[int(p["correct"]) for p in sorted(map(json.loads, (tmp_path / "key_tag" / f"seed{s}" / "stage1" / "eval"
                                                                    / "predictions.jsonl").read_text().splitlines()),
                                                   key=lambda p: p["id"])] for s in (0, 1)]
    assert stats["arms"]["key_tag"]["acc"] == proportion_interval(correct)
    assert set(stats["pairs"]) == set(ablation.ARMS) - {"sftkey_tag"}
    table = (tmp_path / "table.md").read_text()
    assert "| Acc choice | Acc number |" in table and "| sft_tag_continue |" in table and "McNemar" in table
    assert ablation.fmt_interval(stats["arms"]["key_tag"]["acc"]) in table
    assert (tmp_path / "ablation.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))

    def no_training(argv):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(train, "main", no_training)
    assert ablation.main(argv)["runs"] == runs
    # the same --out with another config: an error naming the field, never the old results
    with pytest.raises(ablation.AblationError, match=r"weight_decay: 0\.1 there, 0\.05 now"):
        ablation.main(argv + ["--set", "weight_decay=0.05"])


def test_untuned_continuation_uses_sftkey_tag_schedule_in_parallel_runs(tmp_path):
    argv = ["--config", "configs/demo.toml", "--seeds", "2", "--out", str(tmp_path), "--jobs", "2",
            "--arms", "sftkey_tag,sft_tag_continue,sft_tag_equal"] + overrides({**TINY, "stage1.max_steps": 2})
    summary = ablation.main(argv)
    for seed in (0, 1):
        key, cont = tmp_path / "sftkey_tag" / f"seed{seed}", tmp_path / "sft_tag_continue" / f"seed{seed}"
        assert train_lrs(key, 2) == train_lrs(cont, 2) and len(train_lrs(key, 2)) == 2
        assert {k: v for k, v in config(key)["stage2"].items() if k != "weights"} == \
            {k: v for k, v in config(cont)["stage2"].items() if k != "weights"}
        assert ablation.steps_per_stage(tmp_path / "sft_tag_equal" / f"seed{seed}") == {1: 4}
        assert "stage 1 checkpoint" in (tmp_path / "sft_tag_equal" / f"seed{seed}" / "train.out").read_text()
    assert [r["arm"] for r in summary["runs"]] == ["sftkey_tag", "sft_tag_continue", "sft_tag_equal"] * 2
    demo = train.parse_args(["--config", "configs/demo.toml"])
    assert summary["tuning"] is None and summary["chosen"]["sftkey_tag"] == {"stage1.lr": demo.stage1.lr,
                                                                            "stage2.lr": demo.stage2.lr}


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(SystemExit):
        ablation.main(["--arms", "sft,magic", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--seeds", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--tune", "--tune-seed", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--tune", "--arms", "sft", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--tune", "--grid-factors", "1,1", "--out", str(tmp_path)])
    with pytest.raises(ablation.AblationError, match="eval = false: the ablation compares the runs' evaluations"):
        ablation.main(["--out", str(tmp_path / "noeval")] + overrides({**TINY, "eval": "false"}))
    assert not (tmp_path / "noeval").exists()  # refused before any run
    with pytest.raises(ablation.AblationError, match="synthetic.n_val = 0"):
        ablation.main(["--tune", "--out", str(tmp_path)] + overrides({**TINY, "synthetic.n_val": 0}))


def test_run_queue_orders_by_dependency_and_names_a_failed_run(tmp_path):
    from eval.run_queue import Job, Run, execute
    order = []

    def make(key):
        def run(done):
            order.append((key, sorted(done)))
            (tmp_path / key).mkdir()
            (tmp_path / key / "results.json").write_text('{"stage1": {}}')  # finished: nothing to train
            return Run(tmp_path / key, ["--config", "configs/demo.toml"], 1, key)
        return run
    done = execute({"c": Job(make("c"), ("a", "b")), "a": Job(make("a")), "b": Job(make("b"), ("a",))})
    assert order == [("a", []), ("b", ["a"]), ("c", ["a", "b"])] and done["c"] == tmp_path / "c"
    bad = Run(tmp_path / "bad", ["--config", "configs/demo.toml", "--set", "stage1.nope=1"], 1, "bad run")
    with pytest.raises(ablation.AblationError, match=r"(?s)bad run: train.py exited with 1.*unknown field 'nope'"):
        execute({"x": Job(lambda done: bad)}, parallel=2)


def test_parallel_runs_split_the_cores_unless_the_user_set_threads(monkeypatch):
    from eval.run_queue import subprocess_env
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert subprocess_env(2)["OMP_NUM_THREADS"] == "8"
    assert subprocess_env(3)["OMP_NUM_THREADS"] == "5"
    assert subprocess_env(32)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert subprocess_env(2)["OMP_NUM_THREADS"] == "4"
