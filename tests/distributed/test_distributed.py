"""train.py under torchrun (2 CPU processes, gloo): DDP and FSDP2 match the single-process run
with the same global batch in both stages, and a killed DDP run resumes exactly (with 2 ranks, or
with 1 process); bad launch settings give a clear error."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from training import TrainError
from training.distributed import Dist, setup_distributed
from training.step_log import JsonlLog

ROOT = Path(__file__).resolve().parents[2]
# tests/train's TINY model with tied embeddings (the loss reads the embedding shard FSDP gathers),
# 2 micro-batches of 2 per rank = the single process's 4 micro-batches of 2, a checkpoint every step
SETTINGS = {
    "synthetic.n_train": 300, "synthetic.n_test": 8, "synthetic.n_terms": "[2,5]",
    "model.hidden_size": 32, "model.num_layers": 2, "model.num_heads": 2, "model.num_kv_heads": 1,
    "model.head_dim": 16, "model.intermediate_size": 64, "model.tie_word_embeddings": "true",
    "batch_size": 8, "micro_batch_size": 2, "stage1.max_steps": 3, "stage2.max_steps": 2,
    "stage1.warmup_steps": 1, "stage2.warmup_steps": 1, "val_every": 0, "val_examples": 16,
    "eval": "false", "compile_loss": "false", "precision": "fp32", "ckpt_every": 1,
}


def argv(out, **overrides):
    return ["--out", str(out)] + [x for k, v in {**SETTINGS, **overrides}.items() for x in ("--set", f"{k}={v}")]


def torchrun(args, parallel):
    """Starts `torchrun --nproc_per_node 2 train.py`; its output goes to a file next to --out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "train.py", "--parallel", parallel] + args
    output = Path(args[args.index("--out") + 1] + f".{parallel}.log")
    with open(output, "a") as f:  # a file, not a pipe: nothing blocks on a full pipe while we wait
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=f, stderr=subprocess.STDOUT)
    proc.output = output
    return proc


def run_torchrun(args, parallel):
    proc = torchrun(args, parallel)
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.output.read_text()[-4000:]


def children(pid):
    """Process ids whose parent is pid (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def log(out):
    return JsonlLog(Path(out) / "log.jsonl").records()


def train_records(out):
    return [r for r in log(out) if r["type"] == "train"]


def assert_same_run(out, reference, atol=1e-5, check_val=True):
    got, want = train_records(out), train_records(reference)
    assert [(r["stage"], r["step"]) for r in got] == [(r["stage"], r["step"]) for r in want]
    for a, b in zip(got, want):
        for key in ("loss", "cot_loss", "key_loss", "supervised_tokens"):
            assert (key in a) == (key in b) and a.get(key, 0) == pytest.approx(b.get(key, 0), abs=atol), (a, b)
    vals, ref_vals = ([r for r in log(run) if r["type"] == "val" and check_val] for run in (out, reference))
    assert [(r["stage"], r["step"]) for r in vals] == [(r["stage"], r["step"]) for r in ref_vals]
    for key in ("val_cot_nll", "val_key_nll"):  # validation batches shared out over the ranks
        assert [r[key] for r in vals] == pytest.approx([r[key] for r in ref_vals], abs=atol)
    for stage in (1, 2):
        a = load_file(Path(out) / f"stage{stage}" / "final" / "model.safetensors")
        b = load_file(Path(reference) / f"stage{stage}" / "final" / "model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"stage {stage} {k}: {m}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference and the uninterrupted DDP run (shared by the tests below)."""
    base = tmp_path_factory.mktemp("dist")
    train.main(argv(base / "single"))
    run_torchrun(argv(base / "ddp"), "ddp")
    return base


def test_ddp_matches_single_process(runs):
    assert_same_run(runs / "ddp", runs / "single")
    assert not list((runs / "ddp").glob("stage*/step_*"))  # rank 0 cleaned up its step checkpoints


def test_fsdp_matches_single_process(runs, tmp_path):
    run_torchrun(argv(tmp_path / "fsdp"), "fsdp")
    assert_same_run(tmp_path / "fsdp", runs / "single")


def test_killed_ddp_run_resumes_with_two_ranks_or_one(runs, tmp_path):
    killed = tmp_path / "killed"
    proc = torchrun(argv(killed), "ddp")
    deadline = time.time() + 200
    while not list(killed.glob("stage1/step_000001")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.output.read_text()[-3000:]
    for pid in children(proc.pid) + [proc.pid]:  # both ranks (own sessions, as torchrun starts them), then torchrun
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "stage2" / "final").exists()
    one_rank = tmp_path / "one_rank"
    shutil.copytree(killed, one_rank)
    run_torchrun(["--out", str(killed), "--resume"], "ddp")
    assert_same_run(killed, runs / "ddp", atol=1e-12, check_val=False)  # resume drops earlier val lines
    # the whole optimizer state is saved by parameter name, so one process can take over
    train.main(["--out", str(one_rank), "--resume", "--parallel", "none"])
    assert_same_run(one_rank, runs / "ddp", check_val=False)


def test_launch_errors_name_the_setting(tmp_path, monkeypatch):
    cfg = train.parse_args(argv(tmp_path / "x", batch_size=6))
    with pytest.raises(TrainError, match=r"batch_size 6 is not a multiple of micro_batch_size 2 x 2 rank"):
        train.run_stage(1, cfg, None, None, None, None, None, torch.device("cpu"), None, dist=Dist(0, 2))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="2 processes but parallel = 'none'"):
        setup_distributed(cfg)
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.delenv("RANK", raising=False)
    cfg.parallel = "fsdp"
    with pytest.raises(TrainError, match="launch with torchrun"):
        setup_distributed(cfg)
    cfg.cpu_offload = True
    with pytest.raises(TrainError, match="cpu_offload = true needs --parallel fsdp on CUDA"):
        setup_distributed(cfg)
