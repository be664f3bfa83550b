"""Every Redis key family streamrec writes, how each stays bounded, and the eviction policy.

Redis memory is bounded two ways. A family is ``ttl`` when every key carries an expiry (idle users,
items, sessions, served rows disappear on their own) — those keys are also what Redis may evict
at ``maxmemory``. A family is ``cap`` when it has a fixed number of keys (one per catalog item, one
per reason, one global key) each trimmed to a stated size; ``critical`` when it must never be
evicted (the consumers' offsets and outboxes: they are what makes a batch apply exactly once), so
it carries no TTL and stays small (one key per partition). ``FAMILIES`` is the list: the feature
families as ``streamrec/features/layout.py`` declares them, then serving's and the learner's; the
README's memory table states the same per family, and ``tests/test_memory.py`` fails on a key that belongs
to no family, a ``ttl`` key without expiry or a ``critical`` key with one.

Eviction policy: ``volatile-lru``. At ``maxmemory`` Redis evicts the least recently used keys
*with a TTL* — the oldest features — and never a key without one, so offsets, outboxes, the
catalog and the cockpit history survive. ``allkeys-*`` could evict an offset key (the batch would
be re-applied: counts doubled) or an outbox (dead letters lost); ``noeviction`` fails the writer's
script with OOM and stalls ingestion. :func:`policy_warning` says so at start-up of every service
(``launcher/cli.py``) when an external Redis is configured that way.

>>> family_of("u:42:recent").name, family_of("u:42").name, family_of("q:counts").name
('user_recent', 'user', 'quarantine_counts')
>>> family_of("off:g:streamrec.events:0").bound
'critical'
>>> family_of("nobody:writes:this") is None
True
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import redis
from redis.cluster import RedisCluster

from streamrec.features import layout as features_layout
from streamrec.features.layout import Bound as Bound  # re-exported: the audit's public names
from streamrec.features.layout import KeyFamily
from streamrec.ops import LEARNER_STATS

log = logging.getLogger(__name__)

POLICY = "volatile-lru"  # what docker-compose.yml and the embedded Redis run
SAFE_POLICIES = frozenset({"volatile-lru", "volatile-lfu", "volatile-ttl", "volatile-random"})

FAMILIES: tuple[KeyFamily, ...] = (
    # consumers (streamrec/features/apply.lua): the feature layout states its own bounds
    *features_layout.FAMILIES.values(),
    # serving
    KeyFamily("served", "served:{}", "ttl", "one per response: learner.label_window_s x 4 + 60 s", "serving"),
    KeyFamily("pool", "pool:{}", "ttl", "one per /recommend response: learner.label_window_s x 4 + 60 s", "serving"),
    KeyFamily("cockpit_history", "cockpit:history", "cap", "cockpit.history_points (2,880) x <= 1.2 KB", "serving"),
    KeyFamily("cockpit_actions", "cockpit:actions", "cap", "200 entries", "serving"),
    KeyFamily("cockpit_slot", "cockpit:slot:{}", "ttl", "3 x cockpit.sample_s", "serving"),
    KeyFamily("rules", "rules", "cap", "one hash, one field per merchandising rule (set by hand)", "serving"),
    KeyFamily("rules_version", "rules:v", "cap", "one number", "serving"),
    # learner
    KeyFamily("learner_stats", LEARNER_STATS, "cap", "one hash, one field per event type + 4", "learner"),
)

# exact names before templates, then the longest literal text first ("u:{}:recent" before "u:{}")
_ORDER = sorted(FAMILIES, key=lambda f: ("{}" in f.template, -len(f.template.replace("{}", ""))))


def family_of(key: str) -> KeyFamily | None:
    """The family of a key (without the prefix), or None: a key nobody declared."""
    for fam in _ORDER:
        if fam.regex.match(key):
            return fam
    return None


@dataclass
class FamilyUsage:
    keys: int = 0
    without_ttl: int = 0
    bytes: int = 0  # MEMORY USAGE summed (key, value and overhead as Redis reports them)
    examples: list[str] = field(default_factory=list)


def audit(r: redis.Redis, prefix: str, batch: int = 1000) -> dict[str, FamilyUsage]:
    """Every key under ``prefix``, by family (``"?"`` for keys of no family): count, keys without a
    TTL, bytes. Reads only (SCAN, PTTL, MEMORY USAGE); fine on a live Redis of a few million keys."""
    out: dict[str, FamilyUsage] = {}
    names: list[str] = []

    def flush() -> None:
        pipe = r.pipeline(transaction=False)
        for k in names:
            pipe.pttl(k)
            pipe.memory_usage(k, samples=0)  # exact: every element counted
        replies = pipe.execute()
        for i, k in enumerate(names):
            ttl, size = replies[2 * i], replies[2 * i + 1]
            if ttl == -2:  # expired or evicted between SCAN and now
                continue
            fam = family_of(_text(k)[len(prefix) :])
            use = out.setdefault(fam.name if fam else "?", FamilyUsage())
            use.keys += 1
            use.bytes += int(size or 0)
            if ttl == -1:
                use.without_ttl += 1
            if len(use.examples) < 3:
                use.examples.append(_text(k))
        names.clear()

    for k in r.scan_iter(match=_glob_escape(prefix) + "*", count=batch):
        names.append(cast(str, k))
        if len(names) >= batch:
            flush()
    flush()
    return out


def violations(report: dict[str, FamilyUsage]) -> list[str]:
    """What breaks the memory bound: undeclared keys, ``ttl`` keys without one, ``critical`` keys with one."""
    by_name = {f.name: f for f in FAMILIES}
    out = []
    for name, use in sorted(report.items()):
        fam = by_name.get(name)
        if fam is None:
            out.append(f"{use.keys} keys of no declared family, e.g. {use.examples}")
        elif fam.bound == "ttl" and use.without_ttl:
            out.append(f"{name}: {use.without_ttl} of {use.keys} keys without a TTL, e.g. {use.examples}")
        elif fam.bound == "critical" and use.without_ttl < use.keys:
            out.append(f"{name}: {use.keys - use.without_ttl} keys with a TTL (would be evicted at maxmemory)")
    return out


def policy_warning(info: dict) -> str | None:
    """A warning about ``INFO memory``'s ``maxmemory_policy`` (and ``maxmemory``), or None when safe."""
    policy, maxmemory = str(info.get("maxmemory_policy", "")), int(info.get("maxmemory", 0) or 0)
    if policy.startswith("allkeys"):
        return (
            f"Redis maxmemory-policy is {policy}: at maxmemory it may evict consumer offsets and outboxes "
            f"(events applied twice, dead letters lost); set {POLICY}"
        )
    if policy == "noeviction" and maxmemory:
        return (
            f"Redis maxmemory-policy is noeviction with maxmemory {maxmemory} bytes: once full, feature "
            f"writes fail and ingestion stalls instead of shedding the oldest features; set {POLICY}"
        )
    if policy and policy not in SAFE_POLICIES and policy != "noeviction":
        return f"Redis maxmemory-policy {policy} is not one streamrec knows to be safe; set {POLICY}"
    return None


