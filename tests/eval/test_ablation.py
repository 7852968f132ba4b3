"""The ablation runner on a test-sized config: every arm, two seeds, paired intervals, resume."""
import json

import pytest

import train
from eval import ablation
from eval.metrics import mean_ci, paired_difference

TINY = {
    "synthetic.n_train": 200, "synthetic.n_test": 6, "synthetic.n_terms": 2, "synthetic.n_digits": 2,
    "model.hidden_size": 32, "model.num_layers": 1, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.intermediate_size": 64, "batch_size": 8, "micro_batch_size": 8,
    "stage1.max_steps": 3, "stage2.max_steps": 2, "val_every": 0, "val_examples": 8,
    "eval_max_new_tokens": 20, "compile_loss": "false",
}


def test_ablation_runs_every_arm_and_resumes(tmp_path, monkeypatch):
    argv = ["--config", "configs/demo.toml", "--seeds", "2", "--out", str(tmp_path)]
    argv += [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    runs = ablation.main(argv)
    assert sorted({r["arm"] for r in runs}) == sorted(ablation.ARMS)
    assert len(runs) == len(ablation.ARMS) * 2
    by = {(r["arm"], r["seed"]): r for r in runs}
    for seed in (0, 1):
        sftkey = json.loads((tmp_path / "sftkey_tag" / f"seed{seed}" / "results.json").read_text())
        assert by[("sft_tag", seed)]["acc"] == sftkey["stage1"]["acc"]  # stage 1 of the method
        assert by[("sftkey_tag", seed)]["score"] == sftkey["stage2"]["score"]
        assert ablation.steps_per_stage(tmp_path / "sft_tag_equal" / f"seed{seed}") == {1: 5}
        cfg = json.loads((tmp_path / "weighted" / f"seed{seed}" / "config.json").read_text())
        assert cfg["stage1"]["weights"] == [0.0, 1.0, 5.0] and cfg["style"] == "tagged"
        cfg = json.loads((tmp_path / "sft" / f"seed{seed}" / "config.json").read_text())
        assert cfg["style"] == "plain" and cfg["seed"] == seed
    table = (tmp_path / "table.md").read_text()
    for arm in ablation.ARMS:
        assert f"| {arm} |" in table
    acc = [by[("key_tag", s)]["acc"] for s in (0, 1)]
    assert ablation.fmt_ci(mean_ci(acc)) in table
    diff = paired_difference([by[("sftkey_tag", s)]["fmt"] for s in (0, 1)], [by[("sft", s)]["fmt"] for s in (0, 1)])
    assert ablation.fmt_ci(diff, signed=True) in table
    assert json.loads((tmp_path / "runs.json").read_text()) == runs

    def no_training(argv):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(train, "main", no_training)
    assert ablation.main(argv) == runs
    # the same --out with another config: an error naming the field, never the old results
    with pytest.raises(ablation.AblationError, match=r"stage1\.lr: 0\.0005 there, 0\.123 now"):
        ablation.main(argv + ["--set", "stage1.lr=0.123"])
    assert json.loads((tmp_path / "runs.json").read_text()) == runs


def test_ablation_rejects_unknown_arms_and_single_seeds(tmp_path):
    with pytest.raises(SystemExit):
        ablation.main(["--arms", "sft,magic", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        ablation.main(["--seeds", "1", "--out", str(tmp_path)])


@pytest.mark.parametrize("setting, message", [
    ("eval=false", "eval = false, but the ablation compares the arms' evaluations"),
    ("data_format=gsm8k", "eval_data is empty"),
])
def test_ablation_refuses_a_config_without_evaluation_before_training(tmp_path, setting, message):
    with pytest.raises(ablation.AblationError, match=message):
        ablation.main(["--seeds", "2", "--out", str(tmp_path / "abl"), "--set", setting])
    assert not (tmp_path / "abl").exists()  # refused before anything was trained or written
