"""Serving's query encoder with the real bundled model: each runtime lands in the items' vector
space, the ONNX file is built once and reused, and the LRU of recent queries."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.datasets import homedepot
from streamrec.encoder import Encoder
from streamrec.query_encoder import QueryEncoder
from streamrec.settings import Settings


@pytest.fixture(scope="module")
def items() -> Encoder:
    return Encoder.from_settings(Settings())


@pytest.fixture(scope="module")
def queries(data_dir) -> list[str]:
    return list(homedepot.relevance_labels(data_dir))[:40]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("query-encoder-builds")


@pytest.mark.parametrize(("runtime", "mean_cos", "min_cos"), [("onnx", 0.9999, 0.9999), ("onnx-int8", 0.98, 0.95)])
def test_onnx_runtimes_embed_queries_where_the_items_encoder_does(
    items, queries, build_dir, runtime, mean_cos, min_cos
):
    q = QueryEncoder.from_settings(Settings(encoder={"query_runtime": runtime, "onnx_dir": build_dir / "encoders"}))
    assert q.model_id == f"all-MiniLM-L6-v2/fp32+{runtime}" and q.dim == items.dim
    fast = np.stack([q.encode_query(text) for text in queries])
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-4)
    cos = np.sum(fast * items.encode(queries), axis=1)
    assert cos.mean() > mean_cos and cos.min() > min_cos, (cos.mean(), cos.min())


def test_the_onnx_file_is_built_once_per_model_and_reused(build_dir):
    s = Settings(encoder={"query_runtime": "onnx-int8", "onnx_dir": build_dir / "encoders"})
    QueryEncoder.from_settings(s)
    built = sorted((build_dir / "encoders").glob("*.onnx"))
    assert sorted(p.name.endswith(".int8.onnx") for p in built) == [False, True]  # the fp32 export and its int8
    stamps = [p.stat().st_mtime_ns for p in built]
    QueryEncoder.from_settings(s)  # a second start (or worker) loads what the first built
    assert [p.stat().st_mtime_ns for p in built] == stamps
    assert not list((build_dir / "encoders").glob("*.tmp"))


def test_an_item_encoder_that_is_not_fp32_on_cpu_embeds_its_own_queries(tmp_path):
    q = QueryEncoder.from_settings(
        Settings(encoder={"precision": "int8", "query_runtime": "onnx-int8", "onnx_dir": tmp_path / "encoders"})
    )
    assert q.model_id == "all-MiniLM-L6-v2/int8" and not (tmp_path / "encoders").exists()


def test_query_embeddings_are_cached_read_only_and_the_least_recently_used_go(items):
    small = QueryEncoder(items.encode, items.model_id, items.dim, cache_size=2)
    a, b = small.encode_query("drill"), small.encode_query("hammer")
    assert not a.flags.writeable
    assert small.encode_query("drill") is a  # now the most recently used
    small.encode_query("saw")  # a third query: "hammer" goes
    assert small.encode_query("drill") is a
    assert small.encode_query("hammer") is not b
    off = QueryEncoder(items.encode, items.model_id, items.dim, cache_size=0)
    v = off.encode_query("drill")
    assert not v.flags.writeable and off.encode_query("drill") is not v
    np.testing.assert_allclose(v, a, atol=1e-6)
