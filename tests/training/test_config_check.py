"""Every config field is checked where the config is resolved, from a TOML file and from --set
alike, with the field's dotted name in the one-line message."""
import json
import tomllib

import pytest

import train
from training import TrainError

# --set KEY=VALUE -> the message (each also tried as a TOML file line where TOML can say it)
BAD_SETTINGS = {
    "grad_clip=-1": "grad_clip = -1.0: need a value > 0 (inf: no clipping)",
    "grad_clip=0": "grad_clip = 0.0: need a value > 0",
    "val_examples=-1": "val_examples = -1: need a value >= 0",
    "limit_train=-5": "limit_train = -5: need a value >= 0",
    "limit_eval=-1": "limit_eval = -1: need a value >= 0",
    "stage1.max_steps=-1": "stage1.max_steps = -1: need a value >= 0",
    "stage2.warmup_steps=-3": "stage2.warmup_steps = -3: need a value >= 0",
    "stage='3'": "stage = '3': use one of 1, 2, both",
    "batch_size=0": "batch_size = 0: need a value > 0",
    "micro_batch_size=0": "micro_batch_size = 0: need a value > 0",
    "batch_size=-8": "batch_size = -8: need a value > 0",
    "batch_size=48": "batch_size = 48: need a multiple of micro_batch_size (32)",
    "precision='fp8'": "precision = 'fp8': use one of bf16, fp16, fp32",
    "betas=[0.9]": "betas = [0.9]: need a list of 2 numbers",
    "betas=[0.9, 1.0]": "betas = [0.9, 1.0]: need every value in [0, 1.0)",
    "eps=0": "eps = 0.0: need a value > 0",
    "stage1.lr=inf": "stage1.lr = inf: need a finite number",
    "stage1.lr=-1e-4": "stage1.lr = -0.0001: need a value > 0",
    "stage2.min_lr_ratio=2": "stage2.min_lr_ratio = 2.0: need a value in [0, 1]",
    "stage2.decay='step'": "stage2.decay = 'step': use one of linear, cosine, constant",
    "stage1.weights=[0, 0, 0]": "stage1.weights = [0, 0, 0]: need the COT or the KEY weight",
    "stage1.weights=[0, 1]": "stage1.weights = [0, 1]: need a list of 3 numbers",
    "stage2.weights=[0, -1, 1]": "stage2.weights = [0, -1, 1]: need every value in [0, inf)",
    "style='bold'": "style = 'bold': use one of tagged, plain",
    "truncation='cut'": "truncation = 'cut': use one of drop, prompt_left",
    "eval_batch_size=0": "eval_batch_size = 0: need a value > 0",
    "log=['tb']": "log = ['tb']: need a list of viewer names from tensorboard, wandb",
    "model.hiden_size=64": "model.hiden_size: unknown field",
    "model.hidden_size=0": "model.hidden_size = 0: need a value > 0",
    "model.num_layers=2.5": "model.num_layers = 2.5: expected an integer",
    "synthetic.n_trian=10": "synthetic.n_trian: unknown field",
    "synthetic.n_train=-1": "synthetic.n_train = -1: need an integer >= 0",
    "seed=-1": "seed = -1: need a value >= 0",
}


def config_text(literals):
    """configs/demo.toml as TOML text with the dotted keys of `literals` set to those TOML literals."""
    tables = {"": {}}
    for key, value in tomllib.loads(train.DEFAULT_CONFIG.read_text()).items():
        if isinstance(value, dict):
            tables[key] = {k: json.dumps(v) for k, v in value.items()}
        else:
            tables[""][key] = json.dumps(value)
    for key, literal in literals.items():
        table, _, name = key.rpartition(".")
        tables.setdefault(table, {}).pop(name, None)
        tables.pop(name, None) if not table else None
        tables[table][name] = literal
    lines = [f"{k} = {v}" for k, v in tables.pop("").items()]
    for table, items in tables.items():
        lines += [f"[{table}]"] + [f"{k} = {v}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
def test_a_bad_value_names_its_field_from_set_and_toml(setting, tmp_path):
    with pytest.raises(TrainError) as raised:
        train.parse_args(["--out", str(tmp_path / "run"), "--set", setting])
    assert BAD_SETTINGS[setting] in str(raised.value) and "\n" not in str(raised.value)
    key, value = setting.split("=", 1)
    toml = tmp_path / "bad.toml"
    toml.write_text(config_text({key: value}))
    with pytest.raises(TrainError) as raised:
        train.parse_args(["--config", str(toml), "--out", str(tmp_path / "run")])
    assert BAD_SETTINGS[setting] in str(raised.value)


@pytest.mark.parametrize("key, literal, expected", [
    ("batch_size", '"32"', "batch_size = '32': expected an integer"),
    ("grad_clip", '"1.0"', "grad_clip = '1.0': expected a number"),
    ("compile", '"yes"', "compile = 'yes': expected true or false"),
    ("stage1.lr", '"fast"', "stage1.lr = 'fast': expected a number"),
    ("stage1", "5", "stage1 = 5: expected a table of stage settings"),
    ("synthetic", "3", "synthetic = 3: expected a table"),
])
def test_toml_values_of_the_wrong_type_are_named(key, literal, expected, tmp_path):
    (tmp_path / "bad.toml").write_text(config_text({key: literal}))
    with pytest.raises(TrainError) as raised:
        train.parse_args(["--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "run")])
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("keep")
    with pytest.raises(TrainError, match="out = .*file': is a file; pass a folder"):
        train.parse_args(["--out", str(tmp_path / "file")])
    assert (tmp_path / "file").read_text() == "keep"


def test_good_values_pass_and_ints_become_floats(tmp_path):
    cfg = train.parse_args(["--out", str(tmp_path), "--set", "grad_clip=2", "--set", "stage=1",
                            "--set", "grad_clip=inf", "--set", "stage2.lr=1"])
    assert cfg.grad_clip == float("inf") and cfg.stage == "1"
    assert isinstance(cfg.stage2.lr, float) and cfg.stage2.lr == 1.0
