"""Teacher samples: continuations a teacher run generated for prompts of its own corpus, as training data.

DistillSpec (Zhou et al. 2023) trains a speculative-decoding draft on sequences the *target* generated, with
a divergence to the target, which raises the draft's acceptance rate more than training on the corpus does.
``quark data distill`` (``quark_jax.distill_samples``) writes such a directory; this module is its format,
reading it back, and the seqio task that trains on it (``configs/runs/distill_spec.gin``)::

    DIR/samples.json        the manifest: teacher run and step, mixture the prompts came from, sampling
                            settings, counts per split, tokenizer hash, content hash
    DIR/train.jsonl         one record per sample (prompts from the corpus' train split)
    DIR/validation.jsonl    the same for prompts of the validation split

A record is ``{"prompt": text, "prompt_ids": [...], "completion_ids": [...], "finish_reason": "eos" |
"length", "seed": int, "completion": text}``. The training sequence of a record is ``prompt_ids +
completion_ids``, followed by EOS when the teacher ended the continuation with EOS (a continuation cut at
``max_new_tokens`` gets no EOS: the teacher did not end it there).

``content_hash`` is the SHA-256 over every record's token fields in split and file order (canonical JSON),
so it names the training content, not one serialisation; reading a directory back verifies it, and a
directory edited after it was written is refused. The directory is written under a temporary name beside
``DIR`` and renamed into place last: a crash never leaves a half-written one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import gin

from quark_jax.data.jsonl import iter_jsonl

MANIFEST = "samples.json"
SPLIT_FILES = {"train": "train.jsonl", "validation": "validation.jsonl"}
FORMAT = 1
TASK_PREFIX = "teacher_samples"
MAX_FILE_BYTES = 2 << 30  # a split file larger than this is refused rather than read into memory
FINISH_REASONS = ("eos", "length")
HASHED_FIELDS = ("prompt_ids", "completion_ids", "finish_reason")


class SamplesDirError(ValueError):
    """A directory that is not a readable teacher-samples directory; the message names it and the fix."""


# ---- prompts ----------------------------------------------------------------------------------------------
def corpus_prompts(mixture: str, split: str, count: int, prompt_tokens: int, seed: int,
                   sequence_length: int, vocabulary) -> list[list[int]]:
    """``count`` distinct prompts of exactly ``prompt_tokens`` token ids: the first tokens of examples of a
    registered task or mixture's ``split`` (as training reads them: chunks of ``sequence_length`` tokens,
    shuffled with ``seed``, mixed at the mixture's rates).

    A prefix whose text does not re-encode to the same ids is skipped, so a prompt given as text
    (``qj.load(run).generate(vocabulary.decode(prompt))``) is the same token sequence. Raises ValueError when
    the split holds fewer usable examples than ``count``.
    """
    import seqio

    from quark_jax.data import catalogue

    catalogue.register_all()
    dataset = seqio.get_mixture_or_task(mixture).get_dataset(
        {"targets": sequence_length}, split=split, shuffle=True, seed=seed, num_epochs=1)
    prompts: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for example in dataset.as_numpy_iterator():
        ids = [int(t) for t in example["targets"][:prompt_tokens]]
        if len(example["targets"]) <= prompt_tokens or tuple(ids) in seen:
            continue
        if list(vocabulary.encode(vocabulary.decode(ids))) != ids:
            continue
        seen.add(tuple(ids))
        prompts.append(ids)
        if len(prompts) == count:
            return prompts
    raise ValueError(f"{mixture!r} split {split!r} has only {len(prompts)} examples longer than {prompt_tokens} "
                     f"tokens with distinct prefixes, fewer than the {count} asked for; ask for fewer samples or "
                     "shorter prompts")


# ---- records and hashes -----------------------------------------------------------------------------------
def sample_tokens(record: Mapping, eos_id: int) -> list[int]:
    """The training sequence of a record: prompt ids, completion ids, and EOS when the teacher ended there."""
    return [*record["prompt_ids"], *record["completion_ids"], *([eos_id] if record["finish_reason"] == "eos" else [])]


def records_hash(splits: Mapping[str, Sequence[Mapping]]) -> str:
    """``sha256:<hex>`` over each split's name and its records' token fields, in order (canonical JSON)."""
    digest = hashlib.sha256()
    for split in SPLIT_FILES:
        digest.update(split.encode("utf-8") + b"\0")
        for record in splits.get(split, ()):
            canonical = json.dumps({k: record[k] for k in HASHED_FIELDS}, separators=(",", ":"), sort_keys=True)
            digest.update(canonical.encode("utf-8") + b"\n")
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _check_record(record, vocab_size: int | None) -> str | None:
    if not isinstance(record, dict):
        return "a record must be a JSON object"
    for key in ("prompt_ids", "completion_ids"):
        ids = record.get(key)
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            return f'"{key}" must be a list of token ids'
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
            return f'"{key}" holds an id outside the vocabulary of {vocab_size} ids'
    if not record["prompt_ids"]:
        return '"prompt_ids" is empty'
    if record.get("finish_reason") not in FINISH_REASONS:
        return f'"finish_reason" must be one of {", ".join(FINISH_REASONS)}'
    return None


# ---- writing ----------------------------------------------------------------------------------------------
def write_samples(out_dir: str | os.PathLike, splits: Mapping[str, Sequence[Mapping]], manifest: Mapping) -> dict:
    """Writes a samples directory atomically (staged beside ``out_dir``, renamed into place); returns its
    manifest (``manifest`` plus format, counts and content hash). ``out_dir`` must not exist or be empty."""
    out = pathlib.Path(out_dir).expanduser().absolute()
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise SamplesDirError(f"{out} already exists and is not an empty directory; pass a new --out directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    full = {**manifest, "format": FORMAT, "counts": {s: len(splits.get(s, ())) for s in SPLIT_FILES},
            "content_hash": records_hash(splits)}
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for split, name in SPLIT_FILES.items():
            with open(staging / name, "w", encoding="utf-8") as f:
                for record in splits.get(split, ()):
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        (staging / MANIFEST).write_text(json.dumps(full, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace cannot replace a directory that holds anything
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return full


# ---- reading ----------------------------------------------------------------------------------------------
def _regular_file(path: pathlib.Path) -> pathlib.Path:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise SamplesDirError(f"{path} not found: {path.parent} is not a teacher-samples directory; write one with "
                              f"`quark data distill --teacher_dir RUN --out {path.parent}`") from None
    if not stat.S_ISREG(mode):
        raise SamplesDirError(f"{path} is not a regular file (links and special files are not read)")
    return path


def read_manifest(samples_dir: str | os.PathLike) -> dict:
    """The ``samples.json`` of a samples directory."""
    path = _regular_file(pathlib.Path(samples_dir) / MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                             f"expected {FORMAT}")
    except (OSError, ValueError) as e:
        raise SamplesDirError(f"{path} is not a readable samples manifest ({e})") from None
    return manifest


def _iter_split(samples_dir: pathlib.Path, split: str, vocab_size: int | None) -> Iterator[dict]:
    path = _regular_file(samples_dir / SPLIT_FILES[split])
    try:
        for number, record in iter_jsonl(str(path), max_bytes=MAX_FILE_BYTES):
            problem = _check_record(record, vocab_size)
            if problem:
                raise SamplesDirError(f"{path}:{number}: {problem}")
            yield record
    except SamplesDirError:
        raise
    except ValueError as e:
        raise SamplesDirError(str(e)) from None


def read_samples(samples_dir: str | os.PathLike, vocab_size: int | None = None) -> dict[str, list[dict]]:
    """Every record of a samples directory, per split, checked (token ids within ``vocab_size``) and verified
    against the manifest's content hash; ``SamplesDirError`` names the file, line or mismatch."""
    samples_dir = pathlib.Path(samples_dir).expanduser().absolute()
    manifest = read_manifest(samples_dir)
    splits = {split: list(_iter_split(samples_dir, split, vocab_size)) for split in SPLIT_FILES}
    found = records_hash(splits)
    if found != manifest.get("content_hash"):
        raise SamplesDirError(f"{samples_dir}: the records hash to {found} but {MANIFEST} says "
                              f"{manifest.get('content_hash')} (edited after it was written?); write it again with "
                              "`quark data distill`")
    return splits


