"""training.machine: the CPU's model and bf16 matrix flags read from /proc/cpuinfo text, the one-line
description the benchmarks print, and a run's machine.json (one entry per start of train.py)."""
import json
import shutil

import pytest
import torch

import train
from tests.train.test_run_folder import QUICK
from tests.train.test_train import argv
from training import checkpoint, machine

AMX_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni
"""
OLD_XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz
flags\t\t: fpu sse avx2
"""


@pytest.mark.parametrize("text, model, flags", [
    (AMX_XEON, "Intel(R) Xeon(R) Platinum 8480+", (True, True, True)),
    (EPYC, "AMD EPYC", (True, False, False)),
    (OLD_XEON, "Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", (False, False, False)),
])
def test_cpu_info_reads_the_model_and_the_bf16_flags(text, model, flags, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    info = machine.cpu_info(path)
    assert info == {"model": model, "avx512_bf16": flags[0], "amx_bf16": flags[1], "amx_tile": flags[2]}


def test_unreadable_cpuinfo_leaves_the_flags_unknown(tmp_path):
    info = machine.cpu_info(tmp_path / "missing")
    assert info["model"] and all(info[flag] is None for flag in machine.CPU_FLAGS)


def test_describe_says_which_kind_of_cpu(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(AMX_XEON)
    record = machine.machine("cpu", cpuinfo=path)
    record["commit"] = "0123456789abcdef0123456789abcdef01234567+changes"
    line = machine.describe(record)
    assert line.startswith("Intel(R) Xeon(R) Platinum 8480+ (AVX-512 bf16: yes, AMX bf16: yes), ")
    assert f"{record['cores']} cores, {torch.get_num_threads()} threads, torch {torch.__version__}" in line
    assert line.endswith("commit 0123456+changes")
    path.write_text(EPYC)
    assert "(AVX-512 bf16: yes, AMX bf16: no)" in machine.describe(machine.machine("cpu", cpuinfo=path))
    record["cpu"] = machine.cpu_info(tmp_path / "missing")
    record["commit"] = None
    line = machine.describe(record)
    assert "(AVX-512 bf16: unknown, AMX bf16: unknown)" in line and line.endswith("commit unknown")


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert machine.git_commit(tmp_path) is None


def test_a_run_records_its_machine_once_per_start_that_does_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    settings = {**QUICK, "ckpt_every": 1}
    real = checkpoint.save

    def kill_in_stage2(path, *args, **kwargs):
        if path.parent.name == "stage2":
            raise KeyboardInterrupt("simulated kill in stage 2")
        real(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", kill_in_stage2)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv(out, **settings))
    monkeypatch.setattr(checkpoint, "save", real)
    printed = capsys.readouterr().out
    starts = json.loads((out / "machine.json").read_text())
    assert len(starts) == 1 and starts[0]["resume"] is False
    assert starts[0]["cpu"] == machine.cpu_info() and starts[0]["torch"] == torch.__version__
    assert starts[0]["threads"] == torch.get_num_threads() and starts[0]["device"] == "cpu"
    assert f"machine: {machine.describe(starts[0])}" in printed
    train.main(["--out", str(out), "--resume"])  # trains stage 2: a second entry
    starts = json.loads((out / "machine.json").read_text())
    assert [s["resume"] for s in starts] == [False, True]
    before = (out / "machine.json").read_bytes()
    train.main(["--out", str(out), "--resume"])  # nothing left to do: the folder stays as it is
    assert (out / "machine.json").read_bytes() == before
    train.main(argv(out, **QUICK) + ["--overwrite"])  # a replaced run starts its list again
    assert len(json.loads((out / "machine.json").read_text())) == 1


def test_a_damaged_machine_json_is_named_on_resume(tmp_path):
    out = tmp_path / "run"
    train.main(argv(out, **QUICK))
    shutil.rmtree(out / "stage2")  # stage 2 to train again on resume
    (out / "machine.json").write_text('{"cpu": 1}')
    with pytest.raises(ValueError, match=f"{out / 'machine.json'}: expected a list of starts, found dict"):
        train.main(["--out", str(out), "--resume"])
