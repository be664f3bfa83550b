"""The Redis key layout of the online features: every key, what it holds, how it stays bounded.

This module is the source of truth for the feature keys: :class:`Keys` names them for the readers,
:meth:`Keys.script_templates` hands the same names to the writer script, and :data:`FAMILIES` states
each family's bound for the memory audit (``streamrec/memory.py``) and the README's table.

Every key starts with ``Settings.redis.prefix`` (``P`` below); on a Redis Cluster, with the prefix
of its keyspace (:func:`shard_prefix`: ``P`` and a hash tag, docs/REDIS-CLUSTER.md). Writes happen
only inside the writer script (``apply.lua``, loaded by ``writer.py``), one atomic call per Kafka
partition batch that also advances that partition's offset key, so a feature is never applied
twice nor lost (see ``consumers/service.py``).

Time is *event time* (``Event.ts``, epoch ms), never the wall clock, so a replay of old data builds
the same features as the live stream did. Decayed values use a lazy exponential decay
(``decay.py``); readers decay to ``now_ms`` (default: the stream clock ``P:clock``, the newest
event time seen).

TTLs are wall-clock and refreshed at most once a day per user / item (hash field ``x`` holds the
day of the last refresh, and the user's recent list / the item's co-visitation set are refreshed
with it), so an idle user or item disappears between its TTL and TTL + 1 day after its last event.

Keys (knobs in ``Settings.features`` = :class:`FeatureSettings`, env ``STREAMREC_FEATURE_*``):

=================================  ===========================================================
``P:u:{user}:recent``  LIST        newest first, ``event_id \\x1f item \\x1f type \\x1f ts \\x1f
                                   session``; trimmed to ``recent_cap`` entries after each batch;
                                   TTL ``user_ttl_s``.
``P:u:{user}``          HASH       ``n:{type}`` exact event count per interaction type (no decay);
                                   ``rl:b``/``rl:n`` bot-filter window and its event count
                                   (consumers/botfilter.py); ``imps`` the last impression ids;
                                   ``qs`` the last ``expansion_links`` searches with a query
                                   (request_id, expansion terms, query key, and the page shown:
                                   a flag whether its examinations were counted, its first
                                   position, the first ``memory_positions`` item ids; U+001E
                                   inside it); ``x`` TTL refresh day; TTL
                                   ``user_ttl_s``.
``P:u:{user}:cat``      HASH       category affinity: ``{category}`` decayed, weighted
                                   (``weight_{type}``) interaction count with items of that
                                   category, ``@{category}`` its reference ts; half-life
                                   ``affinity_half_life_s``; at most ``category_cap`` categories
                                   (the weakest is evicted); TTL ``user_ttl_s``.
``P:i:{item}``          HASH       ``n:{type}`` exact count per type incl. ``impression`` (one per
                                   impression list the item was shown in); ``d:{type}`` decayed
                                   count, ``t:{type}`` its reference ts (half-life
                                   ``item_half_life_s``); CTR = (d:click + a)/(d:impression + b);
                                   ``rl:b``/``rl:n`` bot-filter window; ``x`` TTL refresh day;
                                   TTL ``item_ttl_s``.
``P:cv:{item}``         ZSET       co-visitation: other item -> number of times both were
                                   interacted with by one user in one session within
                                   ``covis_window_s`` (looking back ``covis_lookback`` recent items);
                                   trimmed to the top ``covis_top_n`` after each batch; TTL
                                   ``item_ttl_s``.
``P:cb:{item}``         ZSET       bought together: the same for add-to-carts and purchases only
                                   (both of one basket: one session within ``covis_window_s``);
                                   GET /bought-together.
``P:s:{session}``       LIST       the session's item ids, newest first, trimmed to ``session_cap``
                                   after each batch; TTL ``session_ttl_s`` (refreshed on every
                                   batch that adds to it). ``{session}`` is :func:`session_token`:
                                   ``s`` + ``session_id``, or ``u`` + ``user_id`` for events
                                   without one (the user is the session, as for co-visitation).
``P:is:{item}``         ZSET       the sessions that interacted with the item: session token ->
                                   that session's newest event ts with the item; trimmed to the
                                   ``item_sessions_cap`` most recent after each batch; TTL
                                   ``item_ttl_s`` (refreshed with ``P:i:{item}``). The
                                   session-kNN index (serving/sessions.py).
``P:trending``          ZSET       item -> weighted decayed popularity ``w * exp((ts - t0)/tau)``
                                   (forward decay, half-life ``trending_half_life_s``), ``P:trending:t0``
                                   the landmark ``t0`` (scores are rescaled when it moves);
                                   trimmed to ``trending_cap`` items after each batch. The reader
                                   scales scores to the stream clock; no TTL (one key).
``P:suggest``           ZSET       search text (``analysis.suggestion_text``) -> weighted decayed
                                   count of the clicks, adds to cart and purchases that followed
                                   it, on trending's landmark and half-life; trimmed to
                                   ``suggest_cap`` after each batch (GET /suggest).
``P:attr:{item}``       HASH       catalog attributes ``title``, ``category``, ``price``, ``ts`` of
                                   the op; an older op never overwrites a newer one; a delete
                                   leaves ``deleted=1`` and ``ts`` with TTL ``tombstone_ttl_s``
                                   (reads treat a missing key as deleted). A live item's has no
                                   TTL: catalog state, bounded by the catalog.
``P:qx:{item}``         HASH       query-log expansion: analysed query term -> decayed weight of
                                   the searches that led to a click / add_to_cart / purchase of
                                   the item (``FeatureSettings.expansion_weight``: 1 / 2 / 4),
                                   ``@`` the reference ts of every field (half-life
                                   ``expansion_half_life_s``); at most ``expansion_cap`` terms (the
                                   weakest evicted); TTL ``item_ttl_s``. The query is the event's
                                   ``query``, else that of the user's search ``request_id`` names
                                   (``qs`` in ``P:u:{user}``); the terms are
                                   ``expansion_terms`` (``writer.py``), computed by the consumer.
``P:qxlog:changed``     ZSET       item -> ``P:qxlog:seq`` at its last expansion change; trimmed to
                                   ``expansion_log_cap`` items. Serving tails it (and reads it
                                   whole at start) to re-index changed items' lexical documents.
``P:qxlog:seq``         STRING     expansion changes so far.
``P:qm:{query}``        HASH       click memory of one query (``{query}`` = ``query_key``: its
                                   analysed terms, each once, sorted): ``c{item}`` its clicks (an
                                   add to cart or a purchase adds ``memory_outcome_weight``) and
                                   ``e{item}`` its examinations, each impression that got a click
                                   adding theta(position) = (1 / (position + 1)) ** eta to every
                                   product it showed in its first ``memory_positions`` (a page no
                                   one clicked adds nothing), decayed to the reference ts ``@``
                                   (half-life ``memory_half_life_s``); at most ``memory_cap``
                                   products (the least examined evicted); TTL ``item_ttl_s``. The
                                   search is the click's ``request_id``'s, linked through ``qs``.
``P:examination``       STRING     eta of the position bias, written by the learner
                                   (``learner/position_bias.py``); ``memory_eta`` until then.
``P:clock``             STRING     newest event ts applied (the stream clock).
``P:q:{event_id}``      STRING     the quarantine reason of a quarantined event (not set for
                                   ``duplicate_event``: that id names a legitimate first copy); TTL
                                   ``quarantine_ttl_s`` (see ``FeatureStore.is_quarantined``).
``P:q:counts``          HASH       reason -> number of quarantined events.
``P:q:recent``          LIST       the last 20 quarantine decisions (JSON: event_id, user_id,
                                   reason, offset), for ``streamrec status``.
``P:dlq:counts``        HASH       reject reason -> number of dead-lettered records.
``P:off:{group}:{topic}:{partition}`` STRING  next offset to apply (the source of truth for
                                   where a consumer resumes; Kafka's committed offset trails it).
``P:outbox:{group}:{topic}:{partition}`` LIST  dead letters / quarantine records produced with
                                   the batch, waiting to be published (see consumers/outbox.py).
``P:relayed:{group}:{topic}:{partition}`` HASH  output ``topic:partition`` -> offset after the
                                   last record published from that outbox (recovery scans from it).
=================================  ===========================================================

Memory bound: a user holds at most ``recent_cap`` list entries (≈ 60 B each), ``2 *
category_cap`` affinity fields and 4 counters: ≈ 5 KB with the defaults. An item holds ≤ 15
hash fields (≈ 0.5 KB) plus ``covis_top_n`` co-visitation members (≈ 3 KB) plus
``item_sessions_cap`` session members: a listpack (≈ 30 B per member) up to Redis's
``zset-max-listpack-entries`` (128), then a skiplist (≈ 110 B per member with a 12-byte token), so
≤ 55 KB at the cap of 500. An item found through search also holds ≤ ``expansion_cap`` + 1
expansion fields and one ``P:qxlog:changed`` member. A session holds ≤ ``session_cap`` item ids in
a listpack: ≈ 80 B + 12 B per item, ≤ 0.5 KB with the default 30. Global keys: ``trending_cap``
members. Idle users/items/sessions expire after their TTL. Measured sizes: the README's Memory
section.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from redis.crc import key_slot

INTERACTIONS = ("view", "click", "add_to_cart", "purchase")
BASKET = ("add_to_cart", "purchase")  # what puts an item in a basket (bought together: P:cb)
SEP = "\x1f"  # one byte: the script splits records on it
SHOWN_SEP = "\x1e"  # between the item ids of a remembered search page (ids never hold a control character)
TTL_REFRESH_S = 86_400  # a key's TTL is refreshed at most once per this many wall-clock seconds
QUARANTINE_RECENT_N = 20  # quarantine decisions kept in P:q:recent
SLOTS = 16_384  # hash slots of a Redis Cluster
SESSION_TOKEN = {"session": "s", "user": "u"}  # session token = tag + id: the two id spaces never collide

Bound = Literal["ttl", "cap", "critical"]


@dataclass(frozen=True)
class KeyFamily:
    """One kind of key and how it stays bounded (``streamrec/memory.py`` explains the three bounds)."""

    name: str
    template: str  # the key after the prefix, ``{}`` standing for an id (any characters)
    bound: Bound
    limit: str  # the cap or TTL in words (the README table says the same)
    writer: str

    @property
    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + ".+".join(re.escape(p) for p in self.template.split("{}")) + "$")


def _consumers(name: str, template: str, bound: Bound, limit: str) -> KeyFamily:
    return KeyFamily(name, template, bound, limit, "consumers")


# Keys' name -> the family, in the README table's order. One entry per key family the writer script
# writes: Keys, the script's key names and streamrec.memory.FAMILIES are all read from here.
FAMILIES: dict[str, KeyFamily] = {
    "recent": _consumers("user_recent", "u:{}:recent", "ttl", "recent_cap (50) entries; user_ttl_s (30 d)"),
    "affinity": _consumers("user_affinity", "u:{}:cat", "ttl", "2 x category_cap (30) fields; user_ttl_s"),
    "user": _consumers(
        "user",
        "u:{}",
        "ttl",
        "<= 9 fields (`imps`: the last dedup_lookback impression ids; `qs`: the last expansion_links (20) "
        "searches); user_ttl_s",
    ),
    "item": _consumers("item", "i:{}", "ttl", "<= 17 fields; item_ttl_s (90 d)"),
    "covis": _consumers("covis", "cv:{}", "ttl", "covis_top_n (50) members; item_ttl_s"),
    "cobuy": _consumers("cobuy", "cb:{}", "ttl", "covis_top_n (50) members; item_ttl_s"),
    "item_sessions": _consumers("item_sessions", "is:{}", "ttl", "item_sessions_cap (500) members; item_ttl_s"),
    "session": _consumers("session", "s:{}", "ttl", "session_cap (30) items; session_ttl_s (90 d)"),
    "expansion": _consumers("expansion", "qx:{}", "ttl", "expansion_cap (32) terms + 1; item_ttl_s"),
    "expansion_log": _consumers("expansion_log", "qxlog:changed", "cap", "one key, expansion_log_cap (200,000) items"),
    "expansion_seq": _consumers("expansion_seq", "qxlog:seq", "cap", "one number"),
    "memory": _consumers("memory", "qm:{}", "ttl", "2 x memory_cap (64) products + 1; item_ttl_s"),
    # the learner's estimate of position bias, read by the script for the click memory's examinations
    "examination": KeyFamily("examination", "examination", "cap", "one number", "learner"),
    "quarantined": _consumers("quarantined", "q:{}", "ttl", "one reason; quarantine_ttl_s (7 d)"),
    "attr": _consumers(
        "attr", "attr:{}", "cap", "one per catalog item (4 fields); a delete's tombstone: tombstone_ttl_s"
    ),
    "trending": _consumers("trending", "trending", "cap", "one key, trending_cap (1,000) members"),
    "trending_t0": _consumers("trending_t0", "trending:t0", "cap", "one number"),
    "suggest": _consumers("suggest", "suggest", "cap", "one key, suggest_cap (20,000) members"),
    "suggest_category": _consumers(
        "suggest_category", "sgc:{}", "cap", "one per category path level, suggest_category_cap (200) members"
    ),
    "suggest_categories": _consumers("suggest_categories", "sgc", "cap", "one set: a member per category path level"),
    "clock": _consumers("clock", "clock", "cap", "one number"),
    "quarantine_counts": _consumers("quarantine_counts", "q:counts", "cap", "one field per reason"),
    "quarantine_recent": _consumers("quarantine_recent", "q:recent", "cap", f"{QUARANTINE_RECENT_N} entries"),
    "dlq_counts": _consumers("dlq_counts", "dlq:counts", "cap", "one field per reject reason"),
    # per Kafka partition ({} = group:topic:partition): what makes a batch apply exactly once
    "offset": _consumers("offset", "off:{}", "critical", "one number per group, topic, partition"),
    "outbox": _consumers(
        "outbox", "outbox:{}", "critical", "one list per partition, drained by the relay after each batch"
    ),
    "relayed": _consumers("relayed", "relayed:{}", "critical", "one small hash per partition"),
}
PER_PARTITION = ("offset", "outbox", "relayed")  # named by the consumer, not by the script's config


def session_token(user_id: str, session_id: str | None) -> str:
    """The id of an event's session in ``P:s:`` / ``P:is:``: its ``session_id``, else the user."""
    return SESSION_TOKEN["session"] + session_id if session_id else SESSION_TOKEN["user"] + user_id