# ---- the seqio task ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _sequences(samples_dir: str, content_hash: str, eos_id: int, vocab_size: int) -> dict[str, tuple[list[int], ...]]:
    splits = read_samples(samples_dir, vocab_size)
    return {split: tuple(sample_tokens(r, eos_id) for r in records) for split, records in splits.items()}


def _samples_dataset(samples_dir: str, content_hash: str, eos_id: int, vocab_size: int, split: str,
                     shuffle_files: bool, seed: int | None = None):
    import tensorflow as tf

    sequences = _sequences(samples_dir, content_hash, eos_id, vocab_size)[split]
    ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(sequences, dtype=tf.int32)})
    ds = ds.map(lambda ex: {"targets": ex["targets"].to_tensor() if isinstance(ex["targets"], tf.RaggedTensor)
                            else ex["targets"]})
    if shuffle_files and sequences:
        ds = ds.shuffle(len(sequences), seed=seed, reshuffle_each_iteration=True)
    return ds


def task_name(manifest: Mapping) -> str:
    """The registered name of a samples directory's task: named by its content, so new samples are a new task."""
    return f"{TASK_PREFIX}_{manifest['content_hash'].split(':')[-1][:12]}"


def register_samples(samples_dir: str | os.PathLike) -> str:
    """Registers (or replaces) the language-modelling task over a samples directory; returns its name.

    The task yields each record's training sequence (:func:`sample_tokens`) as ``targets``, with the text
    tasks' output features, so it mixes with the corpus. Refused: a directory whose teacher used another
    tokenizer than the project's, one with an empty split, one whose records do not match the content hash.
    """
    import seqio

    from quark_jax.data import built_tasks, tasks, tokenizer

    samples_dir = str(pathlib.Path(samples_dir).expanduser().resolve())
    manifest = read_manifest(samples_dir)
    vocabulary = tokenizer.get_vocabulary()
    ours = hashlib.sha256(pathlib.Path(vocabulary.sentencepiece_model_file).read_bytes()).hexdigest()
    if manifest.get("tokenizer_sha256") not in (None, ours):
        raise SamplesDirError(f"{samples_dir}: the teacher's tokenizer is not the project's (sha256 "
                              f"{manifest['tokenizer_sha256'][:12]}… vs {ours[:12]}…); its token ids cannot train "
                              "a student here")
    empty = [s for s in SPLIT_FILES if not manifest.get("counts", {}).get(s)]
    if empty:
        raise SamplesDirError(f"{samples_dir}: no samples in the {', '.join(empty)} split; write it again with "
                              "--samples and --validation_samples >= 1")
    _sequences(samples_dir, manifest["content_hash"], vocabulary.eos_id, vocabulary.vocab_size)  # verify now
    name = task_name(manifest)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=functools.partial(_samples_dataset, samples_dir, manifest["content_hash"], vocabulary.eos_id,
                                         vocabulary.vocab_size),
            splits=tuple(SPLIT_FILES), num_input_examples=dict(manifest["counts"])),
        preprocessors=[],  # already token ids, EOS included where the teacher ended; longer rows are trimmed
        output_features=tasks.output_features(vocabulary),
    )
    built_tasks.REGISTERED_DIRS[name] = samples_dir  # the run's lineage records the directory and its hash
    return name


