"""configs/paper/: every file parses as a train.py config, matches its generator, states the paper's settings."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import train

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "paper").glob("*/*.toml"))


def test_one_config_per_model_and_data_set():
    names = {(p.parent.name, p.stem) for p in CONFIGS}
    models = {"qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen3-8b-base", "smollm3-3b-base"}
    datasets = {"gsm8k", "openr1_math", "openbookqa", "cot_collection"}
    assert names == {(m, d) for m in models for d in datasets}


def test_files_match_the_generator():
    p = subprocess.run([sys.executable, "scripts/paper_configs.py", "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses_with_the_papers_settings(path):
    cfg = train.parse_args(["--config", str(path)])
    assert (cfg.precision, cfg.weight_decay, cfg.batch_size, cfg.style) == ("bf16", 0.1, 256, "tagged")
    assert cfg.batch_size % (cfg.micro_batch_size * 8) == 0  # 8 GPUs, the paper's 32 per device
    for stage in (cfg.stage1, cfg.stage2):
        assert (stage.lr, stage.warmup_epochs) == (5e-6, 0.5)
    assert cfg.stage1.epochs == 3.0 and cfg.stage1.weights == [0.0, 1.0, 1.0] and cfg.stage2.weights == [0.0, 0.0, 1.0]
    if path.parent.name in ("qwen2.5-7b", "qwen3-8b-base"):
        assert cfg.parallel == "fsdp" and cfg.grad_checkpointing
    assert cfg.train_data == f"downloads/paper/{path.stem}/train.jsonl"
    assert "/" in cfg.init and not Path(cfg.init).exists()  # a hub name


@pytest.mark.parametrize("path", CONFIGS[:1])
def test_every_setting_says_whose_it_is(path):
    """Each value the paper states is marked 'paper'; each it leaves open, 'our choice'."""
    comments = {}
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("["):
            section = line.split("]")[0].strip("[") + "."
        elif "=" in line and not line.startswith("#"):
            key = section + line.split("=")[0].strip()
            comments[key] = line.split("#", 1)[1] if "#" in line else ""
    ours = ["template", "tags_as_special", "max_len", "micro_batch_size", "parallel", "grad_checkpointing", "betas",
            "grad_clip", "stage1.decay", "stage2.epochs", "stage2.lr", "stage2.warmup_epochs", "stage2.decay"]
    papers = ["precision", "weight_decay", "batch_size", "stage1.lr", "stage1.epochs", "stage1.warmup_epochs"]
    assert all("our choice" in comments[k] for k in ours), {k: comments[k] for k in ours}
    assert all(comments[k].strip().startswith("paper") for k in papers), {k: comments[k] for k in papers}
    tomllib.loads(path.read_text())