def shard_prefix(prefix: str, shard: int, shards: int) -> str:
    """The key prefix of feature keyspace ``shard`` of ``shards`` on a Redis Cluster: ``prefix``, a
    hash tag, ``:``. Every key of one keyspace hashes to the tag's slot, so the writer script applies
    a partition batch atomically on one node, as on a single Redis; the tag is the first
    ``"shard.j"`` whose slot lies in the shard's share of the 16,384 slots, so that keyspaces spread
    over the masters of an evenly split cluster (how ``redis-cli --cluster create`` splits it).

    >>> [shard_prefix("sr:", k, 3) for k in range(3)]
    ['sr:{0.1}:', 'sr:{1.0}:', 'sr:{2.0}:']
    >>> [key_slot(b"0.1"), key_slot(b"1.0"), key_slot(b"2.0")]
    [1598, 8495, 14463]
    """
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    share = slot_range(shard, shards)
    for j in range(100_000):
        tag = f"{shard}.{j}"
        if key_slot(tag.encode()) in share:
            return f"{prefix}{{{tag}}}:"
    raise AssertionError("crc16 spreads short strings over every slot range")  # pragma: no cover


def slot_range(k: int, n: int) -> range:
    """The ``k``-th of ``n`` contiguous, near-equal ranges of the 16,384 slots: what ``redis-cli
    --cluster create`` gives the ``k``-th of ``n`` masters.

    >>> [(r.start, r.stop) for r in (slot_range(k, 3) for k in range(3))]
    [(0, 5461), (5461, 10923), (10923, 16384)]
    """
    return range(round(k * SLOTS / n), round((k + 1) * SLOTS / n))


