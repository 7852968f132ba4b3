"""python -m data.fetch on stand-ins of the paper's hub data sets, offline (tests/data/paper_fixtures.py)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from data import load_records  # noqa: E402
from data.fetch import PAPER, assign_splits, fetch  # noqa: E402
from data.hub_rows import json_object_members, parquet_rows  # noqa: E402
from data.records import DataError  # noqa: E402
from eval.reference_check import check_file  # noqa: E402
from paper_fixtures import MALFORMED, write_paper_fixtures  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(HF_HOME folder, {name: snapshot folder}) with the four data sets in its hub cache."""
    home = tmp_path_factory.mktemp("hf")
    return home, write_paper_fixtures(home / "hub", tmp_path_factory.mktemp("scratch"))


def run_fetch(args, hf_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "data.fetch", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def fetched(hub, tmp_path_factory):
    """The output folder of one offline `python -m data.fetch --held-out 1` over all four."""
    out = tmp_path_factory.mktemp("paper")
    p = run_fetch(["--out", str(out), "--held-out", "1"], hub[0])
    assert p.returncode == 0, p.stderr
    return out, p.stdout


def lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_offline_fetch_writes_splits_and_manifest(fetched):
    out, stdout = fetched
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest) == sorted(PAPER)
    rows = {name: {s: e["splits"][s]["rows"] for s in ("train", "validation", "test")} for name, e in manifest.items()}
    assert rows == {"gsm8k": dict(train=5, validation=1, test=2),  # 7 - 1 bad; official test; 1 drawn
                    "openr1_math": dict(train=5, validation=1, test=1),  # 8 - 1 bad; both drawn
                    "openbookqa": dict(train=3, validation=1, test=2),  # 4 - 1 bad; all official
                    "cot_collection": dict(train=3, validation=1, test=1)}  # 6 - 1 bad; both drawn
    for name, entry in manifest.items():
        for split, info in entry["splits"].items():
            path = out / info["file"]
            assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert len(path.read_text().splitlines()) == info["rows"]
        assert entry["commit"] == "0123456789abcdef0123456789abcdef01234567"
        assert entry["repo"] == PAPER[name]["repo"] and entry["seed"] == 0
    assert manifest["openbookqa"]["drawn_from_train"] == [] and manifest["gsm8k"]["drawn_from_train"] == ["validation"]
    assert "gsm8k: train 5, validation 1, test 2" in stdout


def test_each_malformed_row_is_counted_and_named(fetched):
    manifest = json.loads((fetched[0] / "manifest.json").read_text())
    for name, (file, row, field, reason) in MALFORMED.items():
        assert manifest[name]["skipped"] == {reason: 1}, name
        assert manifest[name]["errors"][0].startswith(f"{file}:{row}, field '{field}': "), manifest[name]["errors"]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_strict_stops_at_the_malformed_row(hub, tmp_path, name):
    file, row, field, _ = MALFORMED[name]
    with pytest.raises(DataError, match=rf"^{file}:{row}, field '{field}': "):
        fetch(name, str(tmp_path), held_out=1, strict=True, snapshot=str(hub[1][name]))


def test_records_are_what_the_adapters_make(fetched):
    out = fetched[0]
    gsm = lines(out / "gsm8k" / "test.jsonl")[0]
    assert gsm == dict(id="main/test-00000-of-00001.parquet:1",
                       prompt="Ben runs 2 miles a day for 6 days. How far does he run?",
                       thinking="2 * 6 = 12 miles.", answer="12", kind="number")
    obqa = lines(out / "openbookqa" / "validation.jsonl")[0]
    assert obqa == dict(id="5-105", prompt="Plants need\nA. salt\nB. sunlight\nC. sand\nD. smoke",
                        thinking="plants require sunlight to grow", answer="B", kind="choice",
                        choices=["salt", "sunlight", "sand", "smoke"])
    openr1 = {r["id"]: r for s in ("train", "validation", "test") for r in lines(out / "openr1_math" / f"{s}.jsonl")}
    assert sorted(openr1) == [f"uuid-{i:04d}" for i in (0, 1, 2, 4, 5, 6, 7)]
    assert openr1["uuid-0001"]["thinking"].endswith("Answer: $\\frac{5}{6}$.")
    assert (openr1["uuid-0001"]["answer"], openr1["uuid-0001"]["kind"]) == ("\\frac{5}{6}", "latex")
    assert (openr1["uuid-0000"]["answer"], openr1["uuid-0000"]["kind"]) == ("4", "number")
    cot = {r["id"]: r for s in ("train", "validation", "test") for r in lines(out / "cot_collection" / f"{s}.jsonl")}
    assert sorted(cot) == ["0", "1", "2", "4", "5"]
    assert (cot["5"]["thinking"], cot["5"]["answer"]) == ("'Merci' is French for thank you.", "thank you")
    for name in PAPER:  # train.py reads them with data_format "auto"
        records = load_records(str(out / name / "train.jsonl"))
        assert records and all(r.answer for r in records)