def warn_if_unsafe(r: redis.Redis) -> str | None:
    """Log :func:`policy_warning` for this Redis, or for each master of a Redis Cluster, each
    named (its own policy: a cluster's nodes are configured one by one). Best effort: a Redis that
    is down is not an error here."""
    try:
        if isinstance(r, RedisCluster):
            infos = {node.name: cast(dict, r.info("memory", target_nodes=node)) for node in r.get_primaries()}
            found = [f"{node}: {w}" for node, info in sorted(infos.items()) if (w := policy_warning(info))]
            warning = "; ".join(found) or None
        else:
            warning = policy_warning(cast(dict, r.info("memory")))
    except redis.RedisError as e:
        log.info("could not read the Redis eviction policy: %r", e)
        return None
    if warning:
        log.warning(warning)
    return warning


def used_memory(r: redis.Redis) -> int:
    return int(cast(dict, r.info("memory"))["used_memory"])


def per_entity(report: dict[str, FamilyUsage]) -> dict[str, float]:
    """Bytes per user (``u:*`` families / users), per item (``i:``, ``cv:``, ``is:``, ``attr:`` / items)
    and per session (``s:`` / sessions)."""

    def total(names: Iterable[str]) -> int:
        return sum(report[n].bytes for n in names if n in report)

    def count(name: str) -> int:
        return report[name].keys if name in report else 0

    out = {}
    if count("user"):
        out["user"] = total(("user", "user_recent", "user_affinity")) / count("user")
    items = max(count("item"), count("attr"))
    if items:
        out["item"] = total(("item", "covis", "item_sessions", "attr", "expansion")) / items
    if count("session"):
        out["session"] = total(("session",)) / count("session")
    return out


def _text(k: str | bytes) -> str:
    return k.decode() if isinstance(k, bytes) else k


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)
