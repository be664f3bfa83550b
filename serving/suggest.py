"""Autocomplete (GET /suggest): completions learned from what shoppers searched and then chose.

Where they come from: the feature writer adds a search's text to ``P:suggest`` each time a click,
add to cart or purchase follows it (``streamrec/features/apply.lua``; weighted and decayed like
trending). Quarantined bot traffic never reaches the writer, and a search that returned nothing
cannot be followed by a click, so neither is ever suggested. This follower reads the top
``features.suggest_cap`` every ``search.suggest_poll_s`` and answers from memory:

- **prefix**: texts starting with what was typed, best score first (bisect over the sorted texts;
  the best of every one- and two-character prefix precomputed, as those ranges are long);
- **word starts**: texts where a later word starts with it ("pipe" also finds "copper pipe");
- **typos**: when too few match, each word is replaced by the suggestions' nearest word within one
  edit (a deletion neighbourhood, as SymSpell does; the last, partial word as a prefix or with one
  edit) and the corrected text says so;
- **duplicates**: texts with one query key (word order, plurals, units) show once, the best.

>>> s = Suggestions.build([("copper pipe", 9.0), ("copper pipes", 2.0), ("pipe cutter", 4.0), ("garden hose", 3.0)])
>>> [t for t, _ in s.complete("cop", 5)[0]]
['copper pipe']
>>> [t for t, _ in s.complete("pipe", 5)[0]]
['pipe cutter', 'copper pipe']
>>> s.complete("gardn h", 5)
([('garden hose', 3.0)], 'garden h')
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import TTLCache

from serving.polling import Follower
from streamrec.analysis import query_key, suggestion_text

SHORT = 2  # prefixes up to this long are answered from a precomputed best list
KEEP_SHORT = 20
MIN_WORD = 3  # shorter words are not corrected (too many neighbours one edit away)


class SuggestionSource(Protocol):
    """What the follower reads (``FeatureStore`` has it, and its replay twin)."""

    def suggestions(self, n: int = 20, category: str | None = None) -> list[tuple[str, float]]: ...


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


@dataclass
class Suggestions:
    """One immutable snapshot of the suggestions, swapped whole by the follower."""

    texts: list[str] = field(default_factory=list)  # sorted
    score: dict[str, float] = field(default_factory=dict)
    later_words: list[tuple[str, str]] = field(default_factory=list)  # (text from its 2nd+ word, text), sorted
    short: dict[str, list[str]] = field(default_factory=dict)  # prefix (≤ SHORT chars) -> best texts
    words: dict[str, float] = field(default_factory=dict)  # word -> the best score of a text using it
    neighbours: dict[str, list[str]] = field(default_factory=dict)  # deletion variant -> words

    @classmethod
    def build(cls, ranked: Iterable[tuple[str, float]]) -> Suggestions:
        best: dict[str, tuple[float, str]] = {}
        for text, sc in ranked:
            if not text:
                continue
            k = query_key(text) or text
            if k not in best or sc > best[k][0]:
                best[k] = (sc, text)
        s = cls()
        s.score = {text: sc for sc, text in best.values()}
        s.texts = sorted(s.score)
        by_score = sorted(s.score, key=lambda t: (-s.score[t], t))
        for text in by_score:
            for n in range(1, SHORT + 1):
                if len(text) >= n:
                    row = s.short.setdefault(text[:n], [])
                    if len(row) < KEEP_SHORT:
                        row.append(text)
            parts = text.split(" ")
            for i, word in enumerate(parts):
                if word not in s.words:
                    s.words[word] = s.score[text]
                if i > 0:
                    s.later_words.append((" ".join(parts[i:]), text))
        s.later_words.sort()
        for word in s.words:
            if len(word) >= MIN_WORD:
                for variant in _deletes(word) | {word}:
                    s.neighbours.setdefault(variant, []).append(word)
        return s

    def __len__(self) -> int:
        return len(self.texts)

    def complete(self, typed: str, k: int) -> tuple[list[tuple[str, float]], str | None]:
        """The best ``k`` completions of ``typed``, and the corrected text when typos were fixed."""
        text = suggestion_text(typed)
        if not text or k <= 0:
            return [], None
        found = self._matches(text, k)
        if len(found) >= k:
            return found, None
        fixed = self._corrected(text, ends_word=typed.endswith(" "))
        if fixed is None or fixed == text:
            return found, None
        more = [m for m in self._matches(fixed, k) if m not in found]
        return (found + more)[:k], fixed if more else None

    def _matches(self, text: str, k: int) -> list[tuple[str, float]]:
        if len(text) <= SHORT:
            starts = self.short.get(text, [])
        else:
            lo = bisect.bisect_left(self.texts, text)
            hi = bisect.bisect_left(self.texts, text + "\uffff")
            starts = heapq.nsmallest(k, self.texts[lo:hi], key=lambda t: (-self.score[t], t))
        out = [(t, self.score[t]) for t in starts[:k]]
        if len(out) < k:
            lo = bisect.bisect_left(self.later_words, (text,))
            hi = bisect.bisect_left(self.later_words, (text + "\uffff",))
            seen = {t for t, _ in out}
            inner = {t for _, t in self.later_words[lo:hi] if t not in seen}
            out += [(t, self.score[t]) for t in heapq.nsmallest(k - len(out), inner, key=lambda t: (-self.score[t], t))]
        return out

    def _corrected(self, text: str, ends_word: bool) -> str | None:
        words = text.split(" ")
        complete, partial = (words, None) if ends_word else (words[:-1], words[-1])
        fixed = [self._nearest(w) or w for w in complete]
        if partial is not None:
            starts = bisect.bisect_left(self.texts, partial) < len(self.texts) and any(
                w.startswith(partial) for w in self.words
            )
            fixed.append(partial if starts else (self._nearest(partial) or partial))
        return " ".join(fixed)

    def _nearest(self, word: str) -> str | None:
        """The suggestions' most used word within one edit of ``word`` (itself when known)."""
        if word in self.words or len(word) < MIN_WORD:
            return None
        candidates = {w for v in _deletes(word) | {word} for w in self.neighbours.get(v, ())}
        return max(candidates, key=lambda w: (self.words[w], w)) if candidates else None


class SuggestFollower(Follower):
    """Reads the suggestions every ``poll_s`` and answers /suggest from the last snapshot; a
    category's (a few hundred each, of many categories) are read when asked and kept ``poll_s``."""

    what = "suggestions"

    def __init__(self, source: SuggestionSource, cap: int, poll_s: float = 1.0, categories_kept: int = 256):
        super().__init__(poll_s, "suggest-follower")
        self.source = source
        self.cap = cap
        self.current = Suggestions()
        self._by_category: TTLCache[str, Suggestions] = TTLCache(maxsize=categories_kept, ttl=poll_s)
        self._lock = threading.Lock()

    def poll(self) -> int:
        self.current = Suggestions.build(self.source.suggestions(self.cap))
        return len(self.current)

    def within(self, category: str) -> Suggestions:
        """The suggestions of ``category`` (a Redis read at most every ``poll_s`` per category)."""
        with self._lock:
            found = self._by_category.get(category)
        if found is None:
            found = Suggestions.build(self.source.suggestions(self.cap, category))
            with self._lock:
                self._by_category[category] = found
        return found