def shard_of(partition: int, shards: int) -> int:
    """The keyspace that holds the features of events partition ``partition``."""
    return partition % shards


class Keys:
    """Key names in one place: readers call the methods, the writer script receives the same templates
    (:meth:`script_templates`), so no key name is spelled twice."""

    PER_ID = {n: f.template for n, f in FAMILIES.items() if "{}" in f.template and n not in PER_PARTITION}
    GLOBAL = {n: f.template for n, f in FAMILIES.items() if "{}" not in f.template}

    def __init__(self, prefix: str):
        self.p = prefix

    def _id(self, name: str, id_: str) -> str:
        return self.p + self.PER_ID[name].format(id_)

    def _partition(self, name: str, group: str, topic: str, partition: int) -> str:
        return self.p + FAMILIES[name].template.format(f"{group}:{topic}:{partition}")

    def recent(self, user: str) -> str:
        return self._id("recent", user)

    def user(self, user: str) -> str:
        return self._id("user", user)

    def affinity(self, user: str) -> str:
        return self._id("affinity", user)

    def item(self, item: str) -> str:
        return self._id("item", item)

    def covis(self, item: str) -> str:
        return self._id("covis", item)

    def cobuy(self, item: str) -> str:
        return self._id("cobuy", item)

    def attr(self, item: str) -> str:
        return self._id("attr", item)

    def session(self, token: str) -> str:
        return self._id("session", token)

    def item_sessions(self, item: str) -> str:
        return self._id("item_sessions", item)

    def quarantined(self, event_id: str) -> str:
        return self._id("quarantined", event_id)

    def expansion(self, item: str) -> str:
        return self._id("expansion", item)

    @property
    def expansion_log(self) -> str:
        return self.p + self.GLOBAL["expansion_log"]

    @property
    def expansion_seq(self) -> str:
        return self.p + self.GLOBAL["expansion_seq"]

    def memory(self, query_key: str) -> str:
        return self._id("memory", query_key)

    @property
    def examination(self) -> str:
        return self.p + self.GLOBAL["examination"]

    def offset(self, group: str, topic: str, partition: int) -> str:
        return self._partition("offset", group, topic, partition)

    def outbox(self, group: str, topic: str, partition: int) -> str:
        return self._partition("outbox", group, topic, partition)

    def relayed(self, group: str, topic: str, partition: int) -> str:
        return self._partition("relayed", group, topic, partition)

    @property
    def trending(self) -> str:
        return self.p + self.GLOBAL["trending"]

    @property
    def trending_t0(self) -> str:
        return self.p + self.GLOBAL["trending_t0"]

    @property
    def suggest(self) -> str:
        return self.p + self.GLOBAL["suggest"]

    def suggest_category(self, category: str) -> str:
        return self._id("suggest_category", category)

    @property
    def clock(self) -> str:
        return self.p + self.GLOBAL["clock"]

    @property
    def quarantine_counts(self) -> str:
        return self.p + self.GLOBAL["quarantine_counts"]

    @property
    def quarantine_recent(self) -> str:
        return self.p + self.GLOBAL["quarantine_recent"]

    @property
    def dlq_counts(self) -> str:
        return self.p + self.GLOBAL["dlq_counts"]

    def script_templates(self) -> dict[str, str | list[str]]:
        """For the writer script: per-id keys as ``[head, tail]`` around the id, global keys as names."""
        out: dict[str, str | list[str]] = {}
        for name, template in self.PER_ID.items():
            head, tail = template.split("{}")
            out[name] = [self.p + head, tail]
        out.update({name: self.p + k for name, k in self.GLOBAL.items()})
        return out
