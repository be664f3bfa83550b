"""Incremental lexical retrieval: BM25 over analysed title + category (+ description) in tantivy.

Why tantivy: the catalogue changes all the time, and an immutable BM25 index had to be rebuilt from
the whole catalogue on every change. Here a change costs O(change): ``apply`` only queues it; a
background thread analyses the queued documents, adds/deletes them in the tantivy writer and
commits + reloads the searcher at most every ``commit_interval_s``. Searches use the last reloaded
searcher and never wait for a commit.

Documents and queries go through the same :func:`streamrec.analysis.analyze`; the index stores the
analysed tokens joined by spaces under tantivy's whitespace tokenizer, and queries are OR-ed term
queries (no query parser), after spelling correction from the catalogue's own vocabulary.

A second field, ``qlog``, holds an item's *query-log expansion*: the analysed terms of past
searches that led to a click or purchase of it (kept by the consumers in Redis,
``streamrec.features``), each repeated by its weight. Query terms are also matched there with the
boost ``expansion_boost`` (0 = the field is not searched), so an unseen query sharing terms with
past successful queries finds those products.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol

import tantivy

from serving.spelling import SpellCorrector
from streamrec.analysis import analyze

log = logging.getLogger(__name__)

DESCRIPTION_CHARS = 300  # the head of a description: enough to add terms, not enough to drown the title
EXPANSION_MAX_TF = 8  # a term's repetitions in the qlog field: BM25 saturates long before this


class ItemText(Protocol):
    """What the lexical index reads of an item (``ItemMeta`` has it)."""

    @property
    def title(self) -> str: ...
    @property
    def category(self) -> str | None: ...
    @property
    def description(self) -> str | None: ...


@dataclass(frozen=True)
class LexicalHit:
    item_id: str
    score: float  # tantivy BM25
    matched: list[str]  # analysed query terms found in the item's document


# What the index keeps per item: (the document's tokens, title first and in order; how many are the
# title's). Plain tuples of interned strings, not sets or objects: at 1M items the index adds 0.55 GB
# RSS, not 2.0 (bench/lexical.py; tokens repeat across titles), and the cyclic GC untracks such tuples,
# so a full collection does not walk the catalogue. A query term matches by ``in`` over ~10-40 tokens.
# The indexed text is the tokens joined by spaces, so an item re-indexed for its expansion needs no more.
_Doc = tuple[tuple[str, ...], int]


def document_tokens(item: ItemText) -> tuple[list[str], list[str]]:
    """(all tokens of the item's lexical document, tokens of its title)."""
    title = analyze(item.title or "")
    tokens = title + analyze(item.category or "")
    if item.description:
        tokens += analyze(item.description[:DESCRIPTION_CHARS])
    return tokens, title


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("item_id", stored=True, tokenizer_name="raw")
    # a number per indexed document, read for many hits at once from the fast column (stored
    # documents are fetched one by one: 3x slower for a page, far more for a facet's thousand hits)
    sb.add_integer_field("key", fast=True)
    sb.add_text_field("text", stored=False, tokenizer_name="whitespace")
    sb.add_text_field("qlog", stored=False, tokenizer_name="whitespace")
    return sb.build()


def expansion_text(terms: Mapping[str, float]) -> str:
    """The qlog field: each term repeated round(weight) times (at least once, at most EXPANSION_MAX_TF)."""
    return " ".join(" ".join([t] * max(1, min(EXPANSION_MAX_TF, round(w)))) for t, w in sorted(terms.items()) if w > 0)


class LexicalIndex:
    """BM25 over the live catalogue, updated incrementally from index change notifications."""

    def __init__(
        self,
        commit_interval_s: float = 0.5,
        heap_bytes: int = 50_000_000,
        expansion_boost: float = 0.0,
        expansion_all_terms: bool = True,
    ):
        self.commit_interval_s = commit_interval_s
        self.expansion_boost = expansion_boost
        self.expansion_all_terms = expansion_all_terms
        self._schema = _schema()
        self._index = tantivy.Index(self._schema)  # in RAM: rebuilt from the vector replica at start
        self._writer = self._index.writer(heap_size=heap_bytes, num_threads=1)
        self._searcher = self._index.searcher()
        self.speller = SpellCorrector()
        self._docs: dict[str, _Doc] = {}
        self._keys: dict[str, int] = {}  # item -> its document's key
        self._by_key: dict[int, str] = {}
        self._next_key = 0
        self._retired: list[int] = []  # keys of replaced documents, resolved until the next reload
        self._expansions: dict[str, dict[str, float]] = {}  # item -> term -> weight (the qlog field)
        self._pending: list[tuple[dict[str, ItemText | None], bool]] = []
        self._pending_expansions: dict[str, dict[str, float]] = {}
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()  # the writer, _docs and the speller change together
        self._dirty = False
        self._last_commit = 0.0
        self.version = 0  # commits made visible
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lexical-writer", daemon=True)

    # --- changes ---------------------------------------------------------------------------
    def apply(self, changes: Mapping[str, ItemText | None], reset: bool = False) -> None:
        """Queue item upserts (new text) and deletes (None); ``reset`` replaces everything.

        Cheap, so it can be an index change listener called under the index's write lock."""
        with self._pending_lock:
            self._pending.append((dict(changes), reset))
        self._wake.set()

    def expand(self, changes: Mapping[str, Mapping[str, float]]) -> None:
        """Queue new query-log expansions (term -> weight; empty = none): each replaces the item's last."""
        with self._pending_lock:
            self._pending_expansions.update({item_id: dict(terms) for item_id, terms in changes.items()})
        self._wake.set()

    def expansion(self, item_id: str) -> dict[str, float]:
        return self._expansions.get(item_id, {})

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def refresh(self) -> None:
        """Apply everything queued and make it searchable now (tests, and the writer thread)."""
        self._drain()
        self._commit()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.commit_interval_s)
            self._wake.clear()
            try:
                self._drain()
                wait = self.commit_interval_s - (time.monotonic() - self._last_commit)
                if wait > 0 and self._stop.wait(wait):  # gather changes: one commit per interval
                    return
                self.refresh()
            except Exception:  # keep serving the last committed state
                log.exception("lexical index update failed")
                self._stop.wait(1.0)

    def _drain(self) -> None:
        with self._pending_lock:
            batches, self._pending = self._pending, []
            expansions, self._pending_expansions = self._pending_expansions, {}
        if not batches and not expansions:
            return
        with self._write_lock:
            for changes, reset in batches:
                if reset:
                    self._clear()
                for item_id, item in changes.items():
                    self._upsert(item_id, item)
            for item_id, terms in expansions.items():
                self._expand(item_id, terms)
            self._dirty = True

    def _clear(self) -> None:
        for item_id, doc in self._docs.items():  # by id: delete_all_documents misses uncommitted adds
            self._writer.delete_documents_by_term("item_id", item_id)
            self.speller.remove_document(doc[0])
            self._forget_key(item_id)
        self._docs.clear()

    def _forget_key(self, item_id: str) -> None:
        """The searcher in use still has the document: its key resolves until the next reload."""
        key = self._keys.pop(item_id, None)
        if key is not None:
            self._retired.append(key)

    def _upsert(self, item_id: str, item: ItemText | None) -> None:
        old = self._docs.pop(item_id, None)
        if old is not None:
            self._writer.delete_documents_by_term("item_id", item_id)
            self.speller.remove_document(old[0])
            self._forget_key(item_id)
        if item is None:
            return
        tokens, title = document_tokens(item)
        words = tuple(map(sys.intern, tokens))  # the title's tokens first (document_tokens)
        doc = (words, len(title))
        self._add(item_id, doc)
        self._docs[item_id] = doc
        self.speller.add_document(words)

    def _add(self, item_id: str, doc: _Doc) -> None:
        """Each added document gets a new key: hits of the searcher not yet reloaded still resolve."""
        qlog = expansion_text(self._expansions.get(item_id, {}))
        key, self._next_key = self._next_key, self._next_key + 1
        self._keys[item_id] = key
        self._by_key[key] = item_id
        self._writer.add_document(tantivy.Document(item_id=item_id, key=key, text=" ".join(doc[0]), qlog=qlog))

    def _expand(self, item_id: str, terms: dict[str, float]) -> None:
        """Kept even for an item not (yet) indexed: its document gets the expansion when it comes."""
        if terms:
            self._expansions[item_id] = terms
        elif self._expansions.pop(item_id, None) is None:
            return
        doc = self._docs.get(item_id)
        if doc is not None:
            self._writer.delete_documents_by_term("item_id", item_id)
            self._forget_key(item_id)
            self._add(item_id, doc)

    def _commit(self) -> None:
        with self._write_lock:
            if not self._dirty:
                return
            self._writer.commit()
            self._dirty = False
            retired, self._retired = self._retired, []
        self._index.reload()
        self._searcher = self._index.searcher()
        for key in retired:
            self._by_key.pop(key, None)
        self._last_commit = time.monotonic()
        self.version += 1

    # --- reads -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._searcher.num_docs

    def query_terms(self, query: str) -> list[str]:
        """The query's analysed, spelling-corrected terms, each once."""
        return list(dict.fromkeys(self.speller.correct(analyze(query))))

    def title_tokens(self, item_id: str) -> tuple[str, ...] | None:
        doc = self._docs.get(item_id)
        return doc[0][: doc[1]] if doc else None

    def _qlog(self, query: str, terms: list[str]) -> list[tantivy.Query]:
        """The qlog clauses: with ``expansion_all_terms`` one clause that needs *every* query term in
        the item's expansion (the query, or a reordering of it, led there before), else one per term.
        The expansions hold terms as typed (uncorrected): the uncorrected form is looked up too."""
        forms = [terms] + ([raw] if (raw := list(dict.fromkeys(analyze(query)))) != terms else [])
        if self.expansion_all_terms:
            return [
                tantivy.Query.boolean_query(
                    [(tantivy.Occur.Must, tantivy.Query.term_query(self._schema, "qlog", t)) for t in form]
                )
                for form in forms
                if form
            ]
        return [tantivy.Query.term_query(self._schema, "qlog", t) for t in dict.fromkeys(sum(forms, []))]

    def search(
        self,
        query: str,
        k: int,
        terms: list[str] | None = None,
        expansion_boost: float | None = None,
        term_weights: Mapping[str, float] | None = None,
        within: Collection[str] | None = None,
    ) -> list[LexicalHit]:
        """Best first; ``terms`` (from :meth:`query_terms`) skips analysing the query again;
        ``expansion_boost`` None = the index's own; ``within``: only these items (exact: the
        restriction is part of the tantivy query, scored 0)."""
        terms = self.query_terms(query) if terms is None else terms
        if not terms or k <= 0 or (within is not None and not within):
            return []
        q = self._query(query, terms, expansion_boost, term_weights)
        if within is not None:
            only = tantivy.Query.const_score_query(
                tantivy.Query.term_set_query(self._schema, "item_id", list(within)), 0.0
            )
            q = tantivy.Query.boolean_query([(tantivy.Occur.Must, q), (tantivy.Occur.Must, only)])
        return self._hits(terms, self._searcher, self._searcher.search(q, k, count=False).hits)

    def matches(self, query: str, limit: int, terms: list[str] | None = None) -> tuple[list[str], int]:
        """The best ``limit`` items the query matches at all, and how many it matches (facets)."""
        terms = self.query_terms(query) if terms is None else terms
        if not terms:
            return [], 0
        searcher = self._searcher
        found = searcher.search(self._query(query, terms, None, None), limit, count=True)
        total = found.count or 0  # type: ignore[attr-defined]  # tantivy's stubs omit count
        keys = searcher.fast_field_values("key", [address for _, address in found.hits]) if found.hits else []
        by_key = self._by_key
        return [item_id for key in keys if key is not None and (item_id := by_key.get(int(key)))], total

    def _query(
        self,
        query: str,
        terms: list[str],
        expansion_boost: float | None,
        term_weights: Mapping[str, float] | None,
    ) -> tantivy.Query:
        tw = term_weights or {}
        should = [
            (tantivy.Occur.Should, _boosted(tantivy.Query.term_query(self._schema, "text", t), tw.get(t, 1.0)))
            for t in terms
        ]
        boost = self.expansion_boost if expansion_boost is None else expansion_boost
        if boost > 0:
            should += [(tantivy.Occur.Should, tantivy.Query.boost_query(q, boost)) for q in self._qlog(query, terms)]
        return tantivy.Query.boolean_query(should)

    def _hits(self, terms: list[str], searcher: tantivy.Searcher, hits: list) -> list[LexicalHit]:
        keys = searcher.fast_field_values("key", [address for _, address in hits]) if hits else []
        out = []
        for (score, _), key in zip(hits, keys, strict=True):
            item_id = self._by_key.get(int(key)) if key is not None else None
            if item_id is None:  # a searcher loaded before a reload that retired its key
                continue
            doc = self._docs.get(item_id)
            matched = [t for t in terms if doc is not None and t in doc[0]]
            out.append(LexicalHit(item_id, float(score), matched))
        return out


def _boosted(q: tantivy.Query, boost: float) -> tantivy.Query:
    return q if boost == 1.0 else tantivy.Query.boost_query(q, boost)
