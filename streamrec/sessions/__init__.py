"""Session recommendations: the next items for a shopper's current session, and why each is shown.

Why in the kernel: serving answers /recommend with it and the learner fits its learned fusion on
what serving logged, so both import it; it reads the online features only (``streamrec.features``).

The map, in the order a request goes through it:

- :mod:`~streamrec.sessions.params` — which families there are (``FAMILIES``); their knobs are
  the ``recommend`` settings group (``Settings.recommend``, env ``STREAMREC_RECOMMEND_*``).
- :mod:`~streamrec.sessions.candidates` — reads the session's items (the *prefix*, oldest first),
  the sampled neighbour sessions, co-visitation rows and trending from the feature store (Redis
  in serving, the replay twin offline) and scores every family.
- :mod:`~streamrec.sessions.families` — each family's scoring, pure functions over plain data.
- :mod:`~streamrec.sessions.fusion` — the fixed weighted fusion, the variants a request may ask
  for, and the reasons shown with each item.
- :mod:`~streamrec.sessions.learned` — the learned fusion: each pooled candidate's features, the
  online listwise model (``FusionModel``) with its scorecard and modes, and the pool log. The
  learner's join of a logged pool with the session's next click is ``learner/next_item.py``;
  ``serving/engine.py`` (``Engine.recommend``) puts it all together.

The families, for a prefix ``p`` of length ``t`` (formulas and neighbour similarities in ``families``):

- ``repeat``: the session's own items, ``decay^(steps back)`` per occurrence (a re-view is often
  the next click);
- ``stan`` (STAN) and ``vsknn`` (V-SKNN): what came after the shared items in the most similar
  recent sessions (similarity by shared items, their position in ``p`` and, for STAN, recency);
- ``covis``: the co-visitation rows of ``p``'s newest items, ``decay^(steps back)`` each;
- ``popular``: trending now (the cold start, and a tie-break).

The fixed fusion: each family keeps its best ``family_top_n`` items; the pool is their union, and

    score(x) = sum over families f of  w_f * s_f(x) / max_y s_f(y)

with ``s_f`` the family's scores in this request (0 where it does not score ``x``) and ``w_f`` the
setting ``recommend.weight_f``: dividing by the per-request best puts families of unrelated
scales on one scale, and the weights say how much each counts. Ties go by item id. Items the
request excludes (``exclude_seen``) or the index does not hold are dropped before the top-N cut.
A variant ``repeat``/``stan``/``vsknn``/``covis``/``popular`` is that family alone (weight 1);
``fused`` is the sum above; ``full`` is the sum, then the learned order when it has been earned,
then the ranking head and MMR at their /recommend settings.

When the learned order is served (variant ``full`` on a non-empty session): the setting
``recommend.learned_fusion`` is on, the current model snapshot carries a ``FusionModel``
of this feature schema, and its ``mode`` is not ``fixed``. The mode is chosen on the learner's
test-then-train scorecard, after ``FusionModel.MIN_EXAMPLES`` joined examples: among "learned"
(the learned scores order the whole pool) and "rerank" (they reorder only the fixed top
``RERANK_K``), the one with the best recent MRR@20 among those at least as good as the fixed
weights on both MRR@20 and HR@20 over the same examples; none qualifies, the fixed order is served.
Either way a logged ``full`` response stores the fixed order's best ``POOL_LOGGED`` candidates and
their features, which is what the learner learns from.
"""

from streamrec.sessions import candidates, families, fusion, learned, params

__all__ = ["candidates", "families", "fusion", "learned", "params"]
