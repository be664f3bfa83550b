"""What a request may narrow its results to, and what an item must be to pass.

The semantics live here once: ``Filter.admits`` says whether one item passes, and
``columns.CatalogColumns`` evaluates the same conditions over the whole catalogue at once (the
tests hold the two to a brute-force reference).

- ``category``: the item's category path equals it or lies below it ("Tools" admits
  "Tools > Drills"); levels are compared with the spaces around ``>`` ignored.
- ``brand``: any of the listed brands (exact).
- ``price_min`` / ``price_max``: inclusive; an item without a price fails either bound.
- ``availability``: in stock, out of stock, or any (unset: the shop's ``catalog.default_availability``).
- ``attributes``: ``name:value`` (keyword, or a number compared as a number) or ``name:lo..hi``
  (numbers, either end open); conditions on one attribute are alternatives (any may hold), those
  on different attributes must all hold. A keyword-list attribute passes when any of its values does.

>>> f = Filter.parse(category="Tools", brand=["Bosch"], attr=["volts:12..18", "colour:blue"])
>>> attributes = {"volts": 18.0, "colour": "blue"}
>>> meta = ItemMeta(title="Drill", category="Tools > Drills", brand="Bosch", attributes=attributes)
>>> f.admits(meta, default_availability="in_stock")
True
>>> f.admits(replace(meta, in_stock=False), default_availability="in_stock")
False
"""

from __future__ import annotations

import math
import re
from dataclasses import replace  # noqa: F401  (the doctest)
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from streamrec.analysis import category_key, category_levels
from streamrec.vector_index import ItemMeta

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"(?P<lo>{_NUMBER})?\.\.(?P<hi>{_NUMBER})?")
ATTR_PATTERN = r"^[A-Za-z0-9_.-]+:.+$"  # what an attr condition looks like (the API checks it)
Availability = Literal["in_stock", "out_of_stock", "any"]
ATTRIBUTE_FIELDS = ("category", "brand", "price", "availability")  # the fixed facets; attributes by name


class AttributeCondition(BaseModel):
    """One ``attr=`` condition: a keyword or number equal to ``value``, or a number in [lo, hi]."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: str | None = None
    lo: float | None = None
    hi: float | None = None

    @classmethod
    def parse(cls, text: str) -> AttributeCondition:
        """``name:value``, or ``name:lo..hi`` where an end may be empty (``weight:..2.5``); a value
        that is not such a range of numbers is a keyword."""
        name, sep, rest = text.partition(":")
        if not sep or not name.strip() or rest == "":
            raise ValueError(f"attr {text!r}: expected name:value or name:lo..hi")
        found = _RANGE.fullmatch(rest.strip())
        if found and (found["lo"] or found["hi"]):
            lo, hi = (float(v) if v else None for v in (found["lo"], found["hi"]))
            return cls(name=name.strip(), lo=lo, hi=hi)
        return cls(name=name.strip(), value=rest)

    @property
    def is_range(self) -> bool:
        return self.value is None

    def number(self) -> float | None:
        """The value read as a number, when it is one (``volts:18`` matches the number 18)."""
        if self.value is None:
            return None
        try:
            v = float(self.value)
        except ValueError:
            return None
        return v if math.isfinite(v) else None

    def holds(self, have: str | float | list[str] | None) -> bool:
        if have is None:
            return False
        if self.is_range:
            if isinstance(have, (str, list)):
                return False
            return (self.lo is None or have >= self.lo) and (self.hi is None or have <= self.hi)
        if isinstance(have, list):
            return self.value in have
        if isinstance(have, str):
            return have == self.value
        return have == self.number()


class Filter(BaseModel):
    """A request's filters (all must hold); the empty filter admits what availability admits."""

    model_config = ConfigDict(frozen=True)

    category: str | None = Field(None, description="a category path: the category and everything below it")
    brand: tuple[str, ...] = ()
    price_min: float | None = Field(None, ge=0, allow_inf_nan=False)
    price_max: float | None = Field(None, ge=0, allow_inf_nan=False)
    availability: Availability | None = None
    attributes: tuple[AttributeCondition, ...] = ()

    @field_validator("category")
    @classmethod
    def _normalised(cls, v: str | None) -> str | None:
        """A path without any level (empty, or only separators) is no category filter, like an unset one."""
        levels = category_levels(v) if v is not None else ()
        return category_key(levels) if levels else None

    @classmethod
    def parse(
        cls,
        category: str | None = None,
        brand: list[str] | None = None,
        price_min: float | None = None,
        price_max: float | None = None,
        availability: Availability | None = None,
        attr: list[str] | None = None,
    ) -> Filter:
        """From query parameters; raises ValueError with what is wrong. A price_min above price_max
        admits nothing, as a range query would."""
        return cls(
            category=category,
            brand=tuple(dict.fromkeys(brand or ())),
            price_min=price_min,
            price_max=price_max,
            availability=availability,
            attributes=tuple(AttributeCondition.parse(a) for a in attr or ()),
        )

    def availability_or(self, default: Availability) -> Availability:
        return self.availability or default

    def by_attribute(self) -> dict[str, list[AttributeCondition]]:
        out: dict[str, list[AttributeCondition]] = {}
        for c in self.attributes:
            out.setdefault(c.name, []).append(c)
        return out

    def narrows(self, default_availability: Availability) -> bool:
        """False when nothing but "any" availability is asked: every item passes."""
        return bool(
            self.category
            or self.brand
            or self.price_min is not None
            or self.price_max is not None
            or self.attributes
            or self.availability_or(default_availability) != "any"
        )

    def admits(self, meta: ItemMeta, default_availability: Availability) -> bool:
        """One item against every condition (the per-item form of the column evaluation)."""
        return all(self.holds(meta, facet, default_availability) for facet in self.facets_used())

    def facets_used(self) -> list[str]:
        """The conditions present, by facet name (``attr.<name>`` for attributes), availability always."""
        used = [f for f in ("category", "brand") if getattr(self, f)]
        if self.price_min is not None or self.price_max is not None:
            used.append("price")
        used.append("availability")
        return used + [f"attr.{name}" for name in self.by_attribute()]

    def holds(self, meta: ItemMeta, facet: str, default_availability: Availability) -> bool:
        """Whether the item passes the condition on ``facet`` (true when there is none)."""
        if facet == "category":
            if self.category is None:
                return True
            want = category_levels(self.category)
            return meta.category is not None and category_levels(meta.category)[: len(want)] == want
        if facet == "brand":
            return not self.brand or meta.brand in self.brand
        if facet == "price":
            if self.price_min is None and self.price_max is None:
                return True
            if meta.price is None:
                return False
            return (self.price_min is None or meta.price >= self.price_min) and (
                self.price_max is None or meta.price <= self.price_max
            )
        if facet == "availability":
            wanted = self.availability_or(default_availability)
            return wanted == "any" or meta.available == (wanted == "in_stock")
        name = facet.removeprefix("attr.")
        conditions = self.by_attribute().get(name)
        return not conditions or any(c.holds(meta.attributes.get(name)) for c in conditions)
