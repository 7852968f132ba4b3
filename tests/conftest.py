"""Fixtures shared by more than one test folder: the synthetic task and its tokenizer, the test device."""
import os

import pytest
import torch

from data import load_tokenizer
from data.synthetic import build_task


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """The synthetic arithmetic task (64 train, 16 test records) with its tokenizer; read-only."""
    return build_task(str(tmp_path_factory.mktemp("synthetic")), n_train=64, n_test=16, seed=0)


@pytest.fixture(scope="session")
def syn_tok(task):
    """The synthetic task's tokenizer, shared: tests that add tokens load their own."""
    return load_tokenizer(task["tokenizer"])


# The device that device-dependent tests run on: `--device cuda` or SFTKEY_TEST_DEVICE=cuda (the
# option wins), CPU by default so CI runs them too. A CUDA request without a GPU is an error, not
# a silent fall-back to CPU.
def pytest_addoption(parser):
    parser.addoption("--device", default=None, choices=("cpu", "cuda"),
                     help="device for the device-dependent tests (default: $SFTKEY_TEST_DEVICE or cpu)")


def selected_device(config) -> str:
    name = config.getoption("--device") or os.environ.get("SFTKEY_TEST_DEVICE") or "cpu"
    if name not in ("cpu", "cuda"):
        raise pytest.UsageError(f"SFTKEY_TEST_DEVICE={name!r}: expected cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda / SFTKEY_TEST_DEVICE=cuda: torch sees no CUDA device")
    return name


def pytest_report_header(config):
    return f"sftkey test device: {selected_device(config)}"


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return torch.device(selected_device(pytestconfig))
