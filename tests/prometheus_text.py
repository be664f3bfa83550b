"""Reading a ``/metrics`` page in tests with prometheus_client's own parser, not by splitting lines
(which breaks on label values holding spaces, escapes or a sample's timestamp)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_sum(metrics_text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (a counter's ``…_total``, a histogram's ``…_count``)
    whose labels include ``labels``; 0 when there are none."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )
