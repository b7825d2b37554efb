"""The names inside a run directory and the one way to reach a path there: a leaf module.

**Run directories anywhere.** A run directory is a local path or an object-store URL (``gs://bucket/run``,
``s3://...``). Every read and write of a run file goes through the helpers below, which hand URLs to
``etils.epath`` (the path layer orbax uses too, so checkpoints and run files take the same route) and keep
local paths on ``os``. Never ``os.path.abspath`` a run directory: that turns ``gs://bucket/run`` into
``<cwd>/gs:/bucket/run``; :func:`absolute` is the version that leaves URLs alone.

**What may be opened.** Nothing inside a *local* run directory is followed or opened unless it is a regular
file or directory: :func:`safe_path` and :func:`check_tree` refuse symbolic links and FIFOs, sockets and
devices (:class:`UnsafeRunDirError`, naming the path). On an object store there are no links or special files
(an object is bytes under a name), so for URLs those two only refuse a ``..`` that would leave the directory.
:mod:`quark_jax.runs` (the format), the orbax layer (:mod:`quark_jax.training.checkpoint`) and the metrics
writer all reach run files through here.

**Atomicity.** :func:`write_text` replaces a file whole: locally through a temporary file and ``os.replace``;
on an object store a single upload is already atomic (readers see the old object or the new one). Object
stores cannot append, so :func:`append_text` there rewrites the object (fine for the small text files it is
used for: samples, metrics lines are written by :class:`quark_jax.training.metrics.MetricsWriter`).
"""

from __future__ import annotations

import os
import posixpath
import stat
from typing import Iterator

from etils import epath

MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"  # an imported Hugging Face tokenizer (quark import_hf)
RUN_INFO_FILE = "run.json"
OBJECTIVE_FILE = "objective.json"
GIN_CONFIG_FILE = "config.gin"
CHECKPOINTS_DIR = "checkpoints"
QUANTIZATION_FILE = "quantization.json"
QUANTIZED_PARAMS_DIR = "quantized_params"
MERGED_FROM_FILE = "merged_from.json"
IMPORTED_FROM_FILE = "imported_from.json"
PRUNING_FILE = "pruning.json"  # how a pruned run was made (quark prune)
UNREADABLE_CHECKPOINTS_DIR = "checkpoints_unreadable"


class RunDirError(FileNotFoundError):
    """A path is not a run directory (or lacks what the caller needs); the message names the path."""


class UnsafeRunDirError(RunDirError):
    """Something inside a run directory is a symbolic link or a special file (FIFO, socket, device): it is
    neither followed nor opened, since it would read another run's files, write outside the directory or
    block forever. The message names the path."""


def _fresh_object_listings() -> None:
    """Turns off fsspec's directory-listing cache for the object stores (where fsspec is what epath uses, e.g.
    ``EPATH_USE_TF=0``): a run directory is written by other processes and by tensorstore (orbax's arrays), and
    a cached listing would hide their steps and leases. A user's own fsspec configuration still wins."""
    try:
        from fsspec import config
    except ImportError:  # epath then uses TensorFlow's file systems, which cache nothing
        return
    for protocol in ("gs", "gcs", "s3", "s3a"):
        config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


_fresh_object_listings()


