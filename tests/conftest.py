"""Fixtures shared by more than one test folder: the built-in synthetic task and its tokenizer."""
import pytest

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
