"""Which session families there are, and the knobs of the families and their fusion.

Why a module of its own: the families, the candidate reader, the fixed fusion and the learned
fusion all read these, and the learned fusion's feature layout follows :data:`FAMILIES`' order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from streamrec.settings import Settings, default

# The order is the learned fusion's feature layout: changing it changes ``learned.SCHEMA_ID``, and
# models fitted on the old layout are then set aside (serving keeps the fixed weights until refitted).
FAMILIES = ("repeat", "stan", "vsknn", "covis", "popular")


@dataclass(frozen=True)
class SessionParams:
    """The knobs of the families and the fusion (``Settings.serving_rec_*``)."""

    sample: int = default("serving_rec_sample")
    neighbours: int = default("serving_rec_neighbours")
    family_top_n: int = default("serving_rec_family_top_n")
    stan_position_decay: float = default("serving_rec_stan_position_decay")
    stan_neighbour_decay: float = default("serving_rec_stan_neighbour_decay")
    recency_ms: float = default("serving_rec_recency_days") * 86_400_000.0
    repeat_decay: float = default("serving_rec_repeat_decay")
    covis_decay: float = default("serving_rec_covis_decay")
    weights: Mapping[str, float] = field(
        default_factory=lambda: {f: default(f"serving_rec_weight_{f}") for f in FAMILIES}
    )

    @classmethod
    def from_settings(cls, s: Settings) -> SessionParams:
        return cls(
            sample=s.serving_rec_sample,
            neighbours=s.serving_rec_neighbours,
            family_top_n=s.serving_rec_family_top_n,
            stan_position_decay=s.serving_rec_stan_position_decay,
            stan_neighbour_decay=s.serving_rec_stan_neighbour_decay,
            recency_ms=s.serving_rec_recency_days * 86_400_000.0,
            repeat_decay=s.serving_rec_repeat_decay,
            covis_decay=s.serving_rec_covis_decay,
            weights={f: getattr(s, f"serving_rec_weight_{f}") for f in FAMILIES},
        )
