"""The encoder with the real bundled model: shape, norm, batching, precision, any HF dir."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from streamrec.datasets import homedepot
from streamrec.encoder import Encoder, bundled_model_dir, content_hash, item_text, model_id_for, resolve_device
from streamrec.schemas import CatalogOp
from streamrec.settings import Settings


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_settings(Settings(encoder={"batch_size": 8}))


@pytest.fixture(scope="module")
def titles(data_dir) -> list[str]:
    return [op.title for op in homedepot.catalog(data_dir, limit=24)]


def test_vectors_are_unit_float32_in_input_order_whatever_the_batching(encoder, titles):
    v = encoder.encode(titles)
    assert v.shape == (len(titles), encoder.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([encoder.encode([t])[0] for t in titles[:6]])
    np.testing.assert_allclose(v[:6], one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)
    assert encoder.model_id == "all-MiniLM-L6-v2/fp32" == model_id_for(Settings())


def test_relevant_products_score_above_irrelevant_ones(encoder, data_dir):
    """Home Depot raters' labels: exact matches (3) should sit closer to the query than misses (1)."""
    labels = homedepot.relevance_labels(data_dir)
    titles = {op.item_id: op.title for op in homedepot.catalog(data_dir)}
    wins = trials = 0
    for query, graded in list(labels.items())[:120]:
        good = [titles[i] for i, r in graded.items() if r >= 3 and i in titles]
        bad = [titles[i] for i, r in graded.items() if r <= 1.34 and i in titles]
        if not good or not bad:
            continue
        q = encoder.encode([query])[0]
        scores = encoder.encode(good + bad) @ q
        wins += float(scores[: len(good)].mean() > scores[len(good) :].mean())
        trials += 1
    assert trials >= 10
    assert wins / trials > 0.7, f"exact matches beat misses in only {wins}/{trials} queries"


def test_int8_stays_close_to_fp32(encoder, titles):
    int8 = Encoder(precision="int8")
    assert int8.model_id == "all-MiniLM-L6-v2/int8"
    cos = np.sum(encoder.encode(titles) * int8.encode(titles), axis=1)
    assert cos.mean() > 0.95 and cos.min() > 0.85


def test_any_model_directory_works_and_bad_ones_say_why(tmp_path, titles, encoder):
    mine = tmp_path / "my-minilm"
    shutil.copytree(bundled_model_dir(), mine)
    other = Encoder.from_settings(Settings(encoder={"model_dir": mine}))
    assert other.model_id == "my-minilm/fp32"
    np.testing.assert_allclose(other.encode(titles[:4]), encoder.encode(titles[:4]), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="STREAMREC_ENCODER_MODEL_DIR"):
        Encoder(tmp_path)
    if resolve_device("auto") == "cpu":
        with pytest.raises(ValueError, match="needs a CUDA device"):
            Encoder(precision="fp16")


def test_item_text_drops_empty_fields_with_their_separator():
    template = "{title}. {category}. {description}"
    full = CatalogOp(
        op="upsert", item_id="1", ts=1_700_000_000_000, title="Drill", category="Tools", description="  20V\n cordless "
    )
    assert item_text(full, template) == "Drill. Tools. 20V cordless"
    bare = CatalogOp(op="upsert", item_id="1", ts=1_700_000_000_000, title="Drill", description="20V")
    assert item_text(bare, template) == "Drill. 20V"
    with pytest.raises(ValueError, match="unknown fields"):
        item_text(bare, "{title} {colour}")


def test_content_hash_names_text_and_model():
    assert content_hash("a", "m/fp32") == content_hash("a", "m/fp32")
    assert content_hash("a", "m/fp32") != content_hash("b", "m/fp32")
    assert content_hash("a", "m/fp32") != content_hash("a", "m/int8")
