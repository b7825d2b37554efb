"""An index: a directory of passages searchable by BM25, dense vectors (exact or HNSW, locally or on Qdrant),
or both fused by reciprocal rank fusion.

Directory (generation ``g`` stamped into each data file's name, see :mod:`quark_jax.retrieval.index_files`)::

    manifest.json            format version, embedder identity and dim, parts, counts, settings, and for each
                             part the file name, size and SHA-256 of the current generation
    passages-<g>.jsonl       one {"id", "text", "metadata"} per row; row i ↔ vector i ↔ HNSW id i
    vectors-<g>.npy          float32 [rows, dim], saved with allow_pickle=False   (dense indexes)
    hnsw-<g>.faiss           faiss IndexHNSWFlat, inner product                      (hnsw=True)
    bm25-<g>/                bm25s' own files (JSON + .npy, no pickle) over the live rows   (lexical=True)
    deleted-<g>.json         rows deleted since the last compaction (tombstones)

Semantics:

* ``add`` appends rows (vectors, HNSW) and re-fits BM25 over the live rows; adding an id that is already live
  is an error naming it (replace = ``delete`` then ``add``).
* ``delete`` marks rows dead (a tombstone, filtered out of every search) and re-fits BM25; when dead rows pass
  ``compact_fraction`` of all rows, the next write drops them and rebuilds HNSW. Unknown ids are an error.
* every write is atomic: new files first, the manifest swapped last; a crash leaves the previous version.
* an empty query is an error; searching an empty index returns ``[]``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np

from quark_jax.retrieval import dense as dense_lib
from quark_jax.retrieval import index_files as files
from quark_jax.retrieval.hybrid import RRF_C, fuse_hits
from quark_jax.retrieval.index_files import IndexFormatError
from quark_jax.retrieval.lexical import BM25, tokenize
from quark_jax.retrieval.types import Embedder, Hit, Passage

FORMAT = "quark-index"
FORMAT_VERSION = 1
MAX_TEXT_BYTES = 1 << 20  # one passage's text, UTF-8
MAX_ID_CHARS = 512
Mode = Literal["hybrid", "lexical", "dense"]

__all__ = ["Index", "IndexFormatError", "EmbedderMismatchError", "MAX_TEXT_BYTES"]


class EmbedderMismatchError(ValueError):
    """An index opened (or written) with an embedder other than the one that built it."""


@dataclasses.dataclass
class _State:
    """Everything one generation holds, in memory. Writes build a new state and adopt it only after the
    manifest swap succeeded."""

    passages: list[Passage]
    deleted: set[int]
    vectors: np.ndarray | None
    hnsw: Any | None
    bm25: BM25 | None

    tokens: list[list[str]] | None = None  # BM25 tokens of every row, filled on the first re-fit

    def bm25_tokens(self) -> list[list[str]]:
        """The BM25 tokens of every row (tokenised once, then reused by each re-fit)."""
        if self.tokens is None or len(self.tokens) != len(self.passages):
            done = self.tokens or []
            self.tokens = done + [tokenize(p.text) for p in self.passages[len(done):]]
        return self.tokens

    def refit_bm25(self) -> BM25:
        tokens = self.bm25_tokens()
        return BM25.fit_tokens([tokens[r] for r in self.live_rows])

    @functools.cached_property
    def live_mask(self) -> np.ndarray:
        mask = np.ones(len(self.passages), bool)
        mask[list(self.deleted)] = False
        return mask

    @functools.cached_property
    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.live_mask)


class Index:
    """A searchable directory of passages. Build with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: str, manifest: dict[str, Any], state: _State, embedder: Embedder | None,
                 qdrant_store=None):
        self.path, self.manifest, self.embedder = path, manifest, embedder
        self._state = state
        self._qdrant = qdrant_store
        self._row_of = {state.passages[r].id: int(r) for r in state.live_rows}

    # ---- construction -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, embedder: Embedder | None = None, lexical: bool = True, dense: bool = True,
               hnsw: bool = False, backend: Literal["local", "qdrant"] = "local", qdrant_url: str | None = None,
               qdrant_collection: str | None = None, hnsw_params: dense_lib.HNSWParams = dense_lib.HNSWParams(),
               compact_fraction: float = 0.25) -> Index:
        """A new, empty index at ``path`` (which must not exist, or be an empty folder)."""
        if os.path.lexists(path) and (not os.path.isdir(path) or os.path.islink(path) or os.listdir(path)):
            raise FileExistsError(f"{path}: already exists and is not an empty folder; open it with Index.open "
                                  f"or choose a new directory")
        if not lexical and not dense:
            raise ValueError("an index needs lexical=True or dense=True (or both)")
        if dense and embedder is None:
            raise ValueError("dense=True needs an embedder (pass embedder=..., or dense=False for BM25 only)")
        if hnsw and not dense:
            raise ValueError("hnsw=True needs dense=True (HNSW searches the dense vectors)")
        if backend not in ("local", "qdrant"):
            raise ValueError(f"backend={backend!r}: use 'local' or 'qdrant'")
        if backend == "qdrant" and not dense:
            raise ValueError("backend='qdrant' holds the dense vectors; it needs dense=True")
        if backend == "qdrant" and hnsw:
            raise ValueError("hnsw=True is for the local backend; Qdrant builds its own HNSW (drop hnsw=True)")
        if not 0.0 < compact_fraction <= 1.0:
            raise ValueError(f"compact_fraction={compact_fraction}: must be in (0, 1]")
        created = not os.path.lexists(path)
        os.makedirs(path, exist_ok=True)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "generation": 0,
            "embedder": embedder.identity if dense else None, "dim": int(embedder.dim) if dense else None,
            "parts": {"lexical": lexical, "dense": dense, "hnsw": hnsw},
            "backend": backend,
            "qdrant": ({"url": qdrant_url, "collection": qdrant_collection or f"quark_{os.path.basename(os.path.abspath(path))}"}
                       if backend == "qdrant" else None),
            "hnsw_params": dataclasses.asdict(hnsw_params) if hnsw else None,
            "compact_fraction": compact_fraction,
            "counts": {}, "files": {},
        }
        dim = int(embedder.dim) if dense else 0
        state = _State(passages=[], deleted=set(),
                       vectors=np.zeros((0, dim), np.float32) if dense else None,
                       hnsw=dense_lib.build_hnsw(np.zeros((0, dim), np.float32), hnsw_params) if hnsw else None,
                       bm25=BM25.fit([]) if lexical else None)
        try:
            store = cls._connect_qdrant(manifest, qdrant_url) if backend == "qdrant" else None
            if store is not None and store.count():
                raise FileExistsError(f"Qdrant collection {store.collection!r} already holds {store.count()} points; "
                                      f"pass another qdrant_collection (a new index starts from an empty one)")
            index = cls(path, manifest, state, embedder if dense else None, store)
            index._write(state, changed={"passages", "vectors", "hnsw", "bm25", "deleted"})
        except BaseException:
            if created:  # a failed create leaves nothing behind
                shutil.rmtree(path, ignore_errors=True)
            raise
        return index

    @classmethod
    def open(cls, path: str, embedder: Embedder | None = None, qdrant_url: str | None = None) -> Index:
        """Reads the index at ``path``, checking every file against the manifest's sizes and checksums. An
        ``embedder`` whose identity differs from the one that built the index is refused; without one, only
        lexical search works. ``qdrant_url`` overrides the server the manifest recorded."""
        manifest = _read_manifest(path)
        if embedder is not None and manifest["embedder"] is not None:
            if embedder.identity != manifest["embedder"] or int(embedder.dim) != manifest["dim"]:
                raise EmbedderMismatchError(
                    f"index {path} was built by embedder {manifest['embedder']!r} (dim {manifest['dim']}) but was "
                    f"opened with {embedder.identity!r} (dim {embedder.dim}); open it with the same embedder or "
                    f"build a new index")
        files.remove_unreferenced(path, manifest)
        parts = manifest["parts"]
        entries = manifest["files"]
        paths = {part: files.check_part(path, part, entry) for part, entry in entries.items()}
        passages = _read_passages(paths["passages"])
        deleted = _read_deleted(paths["deleted"], len(passages))
        vectors = hnsw = bm25 = None
        if parts["dense"]:
            vectors = _read_vectors(paths["vectors"], len(passages), manifest["dim"])
        if parts["hnsw"]:
            import faiss

            hnsw = faiss.read_index(paths["hnsw"])
            if hnsw.ntotal != len(passages) or hnsw.d != manifest["dim"]:
                raise IndexFormatError(f"{paths['hnsw']}: holds {hnsw.ntotal} vectors of dim {hnsw.d}, expected "
                                       f"{len(passages)} of dim {manifest['dim']}; rebuild the index")
            hnsw.hnsw.efSearch = manifest["hnsw_params"]["ef_search"]
        if parts["lexical"]:
            bm25 = BM25.load(paths["bm25"])
            if bm25.num_docs != len(passages) - len(deleted):
                raise IndexFormatError(f"{paths['bm25']}: indexes {bm25.num_docs} passages, the index holds "
                                       f"{len(passages) - len(deleted)} live ones; rebuild the index")
        state = _State(passages, deleted, vectors, hnsw, bm25)
        store = None
        if manifest["backend"] == "qdrant":
            store = cls._connect_qdrant(manifest, qdrant_url)
            live = state.live_rows
            if store.url is None or store.count() != live.size:
                store.replace_all([passages[r].id for r in live], vectors[live])
        return cls(path, manifest, state, embedder if parts["dense"] else None, store)

    @staticmethod
    def _connect_qdrant(manifest: dict[str, Any], url: str | None):
        from quark_jax.retrieval.qdrant_store import QdrantStore

        settings = manifest["qdrant"]
        return QdrantStore(settings["collection"], manifest["dim"], url=url or settings["url"])

    # ---- reading ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Live passages."""
        return len(self._row_of)

    def __contains__(self, passage_id: str) -> bool:
        return passage_id in self._row_of

    def get(self, passage_id: str) -> Passage:
        """The live passage with this id; ``KeyError`` naming it otherwise."""
        try:
            return self._state.passages[self._row_of[passage_id]]
        except KeyError:
            raise KeyError(f"no passage {passage_id!r} in index {self.path}") from None

    def ids(self) -> list[str]:
        """Live passage ids in row order."""
        return [self._state.passages[r].id for r in self._state.live_rows]

    def search(self, query: str, k: int = 10, mode: Mode | None = None, exact: bool = False) -> list[Hit]:
        """The best ``k`` live passages for ``query``, best first. ``mode`` defaults to ``"hybrid"`` when the
        index has both parts, else to the part it has. ``exact=True`` bypasses HNSW."""
        return self.search_batch([query], k, mode, exact)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, mode: Mode | None = None,
                     exact: bool = False, fusion_depth: int | None = None, rrf_c: int = RRF_C,
                     hybrid_weights: tuple[float, float] = (1.0, 1.0)) -> list[list[Hit]]:
        """:meth:`search` for several queries; dense queries are embedded and searched together. Hybrid
        search fuses the lexical and dense top ``fusion_depth`` (default ``max(k, 50)``) by reciprocal rank
        fusion, with ``hybrid_weights`` (lexical, dense)."""
        queries = list(queries)
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"query {i} is empty ({q!r}); give some words to search for")
        if k < 1:
            raise ValueError(f"k={k}: must be >= 1")
        mode = self._mode(mode)
        if not self._row_of:
            return [[] for _ in queries]
        depth = max(k, fusion_depth or 50) if mode == "hybrid" else k
        lexical = [self._lexical(q, depth) for q in queries] if mode in ("hybrid", "lexical") else None
        dense = self._dense(queries, depth, exact) if mode in ("hybrid", "dense") else None
        if mode == "lexical":
            return lexical
        if mode == "dense":
            return dense
        return [fuse_hits([lex, den], k, rrf_c, hybrid_weights) for lex, den in zip(lexical, dense)]

    def _mode(self, mode: Mode | None) -> Mode:
        parts = self.manifest["parts"]
        if mode is None:
            return "hybrid" if parts["lexical"] and parts["dense"] else ("lexical" if parts["lexical"] else "dense")
        if mode not in ("hybrid", "lexical", "dense"):
            raise ValueError(f"mode={mode!r}: use 'hybrid', 'lexical' or 'dense'")
        need = {"hybrid": ("lexical", "dense"), "lexical": ("lexical",), "dense": ("dense",)}[mode]
        missing = [p for p in need if not parts[p]]
        if missing:
            raise ValueError(f"mode={mode!r} needs the {' and '.join(missing)} part, which index {self.path} was "
                             f"built without; use mode={'lexical' if parts['lexical'] else 'dense'!r}")
        if "dense" in need and self.embedder is None:
            raise ValueError(f"mode={mode!r} needs the embedder {self.manifest['embedder']!r}: pass it to "
                             f"Index.open (or search with mode='lexical')")
        return mode

    def _hit(self, row: int, score: float) -> Hit:
        p = self._state.passages[row]
        return Hit(p.id, p.text, float(score), p.metadata)

    def _lexical(self, query: str, k: int) -> list[Hit]:
        positions, scores = self._state.bm25.search(query, k)
        rows = self._state.live_rows
        return [self._hit(int(rows[p]), s) for p, s in zip(positions, scores)]

    def _dense(self, queries: list[str], k: int, exact: bool) -> list[list[Hit]]:
        q = _check_vectors(self.embedder.embed(queries, kind="query"), len(queries), self.manifest["dim"], "query")
        state = self._state
        if self._qdrant is not None:
            results = self._qdrant.search(q, k + len(state.deleted) + 8)
            return [[self._hit(self._row_of[i], s) for i, s in found if i in self._row_of][:k] for found in results]
        live = state.live_mask if state.deleted else None
        if state.hnsw is not None and not exact:
            rows, scores = dense_lib.hnsw_search(state.hnsw, q, k, self.manifest["hnsw_params"]["ef_search"], live)
        else:
            rows, scores = dense_lib.exact_search(state.vectors, q, k, live)
        return [[self._hit(int(r), s) for r, s in zip(rr, ss) if r >= 0] for rr, ss in zip(rows, scores)]

    # ---- writing ----------------------------------------------------------------------------------------
    def add(self, passages: Iterable[Passage]) -> None:
        """Appends passages (embedding them when the index is dense) and re-fits BM25; one atomic write. An id
        already live, or repeated in ``passages``, is an error naming it (to replace: delete, then add)."""
        new = [_check_passage(p) for p in passages]
        seen: set[str] = set()
        for p in new:
            if p.id in self._row_of or p.id in seen:
                raise ValueError(f"passage id {p.id!r} is already in index {self.path}"
                                 f"{'' if p.id in self._row_of else ' (twice in this batch)'}; ids are unique: "
                                 f"delete it first to replace it")
            seen.add(p.id)
        if not new:
            return
        state = self._state
        changed = {"passages", "bm25"} if state.bm25 is not None else {"passages"}
        vectors, hnsw = state.vectors, state.hnsw
        if self.manifest["parts"]["dense"]:
            if self.embedder is None:
                raise ValueError(f"adding to index {self.path} needs its embedder {self.manifest['embedder']!r}: "
                                 f"pass it to Index.open")
            fresh = _check_vectors(self.embedder.embed([p.text for p in new], kind="passage"), len(new),
                                   self.manifest["dim"], "passage")
            vectors = np.concatenate([state.vectors, fresh])
            changed.add("vectors")
            if hnsw is not None:
                hnsw = dense_lib.hnsw_add(hnsw, fresh)
                changed.add("hnsw")
        passages = state.passages + new
        grown = _State(passages, set(state.deleted), vectors, hnsw, None,
                       tokens=list(state.bm25_tokens()) if state.bm25 is not None else None)
        if state.bm25 is not None:
            grown.bm25 = grown.refit_bm25()
        if self._qdrant is not None:
            self._qdrant.upsert([p.id for p in new], fresh)
        self._write(grown, changed)

    def delete(self, ids: Iterable[str]) -> None:
        """Removes live passages by id (tombstones; BM25 re-fitted; compaction past ``compact_fraction``); one
        atomic write. An unknown id is an error naming it, and nothing is deleted."""
        ids = list(ids)
        missing = [i for i in ids if i not in self._row_of]
        if missing:
            raise KeyError(f"no passage {missing[0]!r} in index {self.path}"
                           f"{f' (and {len(missing) - 1} more unknown ids)' if len(missing) > 1 else ''}; "
                           f"nothing was deleted")
        if not ids:
            return
        state = self._state
        deleted = state.deleted | {self._row_of[i] for i in ids}
        shrunk = _State(state.passages, deleted, state.vectors, state.hnsw, None,
                        tokens=state.bm25_tokens() if state.bm25 is not None else None)
        changed = {"deleted"}
        if len(deleted) > self.manifest["compact_fraction"] * len(state.passages):
            shrunk = self._compacted(shrunk)
            changed = {"passages", "vectors", "hnsw", "deleted"}
        if state.bm25 is not None:
            shrunk.bm25 = shrunk.refit_bm25()
            changed.add("bm25")
        if self._qdrant is not None:
            self._qdrant.delete(ids)
        self._write(shrunk, changed)

    def _compacted(self, state: _State) -> _State:
        """The state without its dead rows (HNSW rebuilt from the remaining vectors)."""
        live = state.live_rows
        vectors = state.vectors[live] if state.vectors is not None else None
        hnsw = None
        if state.hnsw is not None:
            hnsw = dense_lib.build_hnsw(vectors, dense_lib.HNSWParams(**self.manifest["hnsw_params"]))
        tokens = [state.tokens[r] for r in live] if state.tokens is not None else None
        return _State([state.passages[r] for r in live], set(), vectors, hnsw, state.bm25, tokens)

    def _write(self, state: _State, changed: set[str]) -> None:
        """Writes the ``changed`` parts of ``state`` as the next generation, swaps the manifest, and only then
        adopts ``state`` in memory and removes the previous generation's files."""
        manifest = json.loads(json.dumps(self.manifest))
        generation = manifest["generation"] + 1
        parts = manifest["parts"]
        writers = {
            "passages": (".jsonl", lambda p: _write_passages(p, state.passages)),
            "deleted": (".json", lambda p: _write_json(p, sorted(state.deleted))),
            "vectors": (".npy", lambda p: _write_npy(p, state.vectors)) if parts["dense"] else None,
            "hnsw": (".faiss", lambda p: _write_faiss(p, state.hnsw)) if parts["hnsw"] else None,
            "bm25": ("", lambda p: state.bm25.save(p)) if parts["lexical"] else None,
        }
        for part in sorted(changed):
            if writers.get(part) is None:
                continue
            ext, write = writers[part]
            name = files.part_name(part, generation, ext)
            target = os.path.join(self.path, name)
            write(target)
            entry = files.describe_folder(target) if part == "bm25" else files.describe_file(target)
            manifest["files"][part] = {"name": name, **entry}
        files.fsync_dir(self.path)
        live = len(state.passages) - len(state.deleted)
        manifest["generation"] = generation
        manifest["counts"] = {"rows": len(state.passages), "deleted": len(state.deleted), "live": live}
        manifest["written_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        files.swap_manifest(self.path, manifest)
        self.manifest, self._state = manifest, state
        self._row_of = {state.passages[r].id: int(r) for r in state.live_rows}
        files.remove_unreferenced(self.path, manifest)

    def info(self) -> dict[str, Any]:
        """What the manifest says: format, embedder, parts, counts, backend, and bytes per part."""
        m = self.manifest
        sizes = {part: e.get("bytes", sum(f["bytes"] for f in e.get("files", {}).values()))
                 for part, e in m["files"].items()}
        return {"path": self.path, "format_version": m["format_version"], "generation": m["generation"],
                "embedder": m["embedder"], "dim": m["dim"], "parts": m["parts"], "backend": m["backend"],
                "counts": m["counts"], "hnsw_params": m["hnsw_params"], "bytes": sizes}

    def close(self) -> None:
        """Releases the Qdrant client, if any."""
        if self._qdrant is not None:
            self._qdrant.close()


# ---- validation and file formats -------------------------------------------------------------------------
def _check_passage(p: Passage) -> Passage:
    if not isinstance(p, Passage):
        raise TypeError(f"expected a Passage, got {type(p).__name__}")
    if not isinstance(p.id, str) or not p.id or len(p.id) > MAX_ID_CHARS:
        raise ValueError(f"passage id {p.id!r}: must be a non-empty string of at most {MAX_ID_CHARS} characters")
    if not isinstance(p.text, str):
        raise ValueError(f"passage {p.id!r}: text must be a string, not {type(p.text).__name__}")
    try:
        size = len(p.text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"passage {p.id!r}: text is not valid Unicode (a lone surrogate); fix its encoding") from None
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"passage {p.id!r}: text is {size} bytes, over the {MAX_TEXT_BYTES}-byte limit; split it "
                         f"into smaller passages")
    if not isinstance(p.metadata, dict):
        raise ValueError(f"passage {p.id!r}: metadata must be a JSON object (a dict), not {type(p.metadata).__name__}")
    try:
        json.dumps(p.metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"passage {p.id!r}: metadata is not JSON ({e})") from None
    return p


