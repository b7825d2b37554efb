"""KG-augmented retrieval: a retriever whose hits are followed by the passages of their entities' neighbours in a
knowledge graph (the callees, members and bases of a retrieved function or class), so a question whose answer
lies one call away from what the text matched is still answered."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quark_jax.knowledge.store import Direction, KnowledgeGraph
from quark_jax.retrieval.types import Hit, Passage, Retriever

DEFAULT_RELATIONS = ("calls", "contains", "inherits")


class GraphExpandedRetriever:
    """Searches with ``base``, then adds the passages of the graph neighbours of the hits' entities.

    A hit's entity is ``hit.metadata["entity"]``, else ``hit.id``; hits whose entity is not in the graph are
    not expanded. Neighbours are reached through ``relations`` going ``direction`` (default: out, i.e. what the
    entity calls, contains, inherits from), up to ``hops`` relations away, breadth-first; each one's passage is
    ``passages_by_id(name)`` (skipped when None). At most ``max_extra`` passages are added, none already in the
    result, in the order: hit rank, hop, relation order in ``relations``, name.

    The expanded hits come after every base hit with scores strictly below the lowest base score (the base
    ranking is kept and the result stays sorted), ``metadata["expanded_from"]`` naming the entity of the hit
    they were reached from, ``metadata["relation"]`` the relation of their last hop and ``metadata["hops"]``
    the distance. ``search(query, k)`` returns up to ``k + max_extra`` hits.
    """

    def __init__(self, base: Retriever, graph: KnowledgeGraph, passages_by_id: Callable[[str], Passage | None],
                 hops: int = 1, relations: Sequence[str] = DEFAULT_RELATIONS, max_extra: int = 5,
                 direction: Direction = "out"):
        if hops < 1:
            raise ValueError(f"hops={hops}: must be >= 1 (hops=0 is the base retriever)")
        if max_extra < 0:
            raise ValueError(f"max_extra={max_extra}: must be >= 0")
        self.base, self.graph, self.passages_by_id = base, graph, passages_by_id
        self.hops, self.relations, self.max_extra, self.direction = hops, tuple(relations), max_extra, direction

    def search(self, query: str, k: int = 10) -> list[Hit]:
        """The base hits for ``query``, then up to ``max_extra`` passages of their graph neighbours."""
        hits = self.base.search(query, k)
        if not hits or self.max_extra == 0:
            return hits
        taken = {hit.id for hit in hits}
        lowest = min(hit.score for hit in hits)
        step = 1e-3 * max(1.0, abs(lowest))
        extra: list[Hit] = []
        for hit in hits:
            entity = hit.metadata.get("entity") or hit.id
            for name, relation, hop in self._reachable(entity):
                if len(extra) >= self.max_extra:
                    return hits + extra
                passage = self.passages_by_id(name)
                if passage is None or passage.id in taken:
                    continue
                taken.add(passage.id)
                metadata = {**passage.metadata, "expanded_from": entity, "relation": relation, "hops": hop}
                extra.append(Hit(passage.id, passage.text, lowest - step * (len(extra) + 1), metadata))
        return hits + extra

    def _reachable(self, entity: str) -> list[tuple[str, str, int]]:
        """(name, relation of the last hop, hops) of the entities within ``hops`` of ``entity``, in order."""
        if not self.graph.has_entity(entity):
            return []
        rank = {relation: i for i, relation in enumerate(self.relations)}
        seen, frontier, found = {entity}, [entity], []
        for hop in range(1, self.hops + 1):
            layer = []
            for name in frontier:
                for near in self.graph.neighbours(name, direction=self.direction):
                    if near.relation in rank and near.name not in seen:
                        seen.add(near.name)
                        layer.append((rank[near.relation], near.name, near.relation))
            layer.sort()
            found.extend((name, relation, hop) for _, name, relation in layer)
            frontier = [name for _, name, _ in layer]
        return found
