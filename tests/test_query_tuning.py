"""The encoder's query side learns from search clicks (learner/query_tuning.py), is published only
when it ranks held-out queries' clicks higher, and serving switches to it without a restart
(serving/query_versions.py). Real bundled MiniLM throughout; no stub model."""

from __future__ import annotations

import numpy as np
import pytest

from learner.joiner import PendingImpression
from learner.query_tuning import ClickPair, QueryTower, QueryTuner, TuningConfig, fine_tune, is_holdout, judge_pages
from serving.query_versions import QueryVersionFollower
from streamrec.encoder import Encoder, bundled_model_dir
from streamrec.query_encoder import QueryEncoder
from streamrec.query_versions import QueryVersions
from streamrec.schemas import Event
from streamrec.settings import QueryTuningSettings, Settings

# A small shop: "romex" is trade slang the pretrained encoder does not tie to electrical cable.
TITLES = {
    "wire": "Southwire 250 ft. 12/2 Solid NM-B Wire",
    "hose": "Flexzilla 5/8 in. x 50 ft. Garden Hose",
    "drill": "DEWALT 20V MAX Cordless Drill Driver Kit",
    "paint": "BEHR Premium Plus Ultra White Interior Paint",
    "mower": "Toro Recycler 22 in. Gas Walk Behind Mower",
    "tile": "Daltile Restore Bright White 3 in. x 6 in. Ceramic Wall Tile",
    "faucet": "Moen Adler Single-Handle Kitchen Faucet in Chrome",
    "ladder": "Werner 6 ft. Fiberglass Step Ladder",
}
ROMEX = [
    "romex",
    "romex 12 2",
    "romex 14 2",
    "romex 250 ft",
    "romex 12/2 wire",
    "romex 10 3",
    "buy romex",
    "romex roll",
]


@pytest.fixture(scope="module")
def items() -> dict[str, np.ndarray]:
    vecs = Encoder.from_settings(Settings()).encode(list(TITLES.values()))
    return dict(zip(TITLES, vecs, strict=True))


def _rank(tower: QueryTower, query: str, target: str, items: dict[str, np.ndarray]) -> int:
    q = tower.encode_numpy([query])[0]
    scores = {i: float(v @ q) for i, v in items.items()}
    return sorted(scores, key=lambda i: -scores[i]).index(target)


def test_clicks_with_skipped_products_above_move_the_clicked_product_up(items):
    tower = QueryTower(bundled_model_dir(), layers=2)
    before = [_rank(tower, q, "wire", items) for q in ROMEX]
    assert max(before) > 0  # the pretrained encoder does not put the cable first for all of them
    pairs = [ClickPair(q, "wire", ("hose", "paint"), 1.0) for q in ROMEX]
    steps = fine_tune(
        tower, pairs, items.get, ["cordless drill", "ladder"], TuningConfig(steps=40, lr=1e-4, anchor=0.1)
    )
    assert steps == 40
    after = [_rank(tower, q, "wire", items) for q in ROMEX]
    assert sum(after) < sum(before) and max(after) <= max(before), (before, after)
    # a query nobody clicked keeps its pretrained meaning (the anchor)
    assert _rank(tower, "cordless drill", "drill", items) == 0


def test_nothing_is_trained_without_vectors_of_the_clicked_products():
    tower = QueryTower(bundled_model_dir(), layers=1)
    before = tower.state()
    assert fine_tune(tower, [ClickPair("romex", "gone", (), 1.0)], lambda _i: None, [], TuningConfig(steps=5)) == 0
    assert all(np.array_equal(before[k], v) for k, v in tower.state().items())


