"""Run configs in and out: a TOML file or a saved config.json into the Config dataclass of
train.py, command-line flags and `--set key=value` overrides on top, every field checked
(config_check); a resumed run starts from its own saved config and refuses any change to it that
changes results."""
import copy
import dataclasses
import json
import tomllib
from pathlib import Path

from atomic_io import read_json
from training import TrainError
from training.config_check import check_config, differences


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
            if not isinstance(value, dict):
                raise TrainError(f"{where}: {key} = {value!r}: expected a table of stage settings "
                                 f"([{key}] in TOML, or --set {key}.lr=...)")
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
    then the flags, then --set; every field checked. With --resume the run's saved config.json
    takes the file's place unless --config is given, and the result must equal the saved config
    in every field that changes results (RUN_ONLY_FIELDS such as out or parallel may differ)."""
    set_out = [parse_value(a.split("=", 1)[1].strip()) for a in args.set if a.split("=", 1)[0].strip() == "out"]
    out = Path(str(set_out[-1]) if set_out else args.out or read_config(args.config or default_path, cls).out)
    saved_path, saved = out / "config.json", None
    if args.resume:
        if not saved_path.is_file():
            raise TrainError(f"--resume: {out} holds no run to continue (no config.json); start it "
                             "without --resume")
        try:
            saved = read_json(saved_path)
        except (ValueError, OSError) as e:
            raise TrainError(f"--resume: {e}") from None
    if saved is not None and not args.config:
        cfg = config_from_dict(copy.deepcopy(saved), cls, where=str(saved_path))  # saved stays as read
    else:
        cfg = read_config(args.config or default_path, cls)
    if saved is None and (cfg.resume or cfg.overwrite):
        raise TrainError(f"{args.config or default_path}: resume and overwrite are command-line flags "
                         "(--resume, --overwrite), not config settings")
    for name in ("stage", "init", "out", "device", "seed"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    cfg.resume, cfg.overwrite = args.resume, getattr(args, "overwrite", False)
    if args.parallel:
        cfg.parallel = args.parallel
    for assignment in args.set:
        apply_override(cfg, assignment)
    cfg.out = str(out)  # a resumed run may have been moved or copied since
    if (cfg.resume, cfg.overwrite) != (args.resume, getattr(args, "overwrite", False)):
        raise TrainError("--set: resume and overwrite are command-line flags (--resume, --overwrite), "
                         "not config settings")
    check_config(cfg)
    if cfg.stage == "2" and not cfg.init:
        raise TrainError("--stage 2 needs --init DIR (a stage-1 checkpoint or any HF model dir)")
    if saved is not None:
        changed = list(differences(saved, json.loads(json.dumps(dataclasses.asdict(cfg)))))
        if changed:
            raise TrainError(f"--resume: {out} was started with another config ({'; '.join(changed)}); "
                             "resume it with the settings it was started with, or start a new run "
                             "with another --out")
    return cfg
