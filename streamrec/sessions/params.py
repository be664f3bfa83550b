"""Which session families there are, and the knobs of the families and their fusion.

Why a module of its own: the families, the candidate reader, the fixed fusion and the learned
fusion all read these, and the learned fusion's feature layout follows :data:`FAMILIES`' order.
Why the knobs are read by name: each is the setting ``serving_rec_<knob>`` (the weights
``serving_rec_weight_<family>``), so :meth:`SessionParams._read` is the one place that maps
settings to knobs and the settings tree the one place that holds their defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from streamrec.settings import Settings, default

# The order is the learned fusion's feature layout: changing it changes ``learned.SCHEMA_ID``, and
# models fitted on the old layout are then set aside (serving keeps the fixed weights until refitted).
FAMILIES = ("repeat", "stan", "vsknn", "covis", "popular")
DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class SessionParams:
    """The knobs of the families and the fusion: ``Settings.serving_rec_<field>``, and
    ``weights[family]`` = ``Settings.serving_rec_weight_<family>`` (meanings: the settings)."""

    sample: int
    neighbours: int
    family_top_n: int
    stan_position_decay: float
    stan_neighbour_decay: float
    recency_days: float
    repeat_decay: float
    covis_decay: float
    weights: Mapping[str, float]

    @property
    def recency_ms(self) -> float:
        """STAN's neighbour recency tau, in event-time milliseconds."""
        return self.recency_days * DAY_MS

    @classmethod
    def from_settings(cls, s: Settings) -> SessionParams:
        """What this deployment is configured with (the environment included)."""
        return cls._read(lambda name: getattr(s, name))

    @classmethod
    def defaults(cls) -> SessionParams:
        """The settings tree's defaults, whatever the environment says (tests, offline benches)."""
        return cls._read(default)

    @classmethod
    def _read(cls, setting: Callable[[str], Any]) -> SessionParams:
        knobs = {f.name: setting(f"serving_rec_{f.name}") for f in fields(cls) if f.name != "weights"}
        return cls(**knobs, weights={family: setting(f"serving_rec_weight_{family}") for family in FAMILIES})
