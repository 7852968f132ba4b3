"""Rows of large hub data files, streamed: Parquet (chosen columns, in batches) and one JSON object
whose members are the rows (CoT-Collection's `{"id": {...}, ...}`, 2.4 GB: never loaded whole)."""
import json
import re

from .records import DataError

_SPACE = re.compile(r"\s*")


def parquet_rows(path, columns, batch_size=1024):
    """(1-based row number, {column: value}) for the given columns of a Parquet file."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow (pip install pyarrow)", path=path, reason="unreadable") from None
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError for a damaged file
        raise DataError(f"not a readable Parquet file ({e})", path=path, reason="unreadable") from e
    names = table.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"no column(s) {missing}; the file has {names}", path=path, reason="missing_field")
    n = 0
    for batch in table.iter_batches(columns=list(columns), batch_size=batch_size):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def json_object_members(path, chunk_chars=1 << 20, max_member_chars=1 << 26):
    """(1-based position, key, value) of each member of the top-level JSON object in path."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        state = dict(buf="", pos=0, eof=False)

        def read_more():
            if state["eof"]:
                return False
            try:
                chunk = f.read(chunk_chars)
            except UnicodeDecodeError as e:
                raise DataError(f"bytes are not UTF-8 ({e.reason})", path=path, reason="not_utf8") from e
            state["buf"], state["pos"] = state["buf"][state["pos"]:] + chunk, 0
            state["eof"] = not chunk
            return bool(chunk)

        def next_char():
            while True:
                state["pos"] = _SPACE.match(state["buf"], state["pos"]).end()
                if state["pos"] < len(state["buf"]) or not read_more():
                    return state["buf"][state["pos"]:state["pos"] + 1]

        def decode(what, n):
            while True:
                try:
                    value, end = decoder.raw_decode(state["buf"], state["pos"])
                    if end < len(state["buf"]) or state["eof"]:
                        state["pos"] = end
                        return value
                except json.JSONDecodeError as e:
                    if state["eof"] or len(state["buf"]) - state["pos"] > max_member_chars:
                        raise DataError(f"malformed JSON in the {what} of member {n} ({e.msg})", path=path,
                                        line=n, reason="bad_json") from None
                read_more()

        def expect(chars, n):
            c = next_char()
            if not c or c not in chars:
                raise DataError(f"expected {' or '.join(repr(x) for x in chars)} after member {n}, found "
                                f"{c or 'the end of the file'!r}", path=path, line=n, reason="bad_json")
            state["pos"] += 1
            return c

        expect("{", 0)
        n = 0
        if next_char() == "}":
            return
        while True:
            if next_char() != '"':
                raise DataError(f"expected a string key for member {n + 1}", path=path, line=n + 1, reason="bad_json")
            key = decode("key", n + 1)
            expect(":", n + 1)
            next_char()
            value = decode("value", n + 1)
            n += 1
            yield n, key, value
            if expect(",}", n) == "}":
                return
