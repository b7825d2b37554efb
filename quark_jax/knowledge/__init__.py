"""Knowledge graph: the standard library's modules, classes and functions with their relations (built with
``ast``), facts read from text, stored in SQLite, queried, and used to expand retrieval."""

from quark_jax.knowledge.store import Edge, KnowledgeGraph, Neighbour, Provenance, Subgraph, UnknownEntityError

__all__ = ["Edge", "KnowledgeGraph", "Neighbour", "Provenance", "Subgraph", "UnknownEntityError"]
