"""The files of an index directory: generation-stamped names, atomic writes, checksums, and clean-up.

Every data file of generation ``g`` is named ``<part>-<g:06d><ext>`` and written (then fsynced) before the
manifest that names it; the manifest is written to a temporary file, fsynced, and swapped in by ``os.replace``
(:func:`swap_manifest`). So a crash at any point leaves a directory whose ``manifest.json`` names a complete,
checksummed earlier generation; files no manifest names are removed the next time the index opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from typing import Any

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_GENERATED = re.compile(r"^(passages|vectors|hnsw|deleted|bm25)-\d{6}(\.[a-z]+)?$")


class IndexFormatError(Exception):
    """An index directory that cannot be read as it stands (missing or damaged file); the message is one line
    naming the file and the fix."""


def part_name(part: str, generation: int, ext: str) -> str:
    """``passages-000003.jsonl`` and the like."""
    return f"{part}-{generation:06d}{ext}"


def is_generated(name: str) -> bool:
    """Whether ``name`` is a file or folder this module writes (a data part, or a temporary file)."""
    return bool(_GENERATED.match(name)) or name.startswith(_TMP_PREFIX)


def fsync_dir(directory: str) -> None:
    """Makes renames in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    """Flushes an already written file to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_file(path: str) -> dict[str, Any]:
    """``{"sha256", "bytes"}`` of a written file, fsyncing it first."""
    fsync_file(path)
    return {"sha256": sha256_of(path), "bytes": os.path.getsize(path)}


def describe_folder(path: str) -> dict[str, Any]:
    """``{"files": {name: {"sha256", "bytes"}}}`` of a written folder of plain files."""
    files = {name: describe_file(os.path.join(path, name)) for name in sorted(os.listdir(path))}
    fsync_dir(path)
    return {"files": files}


def swap_manifest(directory: str, manifest: dict[str, Any]) -> None:
    """Atomically replaces ``manifest.json``: temporary file, fsync, ``os.replace``, fsync of the directory."""
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{MANIFEST}")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, MANIFEST))
    fsync_dir(directory)


def referenced_names(manifest: dict[str, Any]) -> set[str]:
    """The file and folder names a manifest points at."""
    return {entry["name"] for entry in manifest["files"].values()}


def remove_unreferenced(directory: str, manifest: dict[str, Any]) -> None:
    """Deletes generated files and folders the manifest does not name (older generations, leftovers of a
    crashed write). Symbolic links are unlinked, never followed. Other files are left alone."""
    keep = referenced_names(manifest)
    for name in os.listdir(directory):
        if name in keep or not is_generated(name):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            pass  # read-only directory: harmless, the manifest never points at these


def check_part(directory: str, part: str, entry: dict[str, Any]) -> str:
    """The path of a manifest entry after checking that it is a plain file (or folder of plain files) inside
    ``directory`` with the recorded sizes and checksums; :class:`IndexFormatError` otherwise."""
    name = entry.get("name", "")
    if not isinstance(name, str) or not _GENERATED.match(name):
        raise IndexFormatError(f"{os.path.join(directory, MANIFEST)}: bad file name {name!r} for part {part!r}; "
                               f"the manifest is damaged: rebuild the index (quark index build)")
    path = os.path.join(directory, name)
    _check_plain(path, entry, folder="files" in entry)
    if "files" in entry:
        for inner, inner_entry in entry["files"].items():
            if "/" in inner or inner.startswith("."):
                raise IndexFormatError(f"{path}: bad file name {inner!r} in the manifest; rebuild the index")
            _check_plain(os.path.join(path, inner), inner_entry, folder=False)
    return path


def _check_plain(path: str, entry: dict[str, Any], folder: bool) -> None:
    fix = "restore the directory from a backup or rebuild the index (quark index build)"
    if os.path.islink(path):
        raise IndexFormatError(f"{path}: is a symbolic link; index files must be plain files ({fix})")
    if not os.path.exists(path):
        raise IndexFormatError(f"{path}: missing; {fix}")
    if folder:
        if not os.path.isdir(path):
            raise IndexFormatError(f"{path}: should be a folder; {fix}")
        return
    if not os.path.isfile(path):
        raise IndexFormatError(f"{path}: not a plain file; {fix}")
    size = os.path.getsize(path)
    if size != entry.get("bytes"):
        raise IndexFormatError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')} (truncated or "
                               f"overwritten); {fix}")
    if sha256_of(path) != entry.get("sha256"):
        raise IndexFormatError(f"{path}: checksum mismatch (the file was changed after it was written); {fix}")
