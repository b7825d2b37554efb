"""``quark embed``: the vectors of a file of texts, from a run directory, as a float32 ``.npy``.

:func:`embed_main` is what the CLI calls: it reads the texts (``.txt``: one per line, blank lines skipped;
``.jsonl``: one object with a string ``"text"`` per line), embeds them with
:meth:`quark_jax.retrieval.embedder.Embedder.from_run`, writes the ``[N, dim]`` float32 array atomically (a
temporary file in the output's directory, then ``os.replace``) and returns the summary it prints as one JSON
line. A user's mistake (missing, empty, oversized or malformed input; a bad run directory; a bad output path)
raises ``ValueError`` with a one-line message, which the CLI prints and turns into exit status 2.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

MAX_INPUT_BYTES = 256 * 2**20  # an input file larger than this is refused (split it)
MAX_TEXTS = 1_000_000


def read_texts(path: str) -> list[str]:
    """The texts of a ``.txt`` (one per non-blank line) or ``.jsonl`` (``{"text": ...}`` per line) file."""
    if not path.endswith((".txt", ".jsonl")):
        raise ValueError(f"--input {path}: must be a .txt (one text per line) or .jsonl "
                         '({"text": ...} per line) file')
    if os.path.islink(path) or not os.path.isfile(path):
        raise ValueError(f"--input {path}: no such regular file")
    if os.path.getsize(path) > MAX_INPUT_BYTES:
        raise ValueError(f"--input {path}: larger than {MAX_INPUT_BYTES >> 20} MiB; split it into several files")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"--input {path}: not UTF-8 text (bad byte at offset {e.start})") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.endswith(".txt"):
            texts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--input {path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f'--input {path} line {number}: each line must be an object with a string "text"')
        texts.append(record["text"])
    if not texts:
        raise ValueError(f"--input {path}: no texts in the file")
    if len(texts) > MAX_TEXTS:
        raise ValueError(f"--input {path}: {len(texts)} texts, more than {MAX_TEXTS}; split the file")
    return texts


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """Writes ``array`` to ``path`` (``.npy``, no pickle) through a temporary file in the same directory."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"--output {path}: the directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".embed-", suffix=".npy.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def embed_main(model_dir: str, input_path: str, output: str, kind: str = "passage", batch_size: int = 32,
               step: int | None = None) -> dict:
    """Embeds the texts of ``input_path`` with the run ``model_dir`` and writes ``output``; returns
    ``{"count", "dim", "identity", "output"}``."""
    from quark_jax.run_paths import RunDirError
    from quark_jax.retrieval.embedder import Embedder

    if kind not in ("query", "passage"):
        raise ValueError(f"--kind {kind}: must be query or passage")
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be >= 1")
    if not output.endswith(".npy"):
        raise ValueError(f"--output {output}: must end in .npy")
    texts = read_texts(input_path)
    try:
        embedder = Embedder.from_run(model_dir, step=step, batch_size=batch_size)
    except (RunDirError, FileNotFoundError) as e:
        raise ValueError(str(e)) from None
    vectors = embedder.embed(texts, kind=kind)
    save_npy_atomic(output, vectors.astype(np.float32))
    return {"count": int(vectors.shape[0]), "dim": int(vectors.shape[1]), "identity": embedder.identity,
            "output": output}
