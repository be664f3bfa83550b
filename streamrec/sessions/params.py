"""Which session families there are.

Why a module of its own: the families, the candidate reader, the fixed fusion and the learned
fusion all read :data:`FAMILIES`, and the learned fusion's feature layout follows its order. Their
knobs are the ``recommend`` settings group (:class:`streamrec.settings.RecommendSettings`, env
``STREAMREC_RECOMMEND_*``), passed as they are; its ``weights`` name a weight for each family here.
"""

from __future__ import annotations

# The order is the learned fusion's feature layout: changing it changes ``learned.SCHEMA_ID``, and
# models fitted on the old layout are then set aside (serving keeps the fixed weights until refitted).
FAMILIES = ("repeat", "stan", "vsknn", "covis", "popular")
