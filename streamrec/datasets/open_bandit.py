"""Open Bandit Dataset (ZOZOTOWN, obp 0.4.1 sample) → impression and click ``Event`` s.

Each CSV row is one real impression: an item shown at ``position`` (1–3 in the file, 0-based in
streamrec) at ``timestamp``, with ``click`` 0/1, for a user described by four hashed categorical
features. Mapping to the streamrec contract:

* one row → one ``impression`` event (``request_id`` unique per row, ``item_ids=[item]``,
  ``position`` = the slot of that item — an impression's ``position`` is the slot of its first
  item) and, when ``click == 1``, one ``click`` event with the same ``request_id``, item and
  position at the impression's timestamp (the files carry no separate click time);
* ``user_id``: OBD has no user ids. A row carries four hashed user features and the user's
  *affinity* to every item of the campaign ("induced by the number of past clicks observed
  between each user-item pair", i.e. the user's click history from before the impression). A
  user with a history gets the id ``obd-{hash of the four features and the history items}``,
  stable until they click something new; a row without history is an anonymous visit with its
  own id. Pooling those visits by the four features made one "user" of hundreds of visitors,
  whose "already seen" and co-visitation features then said little about anyone (prequential
  AUC of the online head, 5 % negatives, seed 0: 0.54 without the history, 0.57 with it and
  pooled visitors, 0.60 with it and one id per visit);
* the affinity is the user's click history, which streamrec keeps as the user's recent items:
  before a row whose user has history items not yet emitted for that user, :func:`to_events`
  emits one organic ``click`` per such item (no ``request_id``, 1 ms before the impression,
  ``event_id`` ``obd-hist-{user}-{item}``, so a replay is idempotent). They join nothing; they
  fill the profile features (``user_seen_item``, co-visitation, ``user_item_cos``) and the item
  counters exactly as the user's earlier clicks would have;
* item ids are namespaced by campaign (``all:12``, ``men:3``): campaigns are separate catalogues.
  The logging policies (``random``, ``bts``) share item ids within a campaign.

Items have no text, so :func:`item_vectors` builds their embedding from ``item_context.csv``:
a one-hot of the three categorical item features (hashed into ``dim`` buckets) plus the numeric
``item_feature_0``, L2-normalised; ``item_feature_1`` doubles as the item's category. The
categorical hashes differ between the ``random`` and ``bts`` copies of ``item_context.csv``
(the numeric feature matches item for item), so the ``random`` copy is used for both policies.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from streamrec.datasets import dataset_folder
from streamrec.schemas import Event

NAME = "open_bandit"
POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
AFFINITY_PREFIX = "user-item_affinity_"


@dataclass(frozen=True)
class Impression:
    """One logged row, typed."""

    ts: int  # epoch ms
    policy: str
    campaign: str
    row: int
    item_id: str  # namespaced: "{campaign}:{id}"
    position: int  # 0-based slot
    click: int
    propensity: float
    user_id: str
    history: tuple[str, ...] = ()  # namespaced items the user clicked before the logged period


def _check(policy: str, campaign: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown Open Bandit policy {policy!r}; choose from {POLICIES}")
    if campaign not in CAMPAIGNS:
        raise ValueError(f"unknown Open Bandit campaign {campaign!r}; choose from {CAMPAIGNS}")


def _ts_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def impressions(data_dir: Path, policy: str = "random", campaign: str = "all") -> Iterator[Impression]:
    """The rows of one policy × campaign file, in file (= time) order."""
    _check(policy, campaign)
    path = dataset_folder(data_dir, NAME) / policy / campaign / f"{campaign}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: the Open Bandit sample has {policy}/{campaign}/{campaign}.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        affinity = [c for c in reader.fieldnames or () if c.startswith(AFFINITY_PREFIX)]
        for k, r in enumerate(reader):
            history = tuple(f"{campaign}:{c[len(AFFINITY_PREFIX) :]}" for c in affinity if float(r[c] or 0) > 0)
            key = "|".join([*(r[f"user_feature_{i}"] for i in range(4)), *history])
            user = (
                hashlib.sha1(key.encode()).hexdigest()[:12] if history else f"{policy}-{campaign}-{k}"
            )  # see module doc
            yield Impression(
                ts=_ts_ms(r["timestamp"]),
                policy=policy,
                campaign=campaign,
                row=k,
                item_id=f"{campaign}:{r['item_id']}",
                position=int(r["position"]) - 1,
                click=int(r["click"]),
                propensity=float(r["propensity_score"]),
                user_id=f"obd-{user}",
                history=history,
            )


def merged(
    data_dir: Path, policies: Iterable[str] = POLICIES, campaigns: Iterable[str] = CAMPAIGNS
) -> list[Impression]:
    """Several files merged into one stream in timestamp order (ties keep file order)."""
    streams = [impressions(data_dir, p, c) for p in policies for c in campaigns]
    return list(heapq.merge(*streams, key=lambda i: i.ts))


def to_events(rows: Iterable[Impression]) -> Iterator[Event]:
    """Impression (and click) events for ``rows``, in order, each user's history clicks first."""
    emitted: set[tuple[str, str]] = set()
    for i in rows:
        for item in i.history:
            if (i.user_id, item) not in emitted:
                emitted.add((i.user_id, item))
                yield Event(
                    event_id=f"obd-hist-{i.user_id}-{item}", type="click", user_id=i.user_id, ts=i.ts - 1, item_id=item
                )
        rid = f"obd-{i.policy}-{i.campaign}-{i.row}"
        yield Event(
            event_id=f"{rid}-imp",
            type="impression",
            user_id=i.user_id,
            ts=i.ts,
            request_id=rid,
            item_ids=[i.item_id],
            position=i.position,
        )
        if i.click:
            yield Event(
                event_id=f"{rid}-click",
                type="click",
                user_id=i.user_id,
                ts=i.ts,
                request_id=rid,
                item_id=i.item_id,
                position=i.position,
            )


