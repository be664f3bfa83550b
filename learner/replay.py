"""Offline replay: drive the online-learning core from a list of events, without Kafka or Redis.

Why: tests and benchmarks on public logs must run in seconds, and must exercise the *same*
example building (:class:`ExampleBuilder`) and feature code (:class:`FeatureAssembler`) as the
service. The features come from :class:`~streamrec.features.ReplayFeatures`, the in-memory twin of
the Redis writer (``streamrec/features/replay.py``), updated by :meth:`ReplayFeatures.observe`
*after* each event's examples were built — so a row never sees its own label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from learner.examples import Example
from learner.joiner import LabelJoiner
from learner.online import OnlineLearner, StepReport
from learner.pipeline import ExampleBuilder
from streamrec.features import ReplayFeatures
from streamrec.ranking import FeatureAssembler
from streamrec.schemas import Event


@dataclass
class ReplayLog:
    """Per click-labelled example, in learning order: the champion's pre-learning score and label."""

    p_click: list[float] = field(default_factory=list)
    click: list[float] = field(default_factory=list)
    stream_index: list[int] = field(default_factory=list)  # stream index of the example's impression
    item_ids: list[str] = field(default_factory=list)
    detections: list = field(default_factory=list)  # (stream_index, Detection)
    promotions: list[int] = field(default_factory=list)  # stream indices
    challenger_starts: list[int] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.p_click), np.array(self.click), np.array(self.stream_index)


def replay(
    events: Iterable[Event],
    core: OnlineLearner,
    features: ReplayFeatures,
    vectors: Callable[[str], np.ndarray | None],
    *,
    window_s: float = 60.0,
    batch_size: int = 64,
    on_event: Callable[[int, Event], None] | None = None,
    on_step: Callable[[list[Example], StepReport], None] | None = None,
) -> ReplayLog:
    """Feed ``events`` through join → features → prequential step; returns what was predicted."""
    joiner = LabelJoiner(window_s, clock=lambda: 0.0)  # event time only: replay speed does not matter
    builder = ExampleBuilder(joiner, FeatureAssembler(features, vectors))
    log = ReplayLog()
    ready: list[tuple[int, Example]] = []
    shown_at: dict[str, int] = {}  # request_id → stream index of its impression

    def step(chunk: list[tuple[int, Example]]) -> None:
        examples = [e for _, e in chunk]
        report = core.step(examples)
        if on_step is not None:
            on_step(examples, report)
        last = chunk[-1][0]
        for (idx, ex), p in zip(chunk, report.p_click, strict=True):
            if ex.click is not None:
                log.p_click.append(float(p))
                log.click.append(ex.click)
                log.stream_index.append(shown_at.get(ex.request_id, idx))
                log.item_ids.append(ex.item_id)
        log.detections.extend((last, d) for d in report.detections)
        if report.challenger_started:
            log.challenger_starts.append(last)
        if report.promoted:
            log.promotions.append(last)

    idx = -1
    for idx, ev in enumerate(events):
        if on_event is not None:
            on_event(idx, ev)
        if ev.type == "impression":
            assert ev.request_id is not None  # an impression has one (Event's validator)
            shown_at[ev.request_id] = idx
        ready.extend((idx, ex) for ex in builder.feed(ev))
        features.observe(ev)
        ready.extend((idx, ex) for ex in builder.expire())
        while len(ready) >= batch_size:
            step(ready[:batch_size])
            ready = ready[batch_size:]
    ready.extend((idx, ex) for ex in builder.expire(flush_all=True))
    for k in range(0, len(ready), batch_size):
        step(ready[k : k + batch_size])
    return log
