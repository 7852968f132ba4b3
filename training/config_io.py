"""Run configs in and out: a TOML file or a saved config.json into the Config dataclass of
train.py, command-line flags and `--set key=value` overrides on top, and the resumed run's own
config in place of all of them."""
import dataclasses
import json
import tomllib
from pathlib import Path

from training import TrainError


def config_from_dict(d, cls, where="config"):
    """cls(**d), with dataclass-valued fields (stage1, stage2) built from their defaults updated by
    d's sub-dict; an unknown key is an error naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    defaults = cls()
    kwargs = {}
    for key, value in d.items():
        if key not in known:
            raise TrainError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(known))})")
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default):
            value = config_from_dict({**dataclasses.asdict(default), **value}, type(default), f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)


def read_config(path, cls):
    path = Path(path)
    try:
        return config_from_dict(tomllib.loads(path.read_text()), cls, where=str(path))
    except FileNotFoundError:
        raise TrainError(f"--config {path}: no such file")
    except tomllib.TOMLDecodeError as e:
        raise TrainError(f"--config {path}: {e}")


def parse_value(text):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string such as a path


def apply_override(cfg, assignment):
    """One `--set key=value`: dots reach nested fields, the value is a TOML literal of the field's type."""
    if "=" not in assignment:
        raise TrainError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    target, parts = cfg, key.strip().split(".")
    for part in parts[:-1]:
        target = target[part] if isinstance(target, dict) else getattr(target, part, None)
        if target is None:
            raise TrainError(f"--set {key}: no config section '{part}'")
    name, value = parts[-1], parse_value(text.strip())
    if isinstance(target, dict):
        target[name] = value
        return
    if not hasattr(target, name):
        raise TrainError(f"--set {key}: unknown field '{name}'")
    old = getattr(target, name)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, str) and not isinstance(value, str):
        value = text.strip()  # stage=1, out=2024 are strings
    if old is not None and not isinstance(value, type(old)):
        raise TrainError(f"--set {key}={text}: expected {type(old).__name__}, got {value!r}")
    setattr(target, name, value)


def resolve_config(args, cls, default_path):
    """The run's config from parsed command-line args: the TOML file (args.config or default_path),
    then the flags, then --set. With --resume and a config.json in --out, that saved config replaces
    the file and the flags (the run continues exactly as started); --parallel and --set still apply."""
    cfg = read_config(args.config or default_path, cls)
    for name in ("stage", "init", "out", "device", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    saved = Path(cfg.out) / "config.json"
    if args.resume and saved.exists():
        cfg = config_from_dict(json.loads(saved.read_text()), cls, where=str(saved))
        cfg.out = str(saved.parent)  # the run may have been moved or copied since
    cfg.resume = cfg.resume or args.resume
    cfg.parallel = args.parallel or cfg.parallel  # a resumed run may change how it is parallelised
    for assignment in args.set:
        apply_override(cfg, assignment)
    if cfg.stage == "2" and not cfg.init:
        raise TrainError("--stage 2 needs --init DIR (a stage-1 checkpoint or any HF model dir)")
    return cfg
