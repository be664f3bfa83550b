"""Fake-click / bot filter thresholds (env ``STREAMREC_BOT_*``).

The decision runs inside the atomic feature write (``streamrec/features/apply.lua``) on event time,
so a replay after a crash decides exactly as the first attempt did. An event is quarantined when:

* ``duplicate_event``: its ``event_id`` is among the user's last ``dedup_lookback`` events
  (a producer retry or a replayed log — counted once, never twice);
* ``rapid_repeat``: the same user repeats the same item and type less than ``repeat_gap_ms`` after
  the previous event;
* ``user_burst``: the user sends more than ``user_limit`` events in one ``window_s`` window;
* ``item_burst``: an item receives more than ``item_limit`` interactions in one window.

Windows are tumbling on event time (``ts // window``), one slot per user / item kept in its feature
hash (``rl:b``, ``rl:n``); they only move forward, so an event older than the current window is not
rate-limited. Events caught as duplicates or repeats do not count towards the rates.

Quarantined events go to ``settings.topic.quarantine`` and feed no feature; the learner can ask
``FeatureStore.is_quarantined(event_id)``.
"""

from __future__ import annotations

REASONS = ("duplicate_event", "rapid_repeat", "user_burst", "item_burst")
