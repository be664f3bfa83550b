"""Bounded exploration of a search's result page, at random on a small share of logged searches.

Why: shoppers only click what they are shown, so a relevant product just below the page never
earns a click; and they click the top more whatever is there, so how much more (position bias)
must be measured on the shop's own traffic, not assumed. Two interventions, at most one per page:

* **insert** (``explore_share``): a product ranked just below the page (k+1 … 3k, uniformly) takes
  a slot drawn uniformly from positions 4–k (1-based); the results below it move down one and the
  last one leaves the page. Its cost is bounded: one of the lower slots, on a share of searches.
* **swap** (``swap_share``): the results at two adjacent positions j and j+1 (j uniform) trade
  places, and the impression says so (``Event.swapped``): the same ranked products are then seen
  at both positions, at random, which is what the learner's position-bias estimate compares
  (``learner/position_bias.py``).

>>> import random, numpy as np
>>> final = np.linspace(1, 0, 30)
>>> order, e = explore(list(range(10)), final, 10, random.Random(3), explore_share=1.0, swap_share=0.0)
>>> e.inserted is not None and 3 <= e.inserted < 10 and len(order) == 10 and order[e.inserted] >= 10
True
>>> order, e = explore(list(range(10)), final, 10, random.Random(3), explore_share=0.0, swap_share=1.0)
>>> j = e.swapped; (order[j], order[j + 1]) == (j + 1, j)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

FIRST_EXPLORED_SLOT = 3  # 0-based: positions 4..k take the explored product, the top three never


@dataclass(frozen=True)
class Exploration:
    inserted: int | None = None  # 0-based page position of the product shown to explore
    swapped: int | None = None  # the results at this position and the next were swapped


def explore(
    order: list[int], final: np.ndarray, k: int, rng: random.Random, explore_share: float, swap_share: float
) -> tuple[list[int], Exploration]:
    """The page ``order`` (candidate indices, best first) after at most one random intervention."""
    u = rng.random()
    if u < explore_share and len(order) > FIRST_EXPLORED_SLOT:
        shown = set(order)
        below = [int(j) for j in np.argsort(-final, kind="stable") if int(j) not in shown][: 2 * k]
        if below:
            slot = rng.randrange(FIRST_EXPLORED_SLOT, min(k, len(order) + 1))
            page = order[:slot] + [rng.choice(below)] + order[slot:]
            return page[:k], Exploration(inserted=slot)
    elif u < explore_share + swap_share and len(order) >= 2:
        j = rng.randrange(len(order) - 1)
        page = list(order)
        page[j], page[j + 1] = page[j + 1], page[j]
        return page, Exploration(swapped=j)
    return order, Exploration()