def test_the_gate_wants_a_gain_beyond_its_noise_over_queries_and_enough_held_out_clicks():
    rng = np.random.default_rng(0)
    pages = [rng.normal(size=(10, 16)).astype(np.float32) for _ in range(300)]
    clicked = rng.integers(0, 10, 300)
    current = rng.normal(size=(300, 16)).astype(np.float32)
    towards = np.stack([page[k] for page, k in zip(pages, clicked, strict=True)])
    better = 0.3 * current + towards  # closer to what was clicked: it ranks higher on its own page
    w = rng.uniform(1, 5, 300)  # 1 / theta of where each click was
    qs = [f"query {n}" for n in range(300)]
    win = judge_pages(current, better, pages, clicked, w, qs, z=2.0, min_pairs=100)
    assert win.better and win.candidate > win.current and win.gap > 2 * win.stderr and win.queries == 300
    assert not judge_pages(current, current, pages, clicked, w, qs, z=2.0, min_pairs=100).better  # no gain
    worse = judge_pages(better, current, pages, clicked, w, qs, z=2.0, min_pairs=100)
    assert not worse.better and worse.gap < 0
    few = judge_pages(current[:50], better[:50], pages[:50], clicked[:50], w[:50], qs[:50], z=2.0, min_pairs=100)
    assert not few.better and few.gap > 0
    # 200 clicks of one query gain, 100 of another lose: per click a clear win, per query one each way
    mixed = np.concatenate([better[:200], 0.3 * current[200:] - towards[200:]])
    two = judge_pages(current, mixed, pages, clicked, w, ["a"] * 200 + ["b"] * 100, z=2.0, min_pairs=100)
    assert two.queries == 2 and two.pairs == 300 and not two.better


def _search(rid: str, query: str, shown: list[str], clicked: list[str]) -> PendingImpression:
    ev = Event(
        event_id=f"i-{rid}",
        type="impression",
        user_id="u",
        ts=1_764_000_000_000,
        request_id=rid,
        item_ids=shown,
        query=query,
    )
    return PendingImpression(
        ev, np.zeros((len(shown), 1)), 0.0, clicked=set(clicked), positions={i: k for k, i in enumerate(shown)}
    )


def _split(share: float) -> tuple[list[str], list[str]]:
    train = [q for q in ROMEX if not is_holdout(q, share)]
    held = [q for q in ROMEX if is_holdout(q, share)]
    return train, held


def test_the_tuner_learns_from_training_queries_and_publishes_what_wins_on_held_out_ones(items, tmp_path):
    share = 0.5
    train, held = _split(share)
    assert train and held, "the romex queries fall on both sides of a 50 % split"
    s = QueryTuningSettings(holdout_share=share, min_pairs=10, min_holdout=10, z=1.0, steps=60, lr=1e-4, anchor=0.1)
    store = QueryVersions(tmp_path / "qv")
    tuner = QueryTuner(s, store, bundled_model_dir(), items.get, lambda: 1.0)
    shown = ["hose", "paint", "wire", "drill"]
    for n in range(40):
        q = ROMEX[n % len(ROMEX)]
        tuner.observe(_search(f"r{n}", q, shown, ["wire"]))
    tuner.observe(_search("none", "garden hose", shown, []))  # no click: only an anchor
    assert {p.query for p in tuner.train} == set(train) and {p.query for p in tuner.holdout} == set(held)
    assert all(p.negatives == ("hose", "paint") and p.weight == 3.0 for p in tuner.train)  # skipped above; 1/theta(2)
    assert "garden hose" in tuner.anchors and len(tuner.train) + len(tuner.holdout) == 40
    version = tuner.train_once(list(tuner.train), list(tuner.holdout), list(tuner.anchors))
    assert tuner.last["better"] and version == 1 == store.current(), tuner.last
    assert tuner.summary() == {
        "train_clicks": len(tuner.train),
        "holdout_clicks": len(tuner.holdout),
        "served": 1,
        "last": tuner.last,
    }
    meta = store.meta(1)
    assert meta["parent"] == 0 and meta["gap"] > 0 and meta["trained_on"] == len(tuner.train)
    # the published directory is a complete HF model whose held-out romex queries rank the cable higher
    published = QueryTower(store.path(1), layers=2)
    pretrained = QueryTower(bundled_model_dir(), layers=2)
    assert sum(_rank(published, q, "wire", items) for q in held) < sum(
        _rank(pretrained, q, "wire", items) for q in held
    )


def test_a_candidate_that_does_not_beat_the_served_version_is_not_published(items, tmp_path):
    s = QueryTuningSettings(holdout_share=0.5, min_pairs=10, min_holdout=10, z=2.0, steps=1, lr=1e-9)
    store = QueryVersions(tmp_path / "qv")
    tuner = QueryTuner(s, store, bundled_model_dir(), items.get, lambda: 1.0)
    train, held = _split(0.5)
    pairs = [ClickPair(q, "wire", ("hose",), 1.0) for q in train] * 3
    holdout = [ClickPair(q, "wire", ("hose",), 2.0, ("hose", "wire", "drill")) for q in held] * 5
    assert tuner.train_once(pairs, holdout, []) == 0
    assert tuner.last["pairs"] == len(holdout) and tuner.last["gap"] == pytest.approx(0, abs=1e-3)
    assert store.current() == 0 and store.versions() == [] and not tuner.last["better"]


