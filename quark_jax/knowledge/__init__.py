"""Knowledge graph: the standard library's modules, classes and functions with their relations (built with
``ast``), facts read from text, stored in SQLite, queried, and used to expand retrieval.

* :mod:`~quark_jax.knowledge.store`: :class:`KnowledgeGraph` (SQLite) and its queries.
* :mod:`~quark_jax.knowledge.stdlib_graph`: the graph of Python source (the standard library).
* :mod:`~quark_jax.knowledge.triples`: (subject, relation, object) triples from text.
* :mod:`~quark_jax.knowledge.augment`: :class:`GraphExpandedRetriever`.
"""

import importlib

# Attribute -> module, imported on first use: `quark` builds its parser from cli_main on every command, which
# must not pay for numpy and jaxtyping (augment's retrieval types).
_EXPORTS = {
    "GraphExpandedRetriever": "augment",
    "build_graph": "stdlib_graph", "open_stdlib_graph": "stdlib_graph", "write_graph": "stdlib_graph",
    "Edge": "store", "KnowledgeGraph": "store", "Neighbour": "store", "Provenance": "store", "Subgraph": "store",
    "UnknownEntityError": "store",
    "Triple": "triples", "extract_triples": "triples", "ingest": "triples",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