def events(data_dir: Path, policies: Iterable[str] = POLICIES, campaigns: Iterable[str] = CAMPAIGNS) -> Iterator[Event]:
    """The whole sample (or a part) as streamrec events in time order."""
    return to_events(merged(data_dir, policies, campaigns))


@dataclass(frozen=True)
class ItemContext:
    numeric: float
    categories: tuple[str, str, str]

    @property
    def category(self) -> str:
        return self.categories[0]


def item_context(data_dir: Path, campaign: str) -> dict[str, ItemContext]:
    """Namespaced item id → its context features (from the ``random`` copy, see module doc)."""
    _check("random", campaign)
    path = dataset_folder(data_dir, NAME) / "random" / campaign / "item_context.csv"
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out[f"{campaign}:{r['item_id']}"] = ItemContext(
                float(r["item_feature_0"]), (r["item_feature_1"], r["item_feature_2"], r["item_feature_3"])
            )
    return out


def item_vectors(data_dir: Path, campaigns: Iterable[str] = CAMPAIGNS, dim: int = 32) -> dict[str, np.ndarray]:
    """Content embeddings for items without text: hashed one-hot categories + the numeric feature."""
    if dim < 4:
        raise ValueError("dim must be at least 4")
    out: dict[str, np.ndarray] = {}
    for c in campaigns:
        for iid, ctx in item_context(data_dir, c).items():
            v = np.zeros(dim, dtype=np.float32)
            for k, cat in enumerate(ctx.categories):
                v[int(hashlib.md5(f"{k}:{cat}".encode()).hexdigest(), 16) % (dim - 1)] += 1.0
            v[dim - 1] = ctx.numeric
            out[iid] = v / np.linalg.norm(v)
    return out


# --- experiment helpers (tests, bench): real rows, documented transformations ------------------


def keep_all_clicks(rows: list[Impression], keep_non_clicks: float, seed: int = 0) -> list[Impression]:
    """Negative down-sampling: every clicked row, and each non-clicked row with probability
    ``keep_non_clicks`` (the usual CTR-training practice; AUC is unchanged in expectation, and the
    stream carries enough clicks per event for drift detectors to have evidence)."""
    if not 0 < keep_non_clicks <= 1:
        raise ValueError("keep_non_clicks must be in (0, 1]")
    rng = np.random.default_rng(seed)
    return [r for r in rows if r.click or rng.random() < keep_non_clicks]


def remap_clicks(rows: list[Impression], start: int, mapping: dict[str, str]) -> list[Impression]:
    """Inject a concept shift at row ``start``: from there on, a click on item X moves to the next
    unclicked row showing ``mapping[X]`` (X's row becomes unclicked). Impressions stay where they
    were, so what is *shown* is unchanged while what is *clicked* moved to other items."""
    out = list(rows)
    rows_of: dict[str, list[int]] = {}
    for k in range(start, len(out)):
        rows_of.setdefault(out[k].item_id, []).append(k)
    cursor: dict[str, int] = {}
    for k in range(start, len(rows)):
        r = rows[k]
        if not r.click or r.item_id not in mapping:
            continue
        target = mapping[r.item_id]
        cands = rows_of.get(target, [])
        j = cursor.get(target, 0)
        while j < len(cands) and (cands[j] < k or out[cands[j]].click):
            j += 1
        cursor[target] = j
        if j == len(cands):
            continue  # the target is never shown again: the click is lost with its row
        out[k] = Impression(**{**r.__dict__, "click": 0})
        t = out[cands[j]]
        out[cands[j]] = Impression(**{**t.__dict__, "click": 1})
    return out
