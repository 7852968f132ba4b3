"""Raw rows from files: (line number, dict) from JSONL, gzipped JSONL, JSON arrays and Parquet."""
import gzip
import json
import os
import zlib

from .records import DataError


def _open_lines(path):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _jsonl_rows(path):
    # Bytes per line: a non-UTF-8 line is reported (and skippable) on its own.
    try:
        with _open_lines(path) as f:
            for line_no, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield line_no, DataError(f"bytes are not UTF-8 at column {e.start + 1}",
                                             reason="not_utf8")
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    yield line_no, DataError(f"malformed JSON ({e.msg} at column {e.colno})",
                                             reason="bad_json")
                    continue
                if not isinstance(row, dict):
                    yield line_no, DataError(f"expected a JSON object, got {type(row).__name__}",
                                             reason="not_an_object")
                    continue
                yield line_no, row
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read file: {e}", path=path, reason="unreadable") from e


def _json_array_rows(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise DataError(f"bytes are not UTF-8 at byte {e.start}", path=path, reason="not_utf8") from e
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg})", path=path, line=e.lineno,
                        reason="bad_json") from e
    if isinstance(data, dict):
        data = [data]
    for i, row in enumerate(data, 1):  # "line" = 1-based position in the array
        yield i, row if isinstance(row, dict) else DataError(
            f"expected a JSON object, got {type(row).__name__}", reason="not_an_object")


def _parquet_rows(path):
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("reading Parquet needs pyarrow (pip install pyarrow)", path=path,
                        reason="unreadable") from e
    table = pq.read_table(path)
    for i, row in enumerate(table.to_pylist(), 1):  # "line" = 1-based row number
        yield i, row


def _starts_with_bracket(path):
    with open(path, "rb") as f:
        return f.read(4096).lstrip()[:1] == b"["


def read_rows(path):
    """Yield (line number, dict or DataError) for each non-blank row; raise on an empty file."""
    if not os.path.isfile(path):
        raise DataError("no such file", path=path, reason="missing_file")
    if os.path.getsize(path) == 0:
        raise DataError("the file is empty", path=path, reason="empty_file")
    name = path.lower()
    if name.endswith(".parquet"):
        rows = _parquet_rows(path)
    elif name.endswith(".json") and _starts_with_bracket(path):
        rows = _json_array_rows(path)
    else:
        rows = _jsonl_rows(path)
    count = 0
    for item in rows:
        count += 1
        yield item
    if count == 0:
        raise DataError("the file has no records (only blank lines)", path=path,
                        reason="empty_file")
