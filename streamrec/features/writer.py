"""The write side of the online features: the writer script and everything it is given.

The script (``apply.lua``) is the only writer of the feature keys. It reads every constant it uses
from :func:`script_config`, so each rule's numbers are defined once, in Python; the consumer
(``consumers/apply.py``) calls it once per Kafka partition batch.

The call: KEYS[1] = the partition's offset key, KEYS[2] = its outbox. ARGV[1] = prefix
(informational: key names come in the config), ARGV[2] = config JSON (:func:`script_config`; the
consumer compiles the same config into the script's text, :func:`script_source`, so that no call
decodes it: ARGV[2] is then informational too),
ARGV[3] = next offset after the batch, ARGV[4] = its first offset (records may have been left out,
e.g. invalid catalog ops), then one string per record, fields joined by U+001F (built by
:func:`encode_record`):

* offset, kind, then for kind
* ``e`` interaction: event_id, type, user, item, ts, session, request_id, expansion terms, the
  query's suggestion text (:func:`streamrec.analysis.suggestion_text`; "" without a query or with
  autocomplete off), canonical JSON
* ``i`` impression: event_id, user, ts, JSON list of item ids, request_id, expansion terms, query key
  (:func:`streamrec.analysis.query_key`; "" without a query or with the click memory off), position
  of its first item, canonical JSON
* ``u`` catalog upsert: item, ts, category, price ("" = none), title
* ``p`` catalog patch: item, ts, the fields it names ("c", "p", "t" for category, price, title),
  category, price, title
* ``x`` catalog delete: item, ts
* ``r`` dead letter: reason, DeadLetter JSON, source key (last: it may hold any byte)

Expansion terms are :func:`expansion_terms` of the query joined by spaces ("" for none, and for
views). JSON text never holds a raw U+001F (JSON escapes control characters) and ids are checked
for it by consumers/validate.py, so the split is unambiguous.

Records with offset < stored offset were applied by an earlier call (a crash before the Kafka
commit, or another consumer that owned the partition) and are skipped: that is the
effectively-once guarantee. User and item hashes and each user's category affinity are read once
per batch, updated in Lua tables and written back once at the end. Returns {status, stored_before,
applied, skipped, outbox_len, quarantined reasons...}; status 'gap' (nothing applied) if the batch
starts after the stored offset.
"""

from __future__ import annotations

import json
import math
from importlib import resources

from streamrec.analysis import analyze, query_key, suggestion_text
from streamrec.features.decay import TRENDING_RESCALE
from streamrec.features.layout import (
    BASKET,
    INTERACTIONS,
    QUARANTINE_RECENT_N,
    SEP,
    SESSION_TOKEN,
    SHOWN_SEP,
    TTL_REFRESH_S,
    Keys,
)
from streamrec.schemas import CatalogOp, DeadLetter, Event, encode
from streamrec.settings import FeatureSettings

APPLY_LUA = (resources.files("streamrec.features") / "apply.lua").read_text(encoding="utf-8")


def expansion_terms(query: str | None, n: int) -> list[str]:
    """A query's terms for the query-log expansion: analysed as the lexical index does, each once,
    the first ``n``. Not spelling-corrected (that needs serving's vocabulary); a typo is kept as typed."""
    return list(dict.fromkeys(analyze(query)))[:n] if query else []


def script_config(cfg: FeatureSettings, bot: dict, keys: Keys) -> str:
    """The JSON the writer script reads: every constant it uses (feature decay/caps/weights, the
    bot-filter thresholds, key names, the field separator)."""
    return json.dumps(
        {
            "recent_cap": cfg.recent_cap,
            "dedup_lookback": cfg.dedup_lookback,
            "item_tau_ms": cfg.tau_ms(cfg.item_half_life_s),
            "affinity_tau_ms": cfg.tau_ms(cfg.affinity_half_life_s),
            "trending_tau_ms": cfg.tau_ms(cfg.trending_half_life_s),
            "trending_rescale": TRENDING_RESCALE,
            "covis_window_ms": cfg.covis_window_s * 1000.0,
            "covis_lookback": cfg.covis_lookback,
            "covis_top_n": cfg.covis_top_n,
            "session_cap": cfg.session_cap,
            "item_sessions_cap": cfg.item_sessions_cap,
            "session_ttl_s": cfg.session_ttl_s,
            "session_token": SESSION_TOKEN,
            "category_cap": cfg.category_cap,
            "trending_cap": cfg.trending_cap,
            "suggest_cap": cfg.suggest_cap,
            "suggest_category_cap": cfg.suggest_category_cap,
            "user_ttl_s": cfg.user_ttl_s,
            "item_ttl_s": cfg.item_ttl_s,
            "quarantine_ttl_s": cfg.quarantine_ttl_s,
            "tombstone_ttl_s": cfg.tombstone_ttl_s,
            "ttl_refresh_s": TTL_REFRESH_S,
            "quarantine_recent_n": QUARANTINE_RECENT_N,
            "weights": {t: cfg.weight(t) for t in INTERACTIONS},
            "basket_types": {t: True for t in BASKET},
            "expansion_weights": {t: cfg.expansion_weight(t) for t in INTERACTIONS},
            "expansion_cap": cfg.expansion_cap,
            "expansion_tau_ms": cfg.tau_ms(cfg.expansion_half_life_s),
            "expansion_links": cfg.expansion_links,
            "expansion_log_cap": cfg.expansion_log_cap,
            "memory_cap": cfg.memory_cap,
            "memory_tau_ms": cfg.tau_ms(cfg.memory_half_life_s),
            "memory_positions": cfg.memory_positions,
            "memory_eta": cfg.memory_eta,
            "memory_weights": {t: cfg.memory_weight(t) for t in INTERACTIONS},
            "shown_sep": SHOWN_SEP,
            "keys": keys.script_templates(),
            "sep": SEP,
            **bot,
        }
    )