@gin.configurable("teacher_samples", module="quark_jax.data")
def teacher_samples(samples_dir: str = gin.REQUIRED, corpus_fraction: float = 0.0, corpus: str | None = None) -> str:
    """gin: ``MIXTURE_OR_TASK_NAME = @quark_jax.data.teacher_samples()``. Registers ``samples_dir`` and names
    its task, or with ``corpus_fraction > 0`` a mixture drawing that share of examples from ``corpus`` (default:
    the mixture the prompts came from) at its own task rates."""
    from quark_jax.data import built_tasks, catalogue, tasks

    if not 0.0 <= corpus_fraction < 1.0:
        raise ValueError(f"quark_jax.data.teacher_samples.corpus_fraction={corpus_fraction} must be in [0, 1)")
    name = register_samples(samples_dir)
    if corpus_fraction == 0.0:
        return name
    corpus = corpus or read_manifest(samples_dir).get("mixture")
    if not corpus:
        raise ValueError(f"{samples_dir}: the manifest names no mixture; bind quark_jax.data.teacher_samples.corpus")
    members = catalogue.members(corpus)
    total = sum(rate for _, rate in members)
    rates = {name: 1.0 - corpus_fraction, **{t.name: corpus_fraction * rate / total for t, rate in members}}
    mixture = f"{name}_{corpus}{round(corpus_fraction * 1000):03d}"
    tasks.register_mixture(mixture, rates)
    built_tasks.REGISTERED_DIRS[mixture] = str(pathlib.Path(samples_dir).expanduser().resolve())
    return mixture
