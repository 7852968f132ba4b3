"""README.md's commands run as written: the two set-up commands are there verbatim, every flag of a
`python ...` / `torchrun ... train.py` command is accepted by that entry point's own parser, every
`--set key=value` names a config field, and the cheap commands run end to end at tiny sizes."""
import argparse
import dataclasses
import inspect
import re
import runpy
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

import data.synthetic
import train
from model import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETUP_COMMANDS = (
    "pip install -r requirements.txt && python train.py",
    "pip install -r requirements.txt -r requirements-dev.txt && python -m pytest -q",
)
PROGRAMS = ("pip", "python", "torchrun", "bash")
# train.py sizes that make a README command finish in seconds; appended after the README's own flags
TINY_TRAIN = {
    "synthetic.n_train": 120, "synthetic.n_test": 8, "synthetic.n_terms": "[2,5]",
    "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.intermediate_size": 64,
    "batch_size": 8, "micro_batch_size": 8, "stage1.max_steps": 2, "stage2.max_steps": 2,
    "val_every": 0, "val_examples": 8, "limit_eval": 4, "eval_max_new_tokens": 12, "compile_loss": False,
}
TINY_EVAL = ["--limit", "2", "--max-new-tokens", "8"]
GSM8K_ROWS = ('{"question": "What is 1 + 2?", "answer": "1 + 2 = 3\\n#### 3"}\n'
              '{"question": "What is 4 + 5?", "answer": "4 + 5 = 9\\n#### 9"}\n')


def code_lines(text):
    """Lines of fenced and indented code blocks (`\\`-continuations joined) and inline code spans."""
    lines, fenced, pending = [], False, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or raw.startswith("    ") or pending:
            line = pending + raw.strip()
            pending = line[:-1] + " " if line.endswith("\\") else ""
            if not pending:
                lines.append(line)
        else:  # an inline span with arguments is a command; `python -m eval` alone only names one
            lines += [s for s in re.findall(r"`([^`]+)`", raw) if len(s.split()) > (3 if " -m " in s else 2)]
    return [line for line in lines if line.split(" ", 1)[0] in PROGRAMS]


def commands(line):
    """One code line -> its commands (split at `&&`), each a list of words, comments dropped."""
    words, out = shlex.split(line, comments=True), [[]]
    for word in words:
        out.append([]) if word == "&&" else out[-1].append(word)
    return [c for c in out if c]


def readme_commands():
    return [c for line in code_lines(README.read_text()) for c in commands(line)]


def entry_point(cmd):
    """('path', file) or ('module', name) and the arguments it gets; None for other programs."""
    if cmd[0] == "torchrun":
        script = next(i for i, w in enumerate(cmd) if w.endswith(".py"))
        return ("path", cmd[script]), cmd[script + 1:]
    if cmd[0] != "python":
        return None
    if cmd[1] == "-m":
        return ("module", cmd[2]), cmd[3:]
    return ("path", cmd[1]), cmd[2:]


def is_placeholder(value):
    """FILE, MODEL_DIR, SRC.gguf, configs/X.toml, .cache/<hash>/...: a value the reader fills in."""
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.\w+)?|.*<.+>.*|\.\.\.", part) for part in Path(value).parts)


def option_values(args, flag):
    values = [args[i + 1] for i, w in enumerate(args[:-1]) if w == flag]
    return values + [w.split("=", 1)[1] for w in args if w.startswith(flag + "=")]


def without_option(args, flag):
    """args with every `flag VALUE` / `flag=VALUE` removed."""
    out, skip = [], False
    for w in args:
        if skip or w.startswith(flag + "="):
            skip = False
            continue
        if w == flag:
            skip = True
            continue
        out.append(w)
    return out


def execute(entry, args, monkeypatch):
    """Runs the entry point in this process exactly as `python <entry> args` would."""
    kind, name = entry
    monkeypatch.setattr(sys, "argv", [name, *args])
    if kind == "module":
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(str(ROOT / name), run_name="__main__")


class Parsed(Exception):
    pass


