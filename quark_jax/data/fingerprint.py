"""Content hashes of data: one file, or every file of a directory tree (a leaf module).

A hash names the bytes, not the path: a JSONL file copied elsewhere keeps its hash, an edited one gets a new
one. A directory's hash covers each file's path relative to the directory and its bytes (files in sorted
order), so a renamed, added or removed shard changes it too. Files are read in 1 MiB blocks; symbolic links and
special files are refused rather than followed (``ValueError`` naming the path).
"""

from __future__ import annotations

import hashlib
import os
import stat

from quark_jax import run_paths

BLOCK_BYTES = 1 << 20


def _update_with_file(digest, path: str) -> None:
    with run_paths.open_file(path, "rb") as f:
        while block := f.read(BLOCK_BYTES):
            digest.update(block)


def _check_regular(path: str, kind: str) -> None:
    if not run_paths.is_local(path):
        return
    mode = os.lstat(path).st_mode
    ok = stat.S_ISREG(mode) if kind == "file" else stat.S_ISDIR(mode)
    if not ok:
        raise ValueError(f"{path} is not a regular {kind} (links and special files are not hashed)")


def file_sha256(path: str) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    _check_regular(path, "file")
    digest = hashlib.sha256()
    _update_with_file(digest, path)
    return digest.hexdigest()


def _files_under(top: str) -> list[str]:
    """Paths relative to ``top`` of every file below it, sorted, ``/``-separated; nothing is followed."""
    if not run_paths.is_local(top):
        prefix = top.rstrip("/") + "/"
        return sorted(p[len(prefix):] for p in run_paths.walk_files(top))
    found = []
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in dirs + files:
            _check_regular(os.path.join(root, name), "directory" if name in dirs else "file")
        found += [os.path.relpath(os.path.join(root, name), top).replace(os.sep, "/") for name in files]
    return sorted(found)


def tree_sha256(directory: str) -> tuple[str, int]:
    """``(SHA-256 hex, number of files)`` of a directory tree: each file's relative path and bytes, in order."""
    _check_regular(directory, "directory")
    digest = hashlib.sha256()
    files = _files_under(directory)
    for relative in files:
        digest.update(relative.encode("utf-8") + b"\0")
        _update_with_file(digest, run_paths.join(directory, *relative.split("/")))
        digest.update(b"\0")
    return digest.hexdigest(), len(files)


def text_sha256(text: str) -> str:
    """The SHA-256 (hex) of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
