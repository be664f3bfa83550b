"""Online features in Redis: one layout, written by ``consumers/`` and read by learner and serving.

The map (each concern is one module; everything public is re-exported here, so
``from streamrec.features import FeatureStore, Keys, ...`` is the import to use:

==================  ================================================================================
``layout.py``       the key layout: :class:`Keys`, the key table (what each key holds, its decay,
                    cap and TTL), each key family's bound (:data:`FAMILIES`, which
                    ``streamrec/memory.py`` audits), ``SEP``, ``INTERACTIONS``, ``session_token``
``decay.py``        the decay maths: lazy decay (``decay``, ``merge_decayed``) and trending's forward
                    decay with its landmark (``forward``, ``needs_rescale``, ``landmark_scale``)
``apply.lua``       the writer script: one atomic call per Kafka partition batch applies every
                    feature write and advances the partition's offset
``writer.py``       what the script is given: ``APPLY_LUA``, :func:`script_config` (every constant
                    it uses), the records it applies (``encode_record``), ``expansion_terms``
``reader.py``       :class:`FeatureStore` (the Redis reads) and the dataclasses it returns
``neighbours.lua``  the session-kNN sample, a read-only script of the reader
``sharded.py``      :class:`ShardedFeatureStore`: the reader's answers merged over the keyspaces of a
                    Redis Cluster (``docs/REDIS-CLUSTER.md``); :func:`open_features` picks the reader
``replay.py``       :class:`ReplayFeatures`, the in-memory twin of the script with the reader's API
                    (replays and tests; ``tests/test_feature_parity.py`` holds the two together)
==================  ================================================================================

The knobs (decay half-lives, caps, TTLs, type weights, CTR prior) are the ``features`` settings
group, ``FeatureSettings`` in ``streamrec/settings.py``: ``Settings.features``, env ``STREAMREC_FEATURE_*``.

Adding a feature: the steps.

1. This package: the key and its bound in ``layout.py`` (a :data:`FAMILIES` entry, a :class:`Keys`
   method, a row of the key table), the write rule in ``apply.lua`` (its constants through
   :func:`script_config`; a new knob goes in ``FeatureSettings``), the read in ``reader.py`` and
   the same rule and read in the twin ``replay.py``, and its merge in ``sharded.py``; the parity
   test then covers it.
2. ``streamrec/ranking.py`` if the ranking head reads it (``FeatureSource`` and the assembler).
3. ``bench/feature_reference.py``, the independent oracle of the fault test: a second, separate
   statement of the rule (it must not reuse this package's code, or it would check nothing).

The README's key-family table (ops read it; ``tests/test_memory.py`` checks it names every family)
copies ``layout.py``'s bounds.
"""

from streamrec.features.decay import TRENDING_RESCALE, decay, forward, landmark_scale, merge_decayed, needs_rescale
from streamrec.features.layout import (
    FAMILIES,
    INTERACTIONS,
    QUARANTINE_RECENT_N,
    SEP,
    SESSION_TOKEN,
    TTL_REFRESH_S,
    KeyFamily,
    Keys,
    session_token,
)
from streamrec.features.reader import (
    NEIGHBOURS_LUA,
    CurrentSession,
    FeatureStore,
    ItemStats,
    RecentItem,
    RowReads,
    SessionView,
    current_session,
    sample_sessions,
)
from streamrec.features.replay import ReplayFeatures
from streamrec.features.sharded import ShardedFeatureStore, open_features
from streamrec.features.writer import APPLY_LUA, encode_record, expansion_terms, script_config, script_source

__all__ = [
    "APPLY_LUA",
    "FAMILIES",
    "INTERACTIONS",
    "NEIGHBOURS_LUA",
    "QUARANTINE_RECENT_N",
    "SEP",
    "SESSION_TOKEN",
    "TRENDING_RESCALE",
    "TTL_REFRESH_S",
    "CurrentSession",
    "FeatureStore",
    "ItemStats",
    "KeyFamily",
    "Keys",
    "RecentItem",
    "RowReads",
    "ReplayFeatures",
    "SessionView",
    "ShardedFeatureStore",
    "current_session",
    "decay",
    "encode_record",
    "expansion_terms",
    "forward",
    "landmark_scale",
    "merge_decayed",
    "needs_rescale",
    "open_features",
    "sample_sessions",
    "script_config",
    "script_source",
    "session_token",
]