def parse_only(entry, args, monkeypatch, capsys):
    """The entry point's own argparse parser applied to args, stopped before it does any work."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        self.allow_abbrev = False  # a README flag must be spelled out: a prefix breaks when a flag is added
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    try:
        execute(entry, args, monkeypatch)
    except Parsed as done:
        return done.args[0]
    except SystemExit as e:
        pytest.fail(f"{entry[1]} {' '.join(args)}: its parser refused it (exit {e.code}): "
                    f"{capsys.readouterr().err.strip()}")
    pytest.fail(f"{entry[1]}: finished without parsing arguments with argparse")


def config_field_error(assignment):
    """Why `--set assignment` names no field of train.Config (None when it does)."""
    key, eq, text = assignment.partition("=")
    if not eq:
        return "expected key=value"
    task_parameters = set(inspect.signature(data.synthetic.build_task).parameters) - {"out_dir", "difficulty"}
    sections = {"model": {f.name for f in dataclasses.fields(ModelConfig)},
                "synthetic": task_parameters | set(getattr(data.synthetic, "DEFAULTS", {}))}
    target = train.Config()
    parts = key.split(".")
    for i, part in enumerate(parts):
        if isinstance(target, dict):
            allowed = sections.get(parts[i - 1], set())
            return None if part in allowed and i == len(parts) - 1 else f"no field '{key}'"
        names = {f.name for f in dataclasses.fields(target)}
        if part not in names:
            return f"no field '{part}' in {type(target).__name__}"
        target = getattr(target, part)
    if dataclasses.is_dataclass(target) or isinstance(target, dict):
        return f"'{key}' is a section, not a field"
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    compatible = {bool: (bool,), int: (int,), float: (int, float), list: (list,)}.get(type(target))
    wrong_bool = type(target) is not bool and isinstance(value, bool)
    if compatible and (not isinstance(value, compatible) or wrong_bool):
        return f"'{key}' holds a {type(target).__name__}, got {value!r}"
    return None


def test_the_two_setup_commands_are_in_the_readme_as_written():
    lines = {" ".join(line.split()) for line in code_lines(README.read_text())}
    for command in SETUP_COMMANDS:
        assert command in lines, f"README.md lost its set-up command: {command}"


def test_pip_and_bash_commands_name_files_that_exist():
    checked = 0
    for cmd in readme_commands():
        if cmd[:2] == ["pip", "install"]:
            for path in option_values(cmd, "-r"):
                assert (ROOT / path).is_file(), f"README: pip install -r {path}: no such file"
                lines = (ROOT / path).read_text().splitlines()
                pins = [line for line in lines if line.strip() and not line.startswith("#")]
                assert pins, f"README: pip install -r {path}: the file names no package"
                checked += 1
        if cmd[0] == "bash":
            assert (ROOT / cmd[1]).is_file(), f"README: bash {cmd[1]}: no such script"
    assert checked >= 2


ENTRY_POINT_COMMANDS = list({tuple(c): c for c in readme_commands() if entry_point(c)}.values())


@pytest.mark.parametrize("cmd", ENTRY_POINT_COMMANDS, ids=" ".join)
def test_every_flag_is_accepted_by_its_entry_point(cmd, monkeypatch, capsys):
    entry, args = entry_point(cmd)
    kind, name = entry
    if name == "pytest":
        for path in args:
            if "/" in path and not is_placeholder(path):
                assert (ROOT / path).exists(), f"README: {' '.join(cmd)}: {path} does not exist"
        return
    if kind == "path":
        assert (ROOT / name).is_file(), f"README: {' '.join(cmd)}: no file {name}"
    else:
        top = name.split(".")[0]
        assert (ROOT / top).is_dir(), f"README: {' '.join(cmd)}: no package {top} in the repository"
    parse_only(entry, args, monkeypatch, capsys)
    if name in ("train.py", "eval.ablation"):
        for path in option_values(args, "--config"):
            assert is_placeholder(path) or (ROOT / path).is_file(), f"README: --config {path}: no such file"
        for assignment in option_values(args, "--set"):
            error = config_field_error(assignment)
            assert error is None, f"README: {' '.join(cmd)}: --set {assignment}: {error}"


def test_config_field_check_tells_real_fields_from_made_up_ones():
    assert config_field_error("stage2.lr=2e-5") is None
    assert config_field_error("model.hidden_size=32") is None
    assert config_field_error("synthetic.n_terms=[2, 5]") is None
    assert config_field_error("compile=true") is None
    assert "no field 'lr_scale'" in config_field_error("lr_scale=2")
    assert "no field 'stage3'" in config_field_error("stage3.lr=1e-4")
    assert config_field_error("model.hidden=32") is not None
    assert config_field_error("stage1=1") is not None
    assert config_field_error("compile=yes") is not None
    assert config_field_error("stage2.weights=0") is not None


def test_a_flag_the_parser_does_not_have_fails_the_check(monkeypatch, capsys):
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --no-such-flag"):
        parse_only(("path", "train.py"), ["--no-such-flag"], monkeypatch, capsys)
    with pytest.raises(pytest.fail.Exception, match="invalid choice"):
        parse_only(("module", "data.inspect"), ["--data", "x", "--tokenizer", "y", "--format", "nope"],
                   monkeypatch, capsys)
    with pytest.raises(pytest.fail.Exception, match="required: --tokenizer"):
        parse_only(("module", "data.inspect"), ["--data", "x", "--tok", "y"], monkeypatch, capsys)


def runnable(cmd, workdir):
    """The argv to run for a README command at tiny sizes inside workdir, or None when it is not cheap
    (another config, compile, several processes, files the reader has to fetch or name)."""
    entry = entry_point(cmd)
    if cmd[0] != "python" or entry is None:
        return None
    (_, name), args = entry
    if name == "train.py":
        if set(option_values(args, "--config")) - {"configs/demo.toml"} or option_values(args, "--parallel"):
            return None
        if any(a.replace(" ", "").lower() == "compile=true" for a in option_values(args, "--set")):
            return None
        return args + [w for k, v in TINY_TRAIN.items() for w in ("--set", f"{k}={str(v).lower()}")]
    if name == "eval":
        model_dirs, data_files = option_values(args, "--model"), option_values(args, "--data")
        matches = sorted(workdir.glob(re.sub(r"<[^>]+>", "*", data_files[0]))) if data_files else []
        if not model_dirs or not (workdir / model_dirs[0] / "config.json").is_file() or len(matches) != 1:
            return None
        return without_option(args, "--data") + ["--data", str(matches[0].relative_to(workdir))] + TINY_EVAL
    if name == "data.inspect":
        data_files, tokenizer_dirs = option_values(args, "--data"), option_values(args, "--tokenizer")
        formats = option_values(args, "--format")
        tokenizers = sorted(workdir.glob(".cache/synthetic/*/tokenizer"))
        if not (data_files and tokenizer_dirs and formats == ["gsm8k"] and tokenizers):
            return None
        (workdir / "gsm8k.jsonl").write_text(GSM8K_ROWS)
        args = without_option(without_option(args, "--data"), "--tokenizer")
        return args + ["--data", "gsm8k.jsonl", "--tokenizer", str(tokenizers[0].relative_to(workdir))]
    return None


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_cheap_commands_run_as_written_and_never_destroy_an_earlier_run(tmp_path, monkeypatch, capsys):
    """Runs, in README order and in a fresh folder, every train.py command on the demo config,
    the evaluation of a model an earlier command trained, and data.inspect, at tiny sizes; then
    runs each again: one that writes a run folder refuses with one line naming the folder (or,
    with --resume, continues a finished run without changing a byte), --overwrite aside."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    ran, seen = [], set()
    for cmd in readme_commands():
        if tuple(cmd) in seen:
            continue
        seen.add(tuple(cmd))
        args = runnable(cmd, tmp_path)
        if args is None:
            continue
        entry = entry_point(cmd)[0]
        try:
            execute(entry, args, monkeypatch)
        except SystemExit as e:
            if e.code not in (0, None):
                error = capsys.readouterr().err[-2000:]
                pytest.fail(f"README: {' '.join(cmd)} failed (exit {e.code}): {error}")
        ran.append((cmd, entry, args))
    commands_run = [" ".join(cmd) for cmd, _, _ in ran]
    assert "python train.py" in commands_run, "the set-up command `python train.py` was not run"
    assert any(c.startswith("python -m eval ") for c in commands_run), f"no evaluation command ran: {commands_run}"
    assert (tmp_path / "runs" / "demo" / "stage2" / "final" / "model.safetensors").is_file()

    refused = 0
    for cmd, entry, args in ran:
        if "--overwrite" in args or entry == ("module", "data.inspect"):  # replaces on purpose / writes no run
            continue
        before = snapshot(tmp_path / "runs")
        capsys.readouterr()
        try:
            execute(entry, args, monkeypatch)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            message = str(e.code) if not isinstance(e.code, int) else capsys.readouterr().err
        assert snapshot(tmp_path / "runs") == before, f"README: {' '.join(cmd)} run again changed runs/"
        if "--resume" in args:
            assert code == 0, f"README: {' '.join(cmd)}: resuming a finished run failed"
            continue
        assert code != 0, f"README: {' '.join(cmd)} run again did not refuse"
        assert "holds a run" in message or "holds an earlier evaluation" in message, message
        assert len(message.strip().splitlines()) == 1, message
        refused += 1
    assert refused >= 5, f"only {refused} commands were checked"
