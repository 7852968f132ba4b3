"""Writes that readers never see half done: a temporary file next to the target, fsynced, then
renamed over it (and read_json, whose errors name the file). Standard library only, so data/,
model/, eval/, training/ and scripts/ all import it without importing each other."""
import contextlib
import json
import os


def fsync_dir(path):
    """Makes a rename inside the directory durable (the file's own fsync does not cover its name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path, mode="w", opener=open, **kwargs):
    """Yields a file opened as opener(tmp, mode, **kwargs) (text modes default to UTF-8); once the
    block ends without error it is fsynced and renamed to path, otherwise removed."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"  # the pid: processes writing the same file do not share a temp file
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        with opener(tmp, mode, **kwargs) as f:
            yield f
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path, obj):
    with atomic_write(path) as f:
        json.dump(obj, f, indent=1)


def read_json(path):
    """json.load of a file; malformed JSON is a ValueError naming the file, line and column."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
