"""Reads what the session families need from the online features, in a few pipelined round trips.

Why a module of its own: :mod:`streamrec.sessions.families` stays pure (testable on hand-made
sessions) and this reader works on anything with ``FeatureStore``'s read API — Redis in serving,
or ``streamrec.features.ReplayFeatures`` offline — so a replay scores exactly what the live path would.

Round trips per request: the user's recent list (current session); the sampled neighbours with
their items (one read-only script: the union of the prefix items' session index and the lists
stay in Redis); the prefix items' co-visitation rows (one pipeline); trending.
Work is capped: ``sample`` sessions are scored, ``neighbours`` of them used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from streamrec.features import CurrentSession, RecentItem, SessionView
from streamrec.sessions import families
from streamrec.sessions.families import Neighbour, Scored, Scores
from streamrec.settings import RecommendSettings


class SessionFeatures(Protocol):
    """The reads used here: ``streamrec.features.FeatureStore`` and ``streamrec.features.ReplayFeatures``."""

    def current_session(self, user_id: str) -> CurrentSession | None: ...

    def neighbour_sessions(self, item_ids: Sequence[str], own: str | None, sample: int) -> list[SessionView]: ...

    def covisited_many(self, item_ids: Sequence[str], n: int = 20) -> list[list[tuple[str, float]]]: ...

    def trending(self, n: int = 20) -> list[tuple[str, float]]: ...


@dataclass
class SessionCandidates:
    """Every family's scores for one prefix, plus what the reasons need."""

    prefix: list[str]
    families: dict[str, Scores]
    session: list[RecentItem] = field(default_factory=list)  # the prefix's events, oldest first
    neighbours: list[Scored] = field(default_factory=list)  # STAN's, best first
    covis_rows: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def neighbour_anchor(self, item_id: str) -> str | None:
        """The prefix item through which the most similar neighbour containing ``item_id`` was found."""
        for s in self.neighbours:
            if item_id in s.neighbour.distinct:
                return s.anchor
        return None

    def covis_anchor(self, item_id: str) -> str | None:
        """The most recent prefix item whose co-visitation row holds ``item_id``."""
        for y in reversed(self.prefix):
            if any(x == item_id for x, _ in self.covis_rows.get(y, ())):
                return y
        return None


def read(features: SessionFeatures, user_id: str, p: RecommendSettings) -> SessionCandidates:
    """The families for the user's current session; an empty prefix gives only ``popular``."""
    current = features.current_session(user_id)
    prefix = [r.item_id for r in current.items] if current else []
    trending = families.popular(features.trending(p.family_top_n))
    if current is None or not prefix:
        return SessionCandidates(prefix, {"popular": trending})
    distinct = list(dict.fromkeys(reversed(prefix)))  # newest first
    neighbours = [
        Neighbour(v.token, v.items, v.ts) for v in features.neighbour_sessions(distinct, current.token, p.sample)
    ]
    recent = list(dict.fromkeys(reversed(prefix[-families.covis_horizon(p.covis_decay) :])))
    rows = dict(zip(recent, features.covisited_many(recent, p.family_top_n), strict=True))
    scored = families.stan_neighbours(prefix, neighbours, p)
    by_family = {
        "repeat": families.repeat(prefix, p.repeat_decay),
        "stan": families.stan(scored, p),
        "vsknn": families.vsknn(prefix, neighbours, p.neighbours),
        "covis": families.covis(prefix, rows, p.covis_decay),
        "popular": trending,
    }
    return SessionCandidates(prefix, by_family, current.items, scored, rows)
