"""Retrieval: embeddings from our own models, lexical / dense / hybrid indexes behind one interface, and RAG."""

from quark_jax.retrieval.types import Embedder, Hit, Passage, Retriever

__all__ = ["Embedder", "Hit", "Passage", "Retriever"]
