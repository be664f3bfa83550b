"""The real serving app over real HTTP (uvicorn on a free loopback port, in a thread), with a real
producer, Redis features, lexical and vector index; only the encoder is a small deterministic hash
so no model is loaded. For tests that need the wire: fuzzing, concurrency, backpressure."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import uvicorn
from fastapi import FastAPI

from launcher.embedded import free_port
from serving.app import create_app
from serving.engine import Engine
from serving.impressions import ImpressionLog
from serving.lexical import LexicalIndex
from serving.merchandising import RuleFollower
from serving.suggest import SuggestFollower
from streamrec.features import FeatureStore
from streamrec.ranking import RankingHead
from streamrec.settings import Settings
from streamrec.store import connect
from streamrec.vector_index.live import ItemMeta, LiveIndex
from tests.polling import wait_for

TITLES = {
    "pen": "Blue ballpoint pen, 12 pack",
    "ink": "Black ink cartridge",
    "paper": "A4 copy paper, 500 sheets",
    "stapler": "Desktop stapler",
}


class HashEncoder:
    """Bag of hashed words, normalised: deterministic, instant, and the same text the same vector."""

    model_id = "hash-16"
    dim = 16

    def encode_query(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        for word in text.lower().split():
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        n = float(np.linalg.norm(v))
        return v / n if n else v


def build_app(
    s: Settings,
    producer,
    items: dict[str, ItemMeta] | None = None,
    suggestions: SuggestFollower | None = None,
    rules: RuleFollower | None = None,
) -> FastAPI:
    """A ready app: four items indexed (or ``items``), an untrained ranking head as model version 1."""
    encoder = HashEncoder()
    index = LiveIndex(encoder.dim)
    lexical = LexicalIndex()
    index.subscribe(lexical.apply)
    catalogue = items or {i: ItemMeta(t, "office", 2.5) for i, t in TITLES.items()}
    index.apply([(i, encoder.encode_query(m.title), m) for i, m in catalogue.items()], [])
    lexical.refresh()
    r = connect(s)
    models = SimpleNamespace(current=SimpleNamespace(version=1, head=RankingHead()))
    engine = Engine(
        s,
        encoder,  # type: ignore[arg-type]
        SimpleNamespace(index=index, offsets={}),  # type: ignore[arg-type]  # a replica following nothing
        FeatureStore(r, s.redis.prefix, s.features),
        models,  # type: ignore[arg-type]
        lexical,
        ImpressionLog(s, producer, r),
        suggestions=suggestions,
        rules=rules,
    )
    return create_app(s, engine, producer)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 (a loopback client, so keyless writes are allowed); yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout_s=20, what="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
