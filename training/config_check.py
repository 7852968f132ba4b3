"""Every field of a resolved run config checked once, with its dotted name in the message: the type
(TOML and `--set` alike), the range, the allowed values, the known keys of the `model` and
`synthetic` tables. Also which fields a resumed run may change (RUN_ONLY_FIELDS) and the list of
differences between two configs."""
import dataclasses
import inspect
import math
from pathlib import Path

from training import TrainError

# fields that may differ between a saved run and the command that continues it without changing
# its results: where it lives, how it is launched, logged and checkpointed, the evaluation batch
RUN_ONLY_FIELDS = ("out", "resume", "overwrite", "parallel", "log", "val_every", "ckpt_every",
                   "keep_last", "eval_batch_size")
CHOICES = {"stage": ("1", "2", "both"), "style": ("tagged", "plain"), "template": ("plain", "chat"),
           "truncation": ("drop", "prompt_left"), "device": ("auto", "cpu", "cuda"),
           "parallel": ("none", "ddp", "fsdp"), "decay": ("linear", "cosine", "constant")}
POSITIVE = ("max_len", "batch_size", "micro_batch_size", "eps", "grad_clip", "eval_max_new_tokens",
            "eval_batch_size", "lr")  # grad_clip = inf: no clipping
NON_NEGATIVE = ("seed", "limit_train", "limit_eval", "val_examples", "weight_decay", "val_every",
                "ckpt_every", "keep_last", "max_steps", "warmup_steps", "warmup_epochs", "z_loss")


def bad(name, value, need):
    return TrainError(f"config: {name} = {value!r}: {need}")


def check_type(name, value, default):
    """value converted to the type of the field's default (an int where a float is expected, an
    int where a string is: stage = 1); a value of another type is an error naming the field."""
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is str and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                 list: "a list", dict: "a table"}
        raise bad(name, value, f"expected {names.get(kind, kind.__name__)}")
    return value


def check_fields(obj, prefix=""):
    """Types, ranges and choices of a Config or StageConfig (in place: ints become floats where a
    float is expected)."""
    defaults = type(obj)()
    for f in dataclasses.fields(obj):
        name, value, default = prefix + f.name, getattr(obj, f.name), getattr(defaults, f.name)
        if dataclasses.is_dataclass(default):
            if not dataclasses.is_dataclass(value):
                raise bad(name, value, "expected a table of stage settings ([stage1] in TOML)")
            check_fields(value, name + ".")
            continue
        value = check_type(name, value, default)
        setattr(obj, f.name, value)
        if isinstance(value, float) and not math.isfinite(value) and f.name != "grad_clip":
            raise bad(name, value, "need a finite number")
        if f.name in CHOICES and value not in CHOICES[f.name]:
            raise bad(name, value, f"use one of {', '.join(CHOICES[f.name])}")
        if f.name in POSITIVE and not value > 0:
            raise bad(name, value, "need a value > 0" + (" (inf: no clipping)" if f.name == "grad_clip" else ""))
        if f.name in NON_NEGATIVE and not value >= 0:
            raise bad(name, value, "need a value >= 0")


def check_numbers(name, value, count, low=0.0, high=None):
    if (not isinstance(value, list) or len(value) != count
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise bad(name, value, f"need a list of {count} numbers")
    if not all(low <= v and (high is None or v < high) for v in value):
        raise bad(name, value, f"need every value in [{low:g}, {high if high is not None else 'inf'})")


def check_stage(sc, name):
    check_numbers(f"{name}.weights", sc.weights, 3)
    if sum(sc.weights[1:]) == 0:
        raise bad(f"{name}.weights", sc.weights, "need the COT or the KEY weight (2nd, 3rd) above 0")
    if not (sc.epochs > 0 or sc.max_steps > 0):
        raise bad(f"{name}.epochs", sc.epochs, f"need epochs > 0 or {name}.max_steps > 0")
    if not 0 <= sc.min_lr_ratio <= 1:
        raise bad(f"{name}.min_lr_ratio", sc.min_lr_ratio, "need a value in [0, 1]")


def check_model_table(cfg):
    from model import ModelConfig
    from model.config import ConfigError
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    for key, value in cfg.model.items():
        if key not in fields:
            raise TrainError(f"config: model.{key}: unknown field (known: {', '.join(fields)})")
        kind = fields[key].type if isinstance(fields[key].type, type) else None
        if kind in (int, float, str, bool):
            cfg.model[key] = check_type(f"model.{key}", value, kind())
    if cfg.init:
        return  # the model comes from the checkpoint
    required = [n for n, f in fields.items() if n != "vocab_size" and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in cfg.model]
    if missing:
        raise TrainError(f"config: model.{missing[0]} is missing: a model trained from scratch (no init) "
                         f"needs model.{', model.'.join(required)}")
    for name in required:
        if not cfg.model[name] > 0:
            raise bad(f"model.{name}", cfg.model[name], "need a value > 0")
    try:
        ModelConfig(**{"vocab_size": 2, **cfg.model})
    except (ConfigError, ValueError, TypeError) as e:
        raise TrainError(f"config: model: {e}") from None


def check_synthetic_table(cfg):
    from data.synthetic import DEFAULTS, build_task
    known = (set(inspect.signature(build_task).parameters) - {"out_dir", "difficulty"}) | set(DEFAULTS)
    for key, value in cfg.synthetic.items():
        if key not in known:
            raise TrainError(f"config: synthetic.{key}: unknown field (known: {', '.join(sorted(known))})")
        if key in ("n_train", "n_test", "n_val", "seed", "n_digits") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise bad(f"synthetic.{key}", value, "need an integer >= 0")


def check_config(cfg):
    """Raises TrainError naming the first bad field of a resolved Config; returns cfg."""
    check_fields(cfg)
    check_stage(cfg.stage1, "stage1")
    check_stage(cfg.stage2, "stage2")
    check_numbers("betas", cfg.betas, 2, 0.0, 1.0)
    if cfg.batch_size % cfg.micro_batch_size:
        raise bad("batch_size", cfg.batch_size, f"need a multiple of micro_batch_size ({cfg.micro_batch_size})")
    from model.precision import PRECISIONS
    if cfg.precision not in PRECISIONS:
        raise bad("precision", cfg.precision, f"use one of {', '.join(PRECISIONS)}")
    from training.loggers import VIEWERS
    if any(v not in VIEWERS for v in cfg.log):
        raise bad("log", cfg.log, f"need a list of viewer names from {', '.join(VIEWERS)}")
    check_model_table(cfg)
    check_synthetic_table(cfg)
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise bad("out", cfg.out, "is a file; pass a folder for the run")
    if cfg.resume and cfg.overwrite:
        raise TrainError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    return cfg


def differences(saved, wanted, prefix=""):
    """'field: saved there, wanted now' for each field of two config dicts that changes results."""
    for key in sorted(set(saved) | set(wanted)):
        if not prefix and key in RUN_ONLY_FIELDS:
            continue
        x, y = saved.get(key, "<missing>"), wanted.get(key, "<missing>")
        if isinstance(x, dict) and isinstance(y, dict):
            yield from differences(x, y, f"{prefix}{key}.")
        elif x != y:
            yield f"{prefix}{key}: {x!r} there, {y!r} now"