_S = SEP.encode()

_CONFIG_LINE = "local cfg = cjson.decode(ARGV[2])\n"


def script_source(config_json: str) -> str:
    r"""The writer script with its config compiled in as a Lua table: Redis caches the compiled script,
    so a call no longer decodes ~2 KB of JSON (most of a small call's fixed cost, and live traffic
    arrives in small batches).

    >>> source = script_source('{"a": [1, 2.5], "s": "x\\u001f"}')
    >>> next(line for line in source.splitlines() if line.startswith("local cfg"))
    'local cfg = {["a"] = {1, 2.5}, ["s"] = "x\\031"}'
    """
    assert _CONFIG_LINE in APPLY_LUA
    return APPLY_LUA.replace(_CONFIG_LINE, f"local cfg = {lua_literal(json.loads(config_json))}\n", 1)


def lua_literal(value) -> str:
    """A Lua 5.1 literal of a JSON value (objects as tables with string keys, arrays 1-based)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"no Lua literal for {value!r}")
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in value.encode())
            + '"'
        )
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise ValueError(f"no Lua literal for {value!r}")  # null has none: the script would read nil


def encode_record(
    offset: int, m: Event | CatalogOp | DeadLetter, raw: bytes, key: bytes | None, cfg: FeatureSettings
) -> bytes:
    """One record as the writer script reads it: the format above, from a validated model, its raw bytes
    (an event's canonical JSON) and its Kafka key (a dead letter's source key)."""
    if isinstance(m, Event):
        # the query's analysed terms: only where the script can use them (a search shown, an outcome)
        outcome = m.type == "impression" or cfg.expansion_weight(m.type) > 0
        terms = " ".join(expansion_terms(m.query, cfg.expansion_query_terms)) if outcome else ""
        rid = m.request_id or ""
        if m.type == "impression":
            qkey = query_key(m.query) if m.query and cfg.memory_cap > 0 else ""
            f = [str(offset), "i", m.event_id, m.user_id, str(m.ts), json.dumps(m.item_ids), rid, terms]
            f += [qkey, str(m.position or 0)]
        else:
            assert m.item_id is not None  # every other event names its item (Event's validator)
            f = [str(offset), "e", m.event_id, m.type, m.user_id, m.item_id, str(m.ts), m.session_id or "", rid, terms]
            chose = m.type != "view" and cfg.suggest_cap > 0  # a click, add to cart or purchase after it
            f.append(suggestion_text(m.query) if m.query and chose else "")
        return SEP.join(f).encode() + _S + raw
    if isinstance(m, CatalogOp):
        if m.op == "upsert":
            assert m.title is not None  # an upsert has one (CatalogOp's validator)
            price = repr(m.price) if m.price is not None else ""
            return SEP.join([str(offset), "u", m.item_id, str(m.ts), m.category or "", price, m.title]).encode()
        if m.op == "patch":  # only the fields it names (the letters): "" removes category or price
            given = m.model_fields_set
            named = "".join(c for c, f in (("c", "category"), ("p", "price"), ("t", "title")) if f in given)
            price = repr(m.price) if m.price is not None else ""
            fields = [str(offset), "p", m.item_id, str(m.ts), named, m.category or "", price, m.title or ""]
            return SEP.join(fields).encode()
        return SEP.join([str(offset), "x", m.item_id, str(m.ts)]).encode()
    return SEP.join([str(offset), "r", m.reason]).encode() + _S + encode(m) + _S + (key or b"")
