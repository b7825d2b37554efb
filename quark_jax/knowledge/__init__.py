"""Knowledge graph: the standard library's modules, classes and functions with their relations (built with
``ast``), facts read from text, stored in SQLite, queried, and used to expand retrieval.

* :mod:`~quark_jax.knowledge.store`: :class:`KnowledgeGraph` (SQLite) and its queries.
* :mod:`~quark_jax.knowledge.stdlib_graph`: the graph of Python source (the standard library).
* :mod:`~quark_jax.knowledge.triples`: (subject, relation, object) triples from text.
* :mod:`~quark_jax.knowledge.augment`: :class:`GraphExpandedRetriever`.
"""

from quark_jax.knowledge.augment import GraphExpandedRetriever
from quark_jax.knowledge.stdlib_graph import build_graph, open_stdlib_graph, write_graph
from quark_jax.knowledge.store import Edge, KnowledgeGraph, Neighbour, Provenance, Subgraph, UnknownEntityError
from quark_jax.knowledge.triples import Triple, extract_triples, ingest

__all__ = ["Edge", "GraphExpandedRetriever", "KnowledgeGraph", "Neighbour", "Provenance", "Subgraph", "Triple",
           "UnknownEntityError", "build_graph", "extract_triples", "ingest", "open_stdlib_graph", "write_graph"]
