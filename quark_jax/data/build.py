"""``quark data build``: clean a mixture offline into TFRecord shards that seqio tasks read back.

    quark data build --mixture quark_demo --output /tmp/quark_demo_data

For each task of the mixture and each split (validation first, so that a training document that
duplicates a validation one is the copy removed), every document goes through, in order:

1. exact deduplication (normalized-text hash, across all tasks and splits);
2. language identification (prose and chat, not code);
3. quality heuristics (prose, chat or code rules, by the source's ``kind``);
4. toxicity;
5. MinHash-LSH near-deduplication (last of the rejecting filters, as it is the most expensive);
6. PII scrubbing (rewrites, never removes).

The output directory holds ``<task>/<split>.tfrecord-0000i-of-0000N`` shards of ``tf.train.Example``
(``text``, ``id``, ``meta``), ``dataset.json`` (the manifest), ``report.json`` and ``report.md`` (what each
filter removed and why, with examples, and every bad input that was skipped), and ``data.gin``.

How ``quark train`` finds the built data (either way; the format and its reading are ``built_tasks.py``):

* ``QUARK_DATA_DIRS=/tmp/quark_demo_data quark train ... --gin.MIXTURE_OR_TASK_NAME="'quark_demo_clean'"``:
  every directory in the (``:``-separated) variable is registered by ``quark_jax.data.catalogue``;
* ``quark train ... --gin_file=/tmp/quark_demo_data/data.gin``: the file binds
  ``MIXTURE_OR_TASK_NAME = @quark_jax.data.built_dataset()`` with the directory, which registers the
  tasks when the training config is built.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

from quark_jax.data import catalogue, sources
# The on-disk format; importing built_tasks also keeps `import quark_jax.data.build` in older data.gin files
# defining @quark_jax.data.built_dataset.
from quark_jax.data.built_tasks import FEATURE_NAMES, MANIFEST, register_built, shard_paths

EXAMPLES_PER_REASON = 3
EXAMPLE_CHARS = 240


def _truncate(text: str, n: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= n else text[:n] + "…"


class _Cleaner:
    """The filters of one build, with their shared state (the dedup indexes)."""

    def __init__(self, config):
        from quark_jax.data import filters

        self.f = filters
        self.config = config
        self.exact = filters.ExactDeduper() if config.exact_dedup else None
        self.near = None
        if config.near_dedup:
            self.near = filters.NearDeduper(config.near_dup_threshold, config.num_perm,
                                            recall_weight=config.near_dup_recall_weight)

    def reject(self, text: str, kind: str, doc_id: str) -> str | None:
        c, f = self.config, self.f
        if self.exact and (reason := self.exact.check(text, doc_id)):
            return reason
        # Language before quality: the quality rules (stop words, word lengths) are English rules.
        if kind != "code" and (reason := f.language_filter(text, c.languages, c.min_language_confidence)):
            return reason
        if reason := f.quality_filter(text, kind, c.quality):
            return reason
        if c.toxicity and (reason := f.toxicity_filter(text, c.toxicity_threshold, kind)):
            return reason
        if self.near and (reason := self.near.check(text, doc_id)):
            return reason
        return None


def _example_bytes(doc: Mapping[str, str]) -> bytes:
    import tensorflow as tf

    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[doc[k].encode("utf-8")])) for k in FEATURE_NAMES}
    # deterministic: map entries in key order, so the same documents give the same bytes in every process.
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


def build(mixture: str, output: str | os.PathLike, name: str | None = None, config=None,
          num_shards: int = 4, splits: Sequence[str] = ("validation", "train"), progress: bool = True,
          packing_length: int = 256, cleaner: _Cleaner | None = None) -> dict:
    """Cleans every task of ``mixture`` (or a single task) into shards under ``output``; returns the report.

    ``name`` is the mixture name the shards are registered under (default ``<mixture>_clean``); its tasks
    are ``<name>.<task>``. ``config`` is a :class:`filters.CleaningConfig` (default: ``filters.cleaning_config()``, gin-bound).
    ``packing_length > 0`` also packs a few batches of the result at that length and reports the packing
    efficiency (non-pad fraction). ``cleaner`` replaces the build's own filters (``quark data refresh`` passes
    one whose deduplication also covers every earlier data version).
    """
    import tensorflow as tf
    from tqdm.auto import tqdm

    from quark_jax.data import filters

    config = config or filters.cleaning_config()
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1 (pass --num_shards N)")
    name = name or f"{mixture}_clean"
    members = catalogue.members(mixture)
    out = pathlib.Path(output).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    cleaner = cleaner or _Cleaner(config)
    start = time.perf_counter()
    manifest = {"name": name, "mixture": mixture, "num_shards": num_shards, "tasks": {}}
    report = {"name": name, "mixture": mixture, "output": str(out), "config": _config_dict(config), "tasks": {},
              "totals": collections.Counter()}
    for task, rate in members:
        source = task.source
        kind = getattr(source, "kind", "prose")
        task_dir = out / task.name
        task_dir.mkdir(exist_ok=True)
        manifest["tasks"][task.name] = {"rate": rate, "kind": kind, "splits": {}}
        task_report = report["tasks"][task.name] = {"kind": kind, "splits": {}}
        for split in [s for s in splits if s in source.splits]:
            documents, problems = sources.task_documents(task, split)
            stats = collections.Counter()
            removed_examples = collections.defaultdict(list)
            pii = collections.Counter()
            paths = shard_paths(task_dir, split, num_shards)
            writers = [tf.io.TFRecordWriter(str(p)) for p in paths]
            kept = 0
            try:
                for doc in tqdm(documents, desc=f"{task.name}/{split}", disable=not progress, unit="doc"):
                    stats["input_documents"] += 1
                    stats["input_chars"] += len(doc["text"])
                    try:
                        doc["text"].encode("utf-8")  # lone surrogates (e.g. from JSON escapes) cannot be written
                        reason = cleaner.reject(doc["text"], kind, doc["id"])
                        if reason is None and config.scrub_pii:
                            scrubbed, counts = filters.scrub_pii(doc["text"])
                            if counts:
                                stats["pii_documents"] += 1
                                pii.update(counts)
                                doc = {**doc, "text": scrubbed}
                    except UnicodeEncodeError as e:
                        problems.append(_problem(doc["id"], "invalid_utf8", str(e)))
                        stats["bad_document"] += 1
                        continue
                    except Exception as e:  # noqa: BLE001 -- one bad document must not end the build
                        problems.append(_problem(doc["id"], "filter_error", f"{type(e).__name__}: {e}"))
                        stats["bad_document"] += 1
                        continue
                    if reason is not None:
                        stats[f"removed/{reason}"] += 1
                        if len(removed_examples[reason]) < EXAMPLES_PER_REASON:
                            example = {"id": doc["id"], "text": _truncate(doc["text"])}
                            if reason == "toxicity":  # the whole document is dropped: show the line that did it
                                example["evidence"] = filters.toxic_line(doc["text"], config.toxicity_threshold, kind)
                            removed_examples[reason].append(example)
                        continue
                    writers[kept % num_shards].write(_example_bytes(doc))
                    kept += 1
                    stats["output_chars"] += len(doc["text"])
            finally:
                for w in writers:
                    w.close()
            stats["output_documents"] = kept
            # input_documents = output_documents + removed/* + bad_document; bad_input also counts the
            # files and lines that never became documents (unreadable, invalid UTF-8, bad JSON ...).
            stats["bad_input"] = sum(p.bad for p in problems)
            stats["skipped_by_rule"] = len(problems) - stats["bad_input"]
            manifest["tasks"][task.name]["splits"][split] = {
                "pattern": str(task_dir / f"{split}.tfrecord-*-of-{num_shards:05d}"), "num_examples": kept}
            task_report["splits"][split] = {
                "counts": dict(sorted(stats.items())),
                "pii_replaced": dict(pii),
                "removed_examples": dict(removed_examples),
                "bad_input": [dataclasses.asdict(p) for p in problems if p.bad],
                "bad_input_by_reason": dict(collections.Counter(p.reason for p in problems if p.bad)),
                "skipped_by_rule": [dataclasses.asdict(p) for p in problems if not p.bad],
            }
            report["totals"].update({k: v for k, v in stats.items()})
    report["totals"] = dict(sorted(report["totals"].items()))
    report["seconds"] = round(time.perf_counter() - start, 2)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(markdown_report(report))
    write_data_gin(out)
    register_built(out)
    if packing_length and report["totals"].get("output_documents"):
        report["packing"] = packing_report(name, packing_length)
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        (out / "report.md").write_text(markdown_report(report))
    return report


def write_data_gin(out: pathlib.Path, data_dir: pathlib.Path | None = None) -> None:
    """``out/data.gin``: the gin file that trains on the built directory ``data_dir`` (default ``out``)."""
    data_dir = data_dir or out
    (out / "data.gin").write_text(
        "# Train on this built data: quark train --gin_file=configs/runs/pretrain_tiny.gin "
        f"--gin_file={data_dir / 'data.gin'} --gin.MODEL_DIR=...\n"
        "import quark_jax.data.built_tasks\n\n"
        "MIXTURE_OR_TASK_NAME = @quark_jax.data.built_dataset()\n"
        f"quark_jax.data.built_dataset.data_dir = {str(data_dir)!r}\n"
    )


def packing_report(name: str, length: int, batch_size: int = 8, batches: int = 4) -> dict:
    """Packing efficiency (non-pad fraction) of the first ``batches`` training batches of ``name``."""
    from quark_jax.data import pipeline

    effs = []
    for batch in pipeline.batch_iterator(name, {"targets": length}, batch_size, shuffle=False, repeat=True):
        effs.append(pipeline.packing_efficiency(batch))
        if len(effs) == batches:
            break
    return {"sequence_length": length, "batch_size": batch_size, "batches": len(effs),
            "efficiency": round(sum(effs) / len(effs), 4)}


def _problem(where, reason, detail):
    return sources.Problem(where, reason, detail)


def _config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def markdown_report(report: Mapping) -> str:
    """The human-readable report: totals, per-task removals with reasons and examples, bad inputs."""
    lines = [f"# Data build report: `{report['name']}`", "",
             f"Mixture `{report['mixture']}` → `{report['output']}` in {report.get('seconds', 0)} s.", "",
             "## Totals", "", "| count | value |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,} |" for k, v in report["totals"].items()]
    if "packing" in report:
        p = report["packing"]
        lines += ["", f"Packing efficiency (non-pad fraction) at length {p['sequence_length']}: "
                      f"{p['efficiency']:.3f} over {p['batches']} batches of {p['batch_size']}."]
    for task, tr in report["tasks"].items():
        for split, sr in tr["splits"].items():
            lines += ["", f"## {task} / {split} ({tr['kind']})", "", "| count | value |", "| --- | ---: |"]
            lines += [f"| {k} | {v:,} |" for k, v in sr["counts"].items()]
            if sr["pii_replaced"]:
                lines += ["", "PII replaced: " + ", ".join(f"`{k}` ×{v}" for k, v in sorted(sr["pii_replaced"].items()))]
            for reason, examples in sr["removed_examples"].items():
                lines += ["", f"Removed as **{reason}**, for example:"]
                lines += [f"- `{e['id']}`: {json.dumps(e['text'], ensure_ascii=False)}"
                          + (f" — line: {json.dumps(e['evidence'], ensure_ascii=False)}" if e.get("evidence") else "")
                          for e in examples]
            if sr.get("skipped_by_rule"):
                lines += ["", f"Skipped by rule ({len(sr['skipped_by_rule'])}): " + ", ".join(
                    f"{r} ×{n}" for r, n in sorted(collections.Counter(p["reason"] for p in sr["skipped_by_rule"]).items()))]
            if sr["bad_input"]:
                lines += ["", f"Bad input skipped ({len(sr['bad_input'])}):"]
                lines += [f"- `{p['where']}`: {p['reason']} {p['detail']}".rstrip() for p in sr["bad_input"][:50]]
                if len(sr["bad_input"]) > 50:
                    lines.append(f"- … {len(sr['bad_input']) - 50} more in report.json")
    return "\n".join(lines) + "\n"
