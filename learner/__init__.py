"""The learner service: labelled impressions → an online multi-task ranking head → model snapshots.

Data flow, one module each:
``joiner`` (impressions × click/cart/purchase by request_id, windows) → ``pipeline`` (feature rows:
served or recomputed with ``streamrec.ranking``; ``negatives`` for logs without impressions) →
``online`` (prequential scoring via ``evaluation``, ``drift`` detectors, champion/challenger over
``estimator``) → ``guard`` (automatic rollback) → ``streamrec.model_store``. ``service`` is the thin
Kafka loop around them with its ``checkpoint``; ``replay`` and ``experiments`` drive the same core
from public logs for tests and ``bench/learner.py``.
"""
