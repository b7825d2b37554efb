"""The names inside a run directory and the one safe way to reach a path there: a leaf module.

Nothing inside a run directory is followed or opened unless it is a regular file or directory:
:func:`safe_path` and :func:`check_tree` refuse symbolic links and FIFOs, sockets and devices
(:class:`UnsafeRunDirError`, naming the path). :mod:`quark_jax.runs` (the format), the orbax layer
(:mod:`quark_jax.training.checkpoint`) and the metrics writer all reach run files through here.
"""

from __future__ import annotations

import os
import stat

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
UNREADABLE_CHECKPOINTS_DIR = "checkpoints_unreadable"


class RunDirError(FileNotFoundError):
    """A path is not a run directory (or lacks what the caller needs); the message names the path."""


class UnsafeRunDirError(RunDirError):
    """Something inside a run directory is a symbolic link or a special file (FIFO, socket, device): it is
    neither followed nor opened, since it would read another run's files, write outside the directory or
    block forever. The message names the path."""


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
    The run directory itself may be a link (a user's choice of where to keep it); nothing inside it may be."""
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
    ``relative`` is fine."""
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