def _check_vectors(vectors, count: int, dim: int, kind: str) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape != (count, dim):
        raise ValueError(f"the embedder returned {kind} vectors of shape {vectors.shape}, expected ({count}, {dim})")
    if not np.isfinite(vectors).all():
        raise ValueError(f"the embedder returned non-finite {kind} vectors")
    return vectors


def _read_manifest(path: str) -> dict[str, Any]:
    manifest_path = os.path.join(path, files.MANIFEST)
    if not os.path.isdir(path):
        raise IndexFormatError(f"{path}: no such index directory; build one with `quark index build`")
    if os.path.islink(manifest_path):
        raise IndexFormatError(f"{manifest_path}: is a symbolic link; index files must be plain files")
    if not os.path.isfile(manifest_path):
        raise IndexFormatError(f"{manifest_path}: missing, so {path} is not an index (or its first write never "
                               f"finished); build one with `quark index build`")
    if os.path.getsize(manifest_path) > (1 << 20):
        raise IndexFormatError(f"{manifest_path}: over 1 MiB, not a manifest this code wrote; rebuild the index")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IndexFormatError(f"{manifest_path}: not valid JSON ({e}); restore it from a backup or rebuild "
                               f"the index") from None
    required = {"format", "format_version", "generation", "embedder", "dim", "parts", "backend", "files"}
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not required <= manifest.keys():
        raise IndexFormatError(f"{manifest_path}: not a quark index manifest; rebuild the index")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexFormatError(f"{manifest_path}: format version {manifest['format_version']}, this code reads "
                               f"{FORMAT_VERSION}; rebuild the index with this version")
    expected = {"passages", "deleted"} | {p for p, on in (("vectors", manifest["parts"].get("dense")),
                                                          ("hnsw", manifest["parts"].get("hnsw")),
                                                          ("bm25", manifest["parts"].get("lexical"))) if on}
    if not isinstance(manifest["files"], dict) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str) for e in manifest["files"].values()):
        raise IndexFormatError(f"{manifest_path}: its \"files\" entries are damaged; rebuild the index")
    if set(manifest["files"]) != expected:
        raise IndexFormatError(f"{manifest_path}: lists parts {sorted(manifest['files'])}, expected "
                               f"{sorted(expected)}; rebuild the index")
    return manifest


