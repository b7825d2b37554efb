"""A knowledge base kept as a directory of text files: ``{relative path: text}`` for :func:`sync.sync_documents`.

Every regular file under the directory whose name ends in one of ``suffixes`` is a document, its id the path
relative to the directory (``/``-separated). Nothing is followed out of the directory: symbolic links (to files
or directories) and special files are skipped, hidden files and directories (a leading ``.``) too. A file larger
than ``max_file_bytes``, one that is not UTF-8, or more than ``max_documents`` documents is an error naming the
file and the fix.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

DEFAULT_SUFFIXES = (".md", ".txt", ".rst")
MAX_FILE_BYTES = 16 << 20
MAX_DOCUMENTS = 200_000


class DocumentDirError(ValueError):
    """The source directory cannot be read as documents; the message names the file and the fix."""


def read_documents(source_dir: str, suffixes: Sequence[str] = DEFAULT_SUFFIXES, max_file_bytes: int = MAX_FILE_BYTES,
                   max_documents: int = MAX_DOCUMENTS) -> dict[str, str]:
    """``{relative path: text}`` of the documents under ``source_dir`` (see the module docstring)."""
    if os.path.islink(source_dir) or not os.path.isdir(source_dir):
        raise DocumentDirError(f"--source {source_dir}: no such directory (a directory of {', '.join(suffixes)} "
                               "files, one document each)")
    documents: dict[str, str] = {}
    for directory, subdirs, files in os.walk(source_dir, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")
                            and not os.path.islink(os.path.join(directory, d)))
        for name in sorted(files):
            if name.startswith(".") or not name.endswith(tuple(suffixes)):
                continue
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode):
                continue  # a link or a special file: not followed
            if info.st_size > max_file_bytes:
                raise DocumentDirError(f"--source {path}: {info.st_size} bytes, more than {max_file_bytes}; split it "
                                       "into several documents")
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise DocumentDirError(f"--source {path}: not UTF-8 text (bad byte at offset {e.start}); convert it "
                                       "or remove it from the directory") from None
            documents[os.path.relpath(path, source_dir).replace(os.sep, "/")] = text
            if len(documents) > max_documents:
                raise DocumentDirError(f"--source {source_dir}: more than {max_documents} documents; split the "
                                       "knowledge base into several indexes")
    return documents
