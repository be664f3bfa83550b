"""Merchandising rules: a merchandiser pins, boosts, buries or hides products for a search or a category.

Where they live: Redis (``P:rules``: rule id → JSON, ``P:rules:v`` counted up on every change), so
every serving worker applies the same rules: each reads the version every
``search.rules_poll_s`` and reloads the rules when it moved (applied within a second of the admin
call). The admin API (``/admin/rules``, admin key) writes them; the cockpit lists them.

A rule applies to a /search when it is active (``start_ms`` ≤ now < ``end_ms``, either open) and
matches the request: its ``query`` equals the search (case and spaces aside), or with
``match: "contains"`` the search holds all its terms (as analysed for search); its ``category``
is the request's category filter or above it. Actions run after ranking, in this order:

- **hide**: the products are not shown;
- **bury**: after every other product;
- **boost**: score + ``amount`` × the best score of the list (``amount`` 1 = level with the best);
- **pin**: at ``position`` (1-based), in the order listed; a pinned product the search did not
  find is shown all the same if it passes the request's filters.

A rule's products are ``items`` and/or every product of its ``brands``. Each product a rule moved
says so in its reasons ("pinned by rule 'Summer sale'"). When a rule changes a page its feature
rows are left to the learner to recompute and exploration is off for that request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis

from serving.catalog.filters import Filter
from serving.polling import Follower
from serving.search import Ranked
from streamrec.analysis import analyze, category_levels, suggestion_text
from streamrec.schemas import MerchandisingRule
from streamrec.vector_index import ItemMeta

VERBS = {"pin": "pinned", "boost": "boosted", "bury": "buried", "hide": "hidden"}


class RuleStore:
    """The rules in Redis; every change counts the version up (what the followers poll)."""

    def __init__(self, r: redis.Redis, prefix: str):
        self.r = r
        self.key, self.version_key = f"{prefix}rules", f"{prefix}rules:v"

    def version(self) -> int:
        return int(self.r.get(self.version_key) or 0)

    def all(self) -> list[MerchandisingRule]:
        rows = self.r.hgetall(self.key)
        rules = [MerchandisingRule.model_validate_json(v) for v in rows.values()]  # type: ignore[union-attr]
        return sorted(rules, key=lambda rule: rule.id or "")

    def put(self, rule: MerchandisingRule) -> MerchandisingRule:
        if rule.id is None:
            rule = rule.model_copy(update={"id": uuid.uuid4().hex[:12]})
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key, rule.id, rule.model_dump_json())
        pipe.incr(self.version_key)
        pipe.execute()
        return rule

    def delete(self, rule_id: str) -> bool:
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.key, rule_id)
        pipe.incr(self.version_key)
        removed, _ = pipe.execute()
        return bool(removed)


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its query and category analysed once, when the rules are loaded."""

    rule: MerchandisingRule
    query: str | None  # normalised (suggestion_text) for an exact match
    terms: frozenset[str]  # analysed, for a contains match
    category: tuple[str, ...]

    def active(self, now_ms: int) -> bool:
        r = self.rule
        return (r.start_ms is None or r.start_ms <= now_ms) and (r.end_ms is None or now_ms < r.end_ms)

    def matches(self, query: str, filters: Filter | None) -> bool:
        if self.rule.query is not None:
            if self.rule.match == "exact" and suggestion_text(query) != self.query:
                return False
            if self.rule.match == "contains" and not self.terms <= set(analyze(query)):
                return False
        if self.category:
            asked = category_levels(filters.category) if filters is not None and filters.category else ()
            if asked[: len(self.category)] != self.category:
                return False
        return True

    def covers(self, item_id: str, meta: ItemMeta | None) -> bool:
        r = self.rule
        return item_id in r.items or (meta is not None and meta.brand is not None and meta.brand in r.brands)


def compile_rule(rule: MerchandisingRule) -> CompiledRule:
    return CompiledRule(
        rule,
        suggestion_text(rule.query) if rule.query else None,
        frozenset(analyze(rule.query)) if rule.query else frozenset(),
        category_levels(rule.category) if rule.category else (),
    )


class RuleFollower(Follower):
    """The rules this serving process applies, reloaded when their version moves."""

    what = "merchandising rules"

    def __init__(self, store: RuleStore | None, poll_s: float = 0.5):
        super().__init__(poll_s, "rule-follower")
        self.store = store
        self.seen = -1
        self.rules: list[CompiledRule] = []

    def poll(self) -> bool:
        if self.store is None:
            return False
        version = self.store.version()
        if version == self.seen:
            return False
        self.rules = [compile_rule(r) for r in self.store.all()]
        self.seen = version
        return True

    def matching(self, query: str, filters: Filter | None, now_ms: int | None = None) -> list[CompiledRule]:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return [c for c in self.rules if c.active(now) and c.matches(query, filters)]


def apply(
    ranked: Ranked,
    order: list[int],
    compiled: list[CompiledRule],
    meta: Callable[[str], ItemMeta | None],
    admits: Callable[[str], bool],
    boost: bool = True,
) -> tuple[Ranked, list[int]]:
    """``ranked`` and its ``order`` (candidate indices, best first) with the rules applied: hidden
    products gone, buried ones last, boosted ones re-sorted by their raised score (only with
    ``boost``: a sort by price keeps its order), pinned ones placed — a pinned product the search
    did not find is added as a candidate. The rows are dropped (the page changed)."""
    ids, final = list(ranked.ids), ranked.final.astype(np.float32).copy()
    reasons = [list(r) for r in ranked.reasons]
    best = float(final.max()) if len(final) else 1.0
    hidden: set[int] = set()
    buried: set[int] = set()

    def say(j: int, c: CompiledRule) -> None:
        reasons[j].append(f"{VERBS[c.rule.action]} by rule '{c.rule.name}'")

    for c in compiled:
        if c.rule.action == "pin" or (c.rule.action == "boost" and not boost):
            continue
        for j, item_id in enumerate(ids):
            if not c.covers(item_id, meta(item_id)):
                continue
            if c.rule.action == "hide":
                hidden.add(j)
            elif c.rule.action == "bury":
                buried.add(j)
                say(j, c)
            else:
                final[j] += c.rule.amount * max(best, 1e-6)
                say(j, c)
    kept = [j for j in order if j not in hidden]
    if boost:
        kept.sort(key=lambda j: -float(final[j]))  # stable: ties keep the given order
    new_order = [j for j in kept if j not in buried] + [j for j in kept if j in buried]
    position = {item_id: j for j, item_id in enumerate(ids)}
    for c in compiled:
        if c.rule.action != "pin":
            continue
        at = c.rule.position - 1
        for item_id in c.rule.items:
            if item_id not in position:
                if not admits(item_id):
                    continue
                position[item_id] = len(ids)
                ids.append(item_id)
                final = np.append(final, np.float32(final.max() if len(final) else 0.0))
                reasons.append([])
            j = position[item_id]
            if j in hidden:
                continue
            if j in new_order:
                new_order.remove(j)
            new_order.insert(min(at, len(new_order)), j)
            say(j, c)
            at += 1
    changed = Ranked(ids, final, new_order, reasons, None, ranked.query_vec, features_down=ranked.features_down)
    return changed, new_order