# ---- local paths and URLs -----------------------------------------------------------------------------
def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on the local file system (no ``scheme://`` prefix)."""
    return "://" not in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """``path`` made absolute if local (``~`` expanded); a URL unchanged but for a trailing ``/``."""
    path = os.fspath(path)
    if is_local(path):
        return os.path.abspath(os.path.expanduser(path))
    return path.rstrip("/")


def join(directory: str, *parts: str) -> str:
    """``directory/part/...`` for a local path or a URL (``/``-separated on object stores)."""
    if is_local(directory):
        return os.path.join(directory, *parts)
    return posixpath.join(directory.rstrip("/"), *parts)


def as_epath(path: str | os.PathLike) -> epath.Path:
    """An ``etils.epath.Path`` for a local path or a URL (what orbax takes)."""
    return epath.Path(absolute(path))


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else epath.Path(path).exists()


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else epath.Path(path).is_dir()


def makedirs(path: str) -> None:
    """Creates a directory and its parents (on an object store: nothing to create, a prefix exists once an
    object is written under it; epath does what the store needs)."""
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        epath.Path(path).mkdir(parents=True, exist_ok=True)


def listdir(path: str) -> list[str]:
    """The names directly under ``path`` (``[]`` when it does not exist)."""
    if is_local(path):
        return os.listdir(path) if os.path.isdir(path) else []
    directory = epath.Path(path)
    return [p.name for p in directory.iterdir()] if directory.exists() else []


def open_file(path: str, mode: str = "r"):
    """``open`` for a local path or a URL (text modes decode UTF-8)."""
    if is_local(path):
        return open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    return epath.Path(path).open(mode)


def read_text(path: str) -> str:
    with open_file(path) as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Replaces ``path`` whole and atomically (see the module docstring)."""
    if not is_local(path):
        epath.Path(path).write_bytes(data)
        return
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
    """Appends to a text file; on an object store (no append) the object is read and rewritten."""
    if is_local(path):
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    write_text(path, (read_text(path) if exists(path) else "") + text)


def copy_file(source: str, target: str) -> None:
    """Copies one file between any two places (local, object store, or one of each)."""
    write_bytes(target, read_bytes(source))


def remove(path: str) -> None:
    if is_local(path):
        os.remove(path)
    else:
        epath.Path(path).unlink()


def rmtree(path: str) -> None:
    """Removes a directory tree (nothing if it does not exist)."""
    if not exists(path):
        return
    if is_local(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        epath.Path(path).rmtree()


def walk_files(top: str) -> Iterator[str]:
    """Every file under ``top`` (paths with their scheme), for copying a tree between stores."""
    for entry in sorted(epath.Path(top).iterdir()):
        if entry.is_dir():
            yield from walk_files(str(entry))
        else:
            yield str(entry)


def move_tree(source: str, target: str) -> None:
    """Moves a directory: a rename locally; on an object store (no rename) a copy of every object, then the
    source removed."""
    if is_local(source) and is_local(target):
        os.rename(source, target)
        return
    for path in walk_files(source):
        copy_file(path, join(target, os.path.relpath(path, source) if is_local(source)
                             else path[len(source.rstrip("/")) + 1:]))
    rmtree(source)


# ---- what may be opened -----------------------------------------------------------------------------------
def _refuse(path: str, mode: int) -> None:
    """Raises :class:`UnsafeRunDirError` unless ``mode`` (an ``lstat`` mode) is a regular file or directory."""
    if stat.S_ISLNK(mode):
        what = f"a symbolic link (to {os.readlink(path)!r})"
    elif stat.S_ISFIFO(mode):
        what = "a FIFO"
    elif stat.S_ISSOCK(mode):
        what = "a socket"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device file"
    elif stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    else:
        what = "not a regular file or directory"
    raise UnsafeRunDirError(
        f"{path} is {what}; a run directory may hold only regular files and directories (links are not "
        "followed: they would read another run's files or write outside the directory). Replace it with a copy "
        "of what it points to, or remove it"
    )


def safe_path(run_dir: str, relative: str) -> str:
    """``run_dir/relative``, after checking with ``lstat`` (following nothing) that every component below
    ``run_dir`` that exists is a regular file or directory; a missing tail is fine (about to be written).
    The run directory itself may be a link (a user's choice of where to keep it); nothing inside it may be.

    For a URL run directory only ``..`` is refused: object stores have no symbolic links or special files."""
    if not is_local(run_dir):
        parts = [p for p in posixpath.normpath(relative).split("/") if p not in ("", ".")]
        if ".." in parts or relative.startswith("/"):
            raise UnsafeRunDirError(f"{join(run_dir, relative)} leaves the run directory {run_dir}")
        return join(run_dir, *parts)
    path = run_dir
    for part in [p for p in os.path.normpath(relative).split(os.sep) if p not in ("", ".")]:
        if part == "..":
            raise UnsafeRunDirError(f"{os.path.join(run_dir, relative)} leaves the run directory {run_dir}")
        path = os.path.join(path, part)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return os.path.join(run_dir, relative)
        _refuse(path, mode)
    return path


def check_tree(run_dir: str, relative: str = "") -> None:
    """Checks ``run_dir/relative`` and everything under it (``lstat``, nothing followed): every entry must be a
    regular file or directory, else :class:`UnsafeRunDirError` names the first offending path. A missing
    ``relative`` is fine. On an object store there is nothing to check (no links, no special files)."""
    if not is_local(run_dir):
        safe_path(run_dir, relative)
        return
    top = safe_path(run_dir, relative) if relative else run_dir
    if not os.path.isdir(top):
        return
    for root, dirs, files in os.walk(top, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:  # removed meanwhile (orbax deleting an old step)
                continue
            _refuse(path, mode)  # outside the try: UnsafeRunDirError is a FileNotFoundError too