def test_splits_are_disjoint_and_fixed_by_the_seed(hub, tmp_path):
    snapshot = str(hub[1]["openr1_math"])
    a = fetch("openr1_math", str(tmp_path / "a"), held_out=2, seed=0, snapshot=snapshot)
    b = fetch("openr1_math", str(tmp_path / "b"), held_out=2, seed=0, snapshot=snapshot)
    assert a["splits"] == {s: {**v} for s, v in b["splits"].items()}
    ids = {s: {r["id"] for r in lines(tmp_path / "a" / "openr1_math" / f"{s}.jsonl")} for s in a["splits"]}
    assert len(set.union(*ids.values())) == 7 and sum(len(v) for v in ids.values()) == 7
    draws = {tuple(sorted(assign_splits({"train": list(range(7))}, 2, seed)["test"])) for seed in range(6)}
    assert len(draws) > 1  # the seed chooses the draw
    order = np.random.default_rng(3).permutation(7).tolist()
    split = assign_splits({"train": list(range(7)), "test": ["t"]}, 2, 3)
    assert split == {"train": order[2:], "validation": sorted(order[:2]), "test": ["t"]}  # train shuffled


def test_too_few_rows_to_hold_out(hub, tmp_path):
    with pytest.raises(DataError, match="5 training rows: too few to hold out 3 for each of"):
        fetch("cot_collection", str(tmp_path), held_out=3, snapshot=str(hub[1]["cot_collection"]))


def test_offline_without_a_cached_copy(tmp_path):
    (tmp_path / "hf").mkdir()
    p = run_fetch(["--out", str(tmp_path / "out"), "--only", "gsm8k"], tmp_path / "hf")
    assert p.returncode == 1
    err = p.stderr.strip()
    assert err.startswith("data.fetch: dataset 'openai/gsm8k' is not (completely) in the hub cache")
    assert "hf download openai/gsm8k --repo-type dataset" in err and "\n" not in err


def test_download_patterns_name_data_files_only():
    from huggingface_hub.utils import filter_repo_objects
    listing = ["README.md", ".gitattributes", "CoT-Collection.py", "openbookqa.py", "main/train-00000-of-00001.parquet",
               "main/test-00000-of-00001.parquet", "socratic/train-00000-of-00001.parquet",
               "additional/train-00000-of-00001.parquet", "main/validation-00000-of-00001.parquet",
               "data/train-00003-of-00010.parquet", "extended/train-00000-of-00010.parquet",
               "all/default-00000-of-00010.parquet", "data/CoT_collection_en.json", "data/CoT_collection_ko.json"]
    kept = {name: sorted(filter_repo_objects(listing, allow_patterns=list(spec["files"].values())))
            for name, spec in PAPER.items()}
    assert kept == {"gsm8k": ["main/test-00000-of-00001.parquet", "main/train-00000-of-00001.parquet"],
                    "openr1_math": ["data/train-00003-of-00010.parquet"],
                    "openbookqa": ["additional/train-00000-of-00001.parquet"],
                    "cot_collection": ["data/CoT_collection_en.json"]}


def test_checker_returns_every_fixture_reference(hub, fetched):
    """Item 5 on the fixtures: the raw solutions (GSM8K, OpenR1) and the responses we train on."""
    snaps = hub[1]
    raw = [(snaps["gsm8k"] / "main" / "train-00000-of-00001.parquet", "gsm8k", 6),
           (snaps["gsm8k"] / "main" / "test-00000-of-00001.parquet", "gsm8k", 2),
           (snaps["openr1_math"] / "data" / "train-00000-of-00002.parquet", "math", 3),
           (snaps["openr1_math"] / "data" / "train-00001-of-00002.parquet", "math", 4)]
    for path, fmt, n in raw:
        result = check_file(path, format=fmt)
        assert (result["correct"], result["n"]) == (n, n), (path, result["failures"])
    for name in PAPER:
        for split in ("train", "validation", "test"):
            result = check_file(fetched[0] / name / f"{split}.jsonl")
            assert result["n"] > 0 and result["correct"] == result["n"], (name, split, result["failures"])


def test_parquet_rows_name_a_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"question": ["q"]}), path)
    with pytest.raises(DataError, match=r"x.parquet: no column\(s\) \['answer'\]"):
        list(parquet_rows(str(path), ["question", "answer"]))
    assert list(parquet_rows(str(path), ["question"])) == [(1, {"question": "q"})]


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_json_object_members_across_chunk_boundaries(tmp_path, chunk):
    data = {str(i): {"source": "é" * i, "target": str(i), "rationale": "r\n" * i} for i in range(30)}
    path = tmp_path / "cot.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    got = list(json_object_members(str(path), chunk_chars=chunk))
    assert [(n, k) for n, k, _ in got] == [(i + 1, str(i)) for i in range(30)]
    assert {k: v for _, k, v in got} == data


@pytest.mark.parametrize("text,message", [
    ('{"a": {"x": 1}, "b": {"x": 2,}}', "cot.json:2: malformed JSON in the value of member 2"),
    ('{"a": 1 "b": 2}', "cot.json:1: expected ',' or '}' after member 1"),
    ('[{"a": 1}]', "cot.json:0: expected '{'"),
    ('{"a": {"x": 1}', "cot.json:1: expected ',' or '}' after member 1, found 'the end of the file'"),
])
def test_json_object_members_malformed(tmp_path, text, message):
    path = tmp_path / "cot.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        list(json_object_members(str(path), chunk_chars=3))
