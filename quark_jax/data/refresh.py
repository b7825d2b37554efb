"""``quark data refresh``: the next data version -- only documents never kept before, cleaned as in the build.

    quark data refresh --mixture quark_demo --root /data/quark_demo

A data root holds numbered versions, each a built directory (``build.py``'s format: shards, ``dataset.json``,
``report.json``, ``data.gin``) plus that version's lineage and the seen-document index::

    ROOT/v0001/  dataset.json  (+ "version", "parent", "content_hash")  report.json  data.gin  seen.npz  <task>/...
    ROOT/v0002/  ...

A refresh reads every document the mixture's sources hold now and keeps one only when it is neither an exact
nor a near duplicate of anything any earlier version kept (``seen_index.SeenIndex``, loaded from the newest
version's ``seen.npz``), nor of a document kept earlier in this refresh, and when it passes the build's
language, quality and toxicity filters; PII is scrubbed as in the build. The first refresh of an empty root
keeps everything clean (it is a build whose index is remembered).

The version directory, with the updated ``seen.npz`` inside it, is written under a temporary name and renamed
into place last: a crash leaves the root as it was, and the index can never disagree with the versions.

``content_hash`` is the SHA-256 over the shards' relative paths and their records' fields, in order, so the
same documents give the same hash wherever and whenever they are refreshed. Versions register as the mixture
``<name>_v<N>`` (tasks ``<name>_v<N>.<task>``); see ``replay.py`` for training on one with replay of the older.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile

from quark_jax.data import build as build_lib
from quark_jax.data.built_tasks import MANIFEST, register_built
from quark_jax.data.seen_index import FILE_NAME as SEEN_FILE
from quark_jax.data.seen_index import SeenIndex

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")


class _RefreshCleaner(build_lib._Cleaner):
    """The build's filters with deduplication against the seen-document index instead of this run alone."""

    def __init__(self, config, seen: SeenIndex):
        super().__init__(dataclasses.replace(config, exact_dedup=False, near_dedup=False))
        self.seen = seen

    def reject(self, text: str, kind: str, doc_id: str) -> str | None:
        if self.seen.exact_duplicate(text):
            return "exact_duplicate"
        if reason := super().reject(text, kind, doc_id):
            return reason
        if self.seen.near_duplicate(text):  # last: the most expensive check, as in the build
            return "near_duplicate"
        self.seen.add(text, doc_id)
        return None


def versions(root: str | os.PathLike) -> list[pathlib.Path]:
    """The committed version directories of ``root`` (``v0001``, ``v0002`` ...), oldest first."""
    root = pathlib.Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := VERSION_PATTERN.match(p.name)) and p.is_dir() and not p.is_symlink()]
    return [p for _, p in sorted(found)]


def read_manifest(version_dir: str | os.PathLike) -> dict:
    """The ``dataset.json`` of a version directory."""
    path = pathlib.Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable data-version manifest ({type(e).__name__}: {e})") from None


def lineage(version_dir: str | os.PathLike) -> list[pathlib.Path]:
    """``version_dir`` and its ancestors by the manifests' ``parent`` links, newest first."""
    chain, current = [], pathlib.Path(version_dir)
    while current is not None:
        if current in chain:
            raise ValueError(f"data version lineage loops at {current}")
        chain.append(current)
        parent = read_manifest(current).get("parent")
        current = current.parent / parent if parent else None
    return chain


def content_hash(directory: str | os.PathLike) -> str:
    """``sha256:<hex>`` over every shard below ``directory``: each shard's relative path, then each record's
    ``text``, ``id`` and ``meta`` in order (length-prefixed), so the hash names the content, not one serialisation
    of it (a protobuf map's entry order may differ between processes)."""
    import tensorflow as tf

    from quark_jax.data.built_tasks import FEATURE_NAMES

    directory = pathlib.Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*.tfrecord-*") if p.is_file() and not p.is_symlink()):
        digest.update(path.relative_to(directory).as_posix().encode("utf-8") + b"\0")
        for raw in tf.data.TFRecordDataset(str(path)):
            features = tf.train.Example.FromString(raw.numpy()).features.feature
            for name in FEATURE_NAMES:
                value = features[name].bytes_list.value[0] if name in features else b""
                digest.update(len(value).to_bytes(8, "little") + value)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def refresh(mixture: str, root: str | os.PathLike, name: str | None = None, config=None, num_shards: int = 4,
            splits=("validation", "train"), progress: bool = True) -> dict:
    """Writes the next version of ``root`` from ``mixture``'s current documents; returns its report.

    The report is the build's (counts per filter, ``removed/exact_duplicate`` and ``removed/near_duplicate``
    now counting documents seen in any earlier version) plus ``version``, ``parent``, ``content_hash``,
    ``path`` and ``seen_documents`` (the index size after this version).
    """
    from quark_jax.data import filters

    config = config or filters.cleaning_config()
    root = pathlib.Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"--root {root} is a file; pass a directory for the data versions")
    root.mkdir(parents=True, exist_ok=True)
    existing = versions(root)
    parent = existing[-1] if existing else None
    number = int(VERSION_PATTERN.match(parent.name).group(1)) + 1 if parent else 1
    settings = {"threshold": config.near_dup_threshold, "num_perm": config.num_perm,
                "recall_weight": config.near_dup_recall_weight}
    if parent is not None and (parent / SEEN_FILE).exists():
        seen = SeenIndex.load(parent / SEEN_FILE, expected=settings)
    else:
        seen = SeenIndex(config.near_dup_threshold, config.num_perm, recall_weight=config.near_dup_recall_weight)
    base = name or (read_manifest(parent)["base_name"] if parent else f"{mixture}_clean")
    version_name = f"v{number:04d}"

    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{version_name}-", dir=root))
    try:
        report = build_lib.build(mixture, staging, name=f"{base}_v{number}", config=config, num_shards=num_shards,
                                 splits=splits, progress=progress, packing_length=0,
                                 cleaner=_RefreshCleaner(config, seen))
        seen.save(staging / SEEN_FILE)
        lineage_fields = {"version": number, "base_name": base, "parent": parent.name if parent else None,
                          "content_hash": content_hash(staging), "seen_documents": len(seen)}
        manifest = {**read_manifest(staging), **lineage_fields}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = root / version_name
        report.update(lineage_fields, output=str(final), path=str(final))
        (staging / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        (staging / "report.md").write_text(build_lib.markdown_report(report))
        build_lib.write_data_gin(staging, final)  # names the final path, written before the rename like the rest
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    register_built(final)
    return report