def _read_passages(path: str) -> list[Passage]:
    passages = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
                passages.append(Passage(row["id"], row["text"], row["metadata"]))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise IndexFormatError(f"{path} line {number}: not a passage record ({e}); rebuild the index") from None
    return passages


def _read_deleted(path: str, rows: int) -> set[int]:
    with open(path) as f:
        try:
            deleted = json.load(f)
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{path}: not valid JSON ({e}); rebuild the index") from None
    if not isinstance(deleted, list) or not all(isinstance(r, int) and 0 <= r < rows for r in deleted):
        raise IndexFormatError(f"{path}: must list row numbers below {rows}; rebuild the index")
    return set(deleted)


def _read_vectors(path: str, rows: int, dim: int) -> np.ndarray:
    try:
        vectors = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise IndexFormatError(f"{path}: not a float32 .npy array ({e}); rebuild the index") from None
    if vectors.dtype != np.float32 or vectors.shape != (rows, dim):
        raise IndexFormatError(f"{path}: {vectors.dtype} {vectors.shape}, expected float32 ({rows}, {dim}); "
                               f"rebuild the index")
    return vectors


def _write_passages(path: str, passages: list[Passage]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in passages:
            f.write(json.dumps({"id": p.id, "text": p.text, "metadata": p.metadata}, ensure_ascii=False) + "\n")


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _write_npy(path: str, vectors: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(vectors, np.float32), allow_pickle=False)


def _write_faiss(path: str, index) -> None:
    import faiss

    faiss.write_index(index, path)
