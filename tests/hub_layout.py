"""Write a repository into a folder laid out the way huggingface_hub's cache lays it out.

<cache>/<models|datasets>--Owner--Name/blobs/<sha256>, refs/main (the commit hash) and
snapshots/<commit>/<path> as relative symlinks to the blobs, so that snapshot_download with
HF_HUB_OFFLINE=1 finds the files with no network.
"""
import hashlib
import os
from pathlib import Path


def write_hub_repo(cache, repo_id, files, repo_type="model", commit="0123456789abcdef0123456789abcdef01234567"):
    """files: {path in the repo: bytes, or a local file to copy}; returns the snapshot folder."""
    root = Path(cache) / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        data = Path(content).read_bytes() if isinstance(content, (str, Path)) else content
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot
