"""Open Bandit Dataset (ZOZOTOWN, obp 0.4.1 sample) → impression and click ``Event`` s.

Each CSV row is one real impression: an item shown at ``position`` (1–3 in the file, 0-based in
streamrec) at ``timestamp``, with ``click`` 0/1, for a user described by four hashed categorical
features. Mapping to the streamrec contract:

* one row → one ``impression`` event (``request_id`` unique per row, ``item_ids=[item]``,
  ``position`` = the slot of that item — an impression's ``position`` is the slot of its first
  item) and, when ``click == 1``, one ``click`` event with the same ``request_id``, item and
  position at the impression's timestamp (the files carry no separate click time);
* ``user_id`` = a hash of the four user features: OBD has no user ids, so users sharing all
  features form one "user" (a segment) — enough for the user profile features to mean something;
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


@dataclass(frozen=True)
class Impression:
    """One logged row, typed."""

    ts: int            # epoch ms
    policy: str
    campaign: str
    row: int
    item_id: str       # namespaced: "{campaign}:{id}"
    position: int      # 0-based slot
    click: int
    propensity: float
    user_id: str


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
        for k, r in enumerate(csv.DictReader(f)):
            user = hashlib.sha1("|".join(r[f"user_feature_{i}"] for i in range(4)).encode()).hexdigest()[:12]
            yield Impression(ts=_ts_ms(r["timestamp"]), policy=policy, campaign=campaign, row=k,
                             item_id=f"{campaign}:{r['item_id']}", position=int(r["position"]) - 1,
                             click=int(r["click"]), propensity=float(r["propensity_score"]), user_id=f"obd-{user}")


def merged(data_dir: Path, policies: Iterable[str] = POLICIES, campaigns: Iterable[str] = CAMPAIGNS) -> list[Impression]:
    """Several files merged into one stream in timestamp order (ties keep file order)."""
    streams = [impressions(data_dir, p, c) for p in policies for c in campaigns]
    return list(heapq.merge(*streams, key=lambda i: i.ts))


def to_events(rows: Iterable[Impression]) -> Iterator[Event]:
    """Impression (and click) events for ``rows``, in order."""
    for i in rows:
        rid = f"obd-{i.policy}-{i.campaign}-{i.row}"
        yield Event(event_id=f"{rid}-imp", type="impression", user_id=i.user_id, ts=i.ts, request_id=rid,
                    item_ids=[i.item_id], position=i.position)
        if i.click:
            yield Event(event_id=f"{rid}-click", type="click", user_id=i.user_id, ts=i.ts, request_id=rid,
                        item_id=i.item_id, position=i.position)


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
                float(r["item_feature_0"]), (r["item_feature_1"], r["item_feature_2"], r["item_feature_3"]))
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
            continue   # the target is never shown again: the click is lost with its row
        out[k] = Impression(**{**r.__dict__, "click": 0})
        t = out[cands[j]]
        out[cands[j]] = Impression(**{**t.__dict__, "click": 1})
    return out