def test_training_starts_in_the_background_only_with_enough_new_and_held_out_clicks(items, tmp_path):
    s = QueryTuningSettings(holdout_share=0.5, min_pairs=30, min_holdout=10, steps=1, lr=1e-9)
    store = QueryVersions(tmp_path / "qv")
    tuner = QueryTuner(s, store, bundled_model_dir(), items.get, lambda: 1.0)
    shown = ["hose", "wire"]
    for n in range(20):
        tuner.observe(_search(f"r{n}", ROMEX[n % len(ROMEX)], shown, ["wire"]))
    assert tuner.new_pairs < 30 and not tuner.maybe_start()
    for n in range(20, 80):
        tuner.observe(_search(f"r{n}", ROMEX[n % len(ROMEX)], shown, ["wire"]))
    assert tuner.maybe_start() and tuner.new_pairs == 0
    assert store.status()["training"] or store.status()["outcome"] == "rejected"  # ops see it train
    assert not tuner.maybe_start()  # one training at a time, and nothing new since
    tuner.wait(timeout=120)
    assert tuner.last and not tuner.last["better"]  # lr 1e-9 changes nothing measurable
    assert store.status()["training"] is False and store.status()["outcome"] == "rejected"
    restored = QueryTuner(s, QueryVersions(tmp_path / "qv"), bundled_model_dir(), items.get, lambda: 1.0)
    restored.load_state(tuner.state())  # the learner's checkpoint keeps the clicks across restarts
    assert list(restored.train) == list(tuner.train) and list(restored.holdout) == list(tuner.holdout)


@pytest.mark.parametrize("runtime", ["torch", "onnx-int8"])
def test_serving_switches_to_a_published_version_and_back(items, tmp_path, runtime):
    s = Settings(encoder={"query_runtime": runtime, "onnx_dir": tmp_path / "builds"})
    encoder = QueryEncoder.from_settings(s)
    pretrained = encoder.encode_query("romex").copy()
    store = QueryVersions(tmp_path / "qv")
    follower = QueryVersionFollower(s, encoder, store)
    assert follower.poll() == 0 and "query-v" not in encoder.model_id
    tower = QueryTower(bundled_model_dir(), layers=2)
    pairs = [ClickPair(q, "wire", ("hose",), 1.0) for q in ROMEX]
    fine_tune(tower, pairs, items.get, [], TuningConfig(steps=20, lr=1e-4, anchor=0.0))

    def write(d):
        tower.model.save_pretrained(d)
        tower.tokenizer.save_pretrained(d)

    assert store.publish(write, {"gap": 0.1}, keep=2) == 1
    assert follower.poll() == 1 and encoder.model_id.endswith("+query-v1")
    tuned = encoder.encode_query("romex")  # the cached pretrained vector went with the old model
    expected = tower.encode_numpy(["romex"])[0]
    assert float(tuned @ expected) > 0.98 and float(tuned @ pretrained) < float(tuned @ expected)
    if runtime != "torch":
        assert list(store.path(1).glob("*.int8.onnx"))  # built once, inside the version
    store.point(0)  # an operator rolls back to the pretrained encoder
    assert follower.poll() == 0 and "query-v" not in encoder.model_id
    np.testing.assert_allclose(encoder.encode_query("romex"), pretrained, atol=1e-6)


def test_the_store_keeps_the_newest_versions_and_never_the_half_written(tmp_path):
    store = QueryVersions(tmp_path)
    for n in range(4):
        store.publish(lambda d, n=n: (d / "weights").write_text(str(n)), {"n": n}, keep=2)
    assert store.versions() == [3, 4] and store.current() == 4 and store.path(1) is None
    assert (store.path(4) / "weights").read_text() == "3" and store.meta(4)["n"] == 3

    def broken(d):
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.publish(broken, {}, keep=2)
    assert store.versions() == [3, 4] and store.current() == 4 and not list(tmp_path.glob(".tmp-*"))
