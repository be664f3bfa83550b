"""Position bias, estimated online from serving's random adjacent swaps.

Why: shoppers click the top of a page more whatever is there, so a click count says as much about
where a product was shown as about the product. Under the position-based model a click at 0-based
position k needs an examination, with probability ``theta(k) = (1 / (k + 1)) ** eta``; clicks are
corrected by dividing by ``theta`` (the click memory's examinations, the search scorecard's
inverse-propensity weights), so ``eta`` must be the shop's own.

How: serving swaps the results at positions j and j + 1 at random on a share of searches
(``Event.swapped``). Take the products the ranking put at j: on unswapped pages they are seen at j,
on swapped ones at j + 1, and nothing else differs. Given how many of their clicks there were in
all, the share that came from the swapped pages depends only on ``theta(j + 1) / theta(j)`` and the
page counts, not on how attractive those products are, and the same holds for the products ranked
j + 1. ``eta`` maximises that conditional likelihood over every j, plus a normal prior around
``prior_eta`` (1.0, Joachims et al. 2017's estimate for search results), so a new shop starts
there and moves as swaps accumulate.

>>> import random
>>> pb, rng = PositionBias(prior_weight=1.0), random.Random(0)
>>> for _ in range(60_000):  # pages whose j-th product is clicked with 0.5 * theta(position), true eta 0.6
...     j, swapped = rng.randrange(9), rng.random() < 0.2
...     seen = [j + 1, j] if swapped else [j, j + 1]
...     clicks = [rng.random() < 0.5 * (1 / (pos + 1)) ** 0.6 for pos in seen]
...     pb.observe_pair(j, swapped, clicks[0], clicks[1])
>>> round(pb.eta(), 1)
0.6
"""

from __future__ import annotations

import numpy as np

from learner.joiner import PendingImpression

MAX_POSITION = 20  # swaps below this 0-based position are counted (a page of 10, a second page)
_GRID = np.linspace(0.0, 3.0, 301)


def examination(position: int | np.ndarray, eta: float) -> float | np.ndarray:
    """theta(k) = (1 / (k + 1)) ** eta for a 0-based position k."""
    return (1.0 / (np.asarray(position) + 1.0)) ** eta


class PositionBias:
    def __init__(self, prior_eta: float = 1.0, prior_weight: float = 4.0):
        """``prior_weight``: the prior's strength, as 1 / variance of eta (4 = a standard deviation of 0.5)."""
        self.prior_eta, self.prior_weight = prior_eta, prior_weight
        # per 0-based position j: clicks and pages of the product ranked j shown at j (unswapped) or at
        # j + 1 (swapped), and of the product ranked j + 1 shown at j + 1 or at j
        self.counts = np.zeros((MAX_POSITION, 8), dtype=np.float64)
        self._eta: float | None = None

    def observe(self, p: PendingImpression) -> None:
        """A closed search impression: its adjacent pairs, swapped or not."""
        if not p.event.query:
            return
        items = p.item_ids
        offset = p.event.position or 0
        swapped = p.event.swapped
        for k in range(min(len(items) - 1, MAX_POSITION - offset)):
            j = offset + k
            if j >= MAX_POSITION:
                break
            is_swap = swapped == k
            if swapped is not None and not is_swap and abs(swapped - k) <= 1:
                continue  # a pair touching the swapped one is not at its ranked positions
            # shown order at (k, k + 1); the ranked order is the reverse when swapped
            first, second = items[k] in p.clicked, items[k + 1] in p.clicked
            ranked_j_click, ranked_j1_click = (second, first) if is_swap else (first, second)
            self.observe_pair(j, is_swap, ranked_j_click, ranked_j1_click)

    def observe_pair(self, j: int, swapped: bool, ranked_j_clicked: bool, ranked_j1_clicked: bool) -> None:
        """The products ranked j and j + 1 on one page, shown swapped or not, and their clicks."""
        row = self.counts[j]
        if swapped:
            row[2] += ranked_j_clicked  # ranked j, seen at j + 1
            row[3] += 1
            row[6] += ranked_j1_clicked  # ranked j + 1, seen at j
            row[7] += 1
        else:
            row[0] += ranked_j_clicked  # ranked j, seen at j
            row[1] += 1
            row[4] += ranked_j1_clicked  # ranked j + 1, seen at j + 1
            row[5] += 1
        self._eta = None

    def eta(self) -> float:
        """The posterior mode of eta on a grid of 0.01 (cached until the next observation)."""
        if self._eta is None:
            self._eta = float(_GRID[int(np.argmax(self._log_posterior(_GRID)))])
        return self._eta

    def swapped_pages(self) -> int:
        return int(self.counts[:, 3].sum())

    def _log_posterior(self, etas: np.ndarray) -> np.ndarray:
        out = -0.5 * self.prior_weight * (etas - self.prior_eta) ** 2
        for j, (c_a, n_a, c_b, n_b, c_d, n_d, c_c, n_c) in enumerate(self.counts):
            if n_b == 0:  # no swap at j yet: nothing to compare
                continue
            r = ((j + 1.0) / (j + 2.0)) ** etas  # theta(j + 1) / theta(j)
            # of the clicks on products ranked j, the share from swapped pages (seen at j + 1)
            pi = r * n_b / (n_a + r * n_b)
            out = out + c_b * np.log(pi) + c_a * np.log1p(-pi)
            # of the clicks on products ranked j + 1, the share from swapped pages (seen at j)
            pi2 = n_c / (n_c + r * n_d)
            out = out + c_c * np.log(pi2) + c_d * np.log1p(-pi2)
        return out

    def state(self) -> dict:
        return {"prior_eta": self.prior_eta, "prior_weight": self.prior_weight, "counts": self.counts.tolist()}

    def load_state(self, st: dict) -> None:
        counts = np.asarray(st["counts"], dtype=np.float64)
        self.counts[: counts.shape[0]] = counts[:MAX_POSITION]
        self._eta = None

    def summary(self) -> dict:
        return {"eta": round(self.eta(), 3), "swapped_pages": self.swapped_pages()}


def ips_weight(position: int, eta: float, cap: float = 20.0) -> float:
    """1 / theta(position), capped: a click far down the page counts more, but not without bound."""
    return min(cap, (position + 1.0) ** eta)
