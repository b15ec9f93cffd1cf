"""The device's rank path, one pass per request: input → user state → decision and edit → scores → answer.

``POST /v1/rank`` calls :meth:`Ranker.rank`, which calls each step once, in order, and nothing calls back up:

1. :func:`serving.rank_input.read_rank_input` — the stored events and the request's history as the model's window
   (ids for the model, the same tokens for the cloud), exclusions, unknown ids;
2. :meth:`serving.rank_batcher.RankBatcher.encode` — the user state and its fallback prototype (batched);
3. :meth:`serving.adaptation.Adaptation.choose` — which edit: the cached or fresh cloud edit, the cached
   prototype's, or the base head (waits for the cloud within ``serve.device.budget_ms`` when it must ask);
4. :meth:`serving.rank_batcher.RankBatcher.score` — the top-k under that edit (batched);

and builds the answer (tokens and titles looked up by id, a plain dict the route dumps once).
"""

from __future__ import annotations

from serving.adaptation import Adaptation
from serving.engine import Engine
from serving.event_store import EventStore
from serving.metrics import Metrics
from serving.rank_batcher import RankBatcher
from serving.rank_input import read_rank_input
from serving.schemas import RankRequest
from serving.web import field_error


class Ranker:
    def __init__(self, engine: Engine, store: EventStore, batcher: RankBatcher, adaptation: Adaptation,
                 titles: list[str | None], metrics: Metrics):  # fmt: skip
        self.engine, self.store, self.batcher, self.adaptation = engine, store, batcher, adaptation
        self.titles, self.metrics = titles, metrics

    @property
    def catalogue(self) -> int:
        return self.engine.n_items - 1  # id 0 is padding

    async def rank(self, req: RankRequest) -> dict:
        """The ranking for ``req`` as the JSON-ready dict of :class:`serving.schemas.RankResponse`."""
        if not 1 <= req.k <= self.catalogue:
            raise field_error("k", f"must be between 1 and the catalogue size {self.catalogue}")
        inp = await read_rank_input(req, self.store, self.engine.token_to_id, self.engine.max_seq_len)
        row = await self.batcher.encode(inp.window)
        choice = await self.adaptation.choose(inp, row)
        items, scores = await self.batcher.score(row.state, choice.edit, inp.k, inp.exclude)
        self.metrics.adaptation.labels(choice.kind).inc()
        tokens, titles = self.engine.tokens, self.titles
        return {
            "items": [{"item_id": tokens[i], "title": titles[i], "score": s} for i, s in zip(items, scores)],
            "adaptation": choice.kind,
            "version": choice.version,
            "prototype_id": choice.prototype_id,
            "history_length": inp.n_events,
            "unknown_items": inp.unknown,
        }
