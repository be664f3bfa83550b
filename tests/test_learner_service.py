"""The learner service on a real broker and Redis: labelled impressions in → new model versions out."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from learner.checkpoint import Checkpointer
from learner.service import run
from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.ranking import FEATURE_NAMES, N_FEATURES, log_served
from streamrec.schemas import Event, encode
from streamrec.store import connect
from streamrec.vector_index import ItemMeta, VectorRecord, encode_record
from tests.conftest import isolated_settings
from tests.polling import wait_for


def labelled_traffic(n_requests: int, t0: int, served_every: int = 2, r=None, prefix: str = "", tag: str = ""):
    """Impressions of 4 items; item 'a{k}' is clicked in every third request (purchased in every sixth)."""
    events: list[Event] = []
    rng = np.random.default_rng(0)
    for k in range(n_requests):
        rid, user = f"{tag}req{k}", f"u{k % 7}"
        items = [f"a{k % 5}", f"b{k % 3}", f"c{k % 4}", f"d{k % 6}"]
        ts = t0 + k * 100
        if r is not None and k % served_every == 0:
            log_served(r, prefix, rid, items, rng.normal(size=(4, N_FEATURES)).astype(np.float32), ttl_s=300)
        events.append(
            Event(event_id=f"{tag}i{k}", type="impression", user_id=user, ts=ts, request_id=rid, item_ids=items)
        )
        if k % 3 == 0:
            events.append(
                Event(
                    event_id=f"{tag}c{k}",
                    type="click",
                    user_id=user,
                    ts=ts + 20,
                    request_id=rid,
                    item_id=items[0],
                    position=0,
                )
            )
        if k % 6 == 0:
            events.append(
                Event(
                    event_id=f"{tag}p{k}", type="purchase", user_id=user, ts=ts + 50, request_id=rid, item_id=items[0]
                )
            )
    return events


@pytest.fixture
def learner_settings(kafka_broker, redis_server, tmp_path):
    return isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path / "state",
        learner={
            "label_window_s": 1.0,
            "publish_every_updates": 5,
            "publish_every_s": 0.5,
            "batch_size": 16,
            "max_batch_delay_s": 0.1,
            "checkpoint_every_s": 0.5,
            "follow_vectors": True,
            "vector_dim": 8,
        },
        drift={"warmup": 10_000},
    )


def test_labelled_impressions_publish_new_versions(learner_settings):
    s = learner_settings
    store = ModelStore.from_settings(s)
    producer = bus.make_producer(s)
    rng = np.random.default_rng(1)
    for item in ("a0", "a1", "a2", "a3", "a4"):  # the a-items have vectors on the vectors topic
        rec = VectorRecord(item, vector=rng.normal(size=8).astype(np.float32), meta=ItemMeta(title=item, price=9.5))
        producer.send(s.topic.vectors, key=item, value=encode_record(rec))
    producer.flush(10)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target():
        try:
            run(s, stop)
        except BaseException as e:  # surfaced below
            errors.append(e)

    th = threading.Thread(target=target, daemon=True)
    th.start()
    try:
        wait_for(lambda: store.latest_version() >= 1 or errors, "the initial version", timeout_s=60)
        assert not errors, errors
        v1, _head, meta1 = store.load()
        assert meta1["reason"] == "initial"

        r = connect(s)
        for ev in labelled_traffic(120, t0=int(time.time() * 1000), r=r, prefix=s.redis.prefix):
            producer.send(s.topic.events, key=ev.user_id, value=encode(ev))
        producer.flush(10)

        # clicks train at once; negatives when their 1 s window closes: both must reach a version
        def learned_enough():
            v = store.latest_version()
            return v > v1 and (store.meta(v).get("examples") or 0) >= 120 * 4

        wait_for(lambda: learned_enough() or errors, "a version trained on every shown item", timeout_s=60)
        assert not errors, errors
        v, head, meta = store.load()
        assert meta["metrics"]["click_examples"] >= 120 * 4 - 40  # clicked rows carry a click label once
        assert meta["metrics"]["purchase_examples"] >= 100
        assert meta["feature_schema"]["names"] == head.feature_names
        p_click, p_buy = head.predict(np.zeros((3, N_FEATURES), np.float32))
        assert p_click.shape == (3,) and np.all((p_click > 0) & (p_click < 1))
        gauge = REGISTRY.get_sample_value
        assert 0 < gauge("streamrec_learner_auc", {"task": "click", "model": "champion"}) <= 1
        assert gauge("streamrec_learner_logloss", {"task": "purchase", "model": "champion"}) > 0
        assert gauge("streamrec_learner_model_version") == v
    finally:
        stop.set()
        th.join(30)
    assert not th.is_alive(), "the learner did not stop"
    assert not errors, errors
    state = Checkpointer(s.state_dir / "learner").load()
    assert state is not None and state["version"] == store.latest_version()
    assert sum(state["offsets"].values()) >= 120 + 40 + 20  # every event's offset is covered
    # rows recomputed by the learner (odd requests: nothing served) carry the replica's vectors
    recomputed = [e for e in state["core"]["buffer"] if int(e.request_id[3:]) % 2 == 1]
    has_vec, price = FEATURE_NAMES.index("has_item_vec"), FEATURE_NAMES.index("has_price")
    assert {e.x[has_vec] for e in recomputed if e.item_id.startswith("a")} == {1.0}
    assert {e.x[price] for e in recomputed if e.item_id.startswith("a")} == {1.0}  # price from the replica's meta
    assert {e.x[has_vec] for e in recomputed if not e.item_id.startswith("a")} == {0.0}


def test_drift_in_the_stream_is_published_on_the_drift_topic(kafka_broker, redis_server, tmp_path, data_dir):
    """The shifted Open Bandit replay through the broker: the detection lands on topic.drift."""
    from learner import experiments as E
    from learner import metrics as M
    from streamrec.datasets import open_bandit as ob

    s = isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path / "state",
        learner={
            "label_window_s": 60.0,
            "publish_every_updates": 50,
            "publish_every_s": 1.0,
            "batch_size": 32,
            "follow_vectors": False,
        },
        drift={"warmup": 300},
    )
    rows, _half = E.open_bandit_stream(data_dir, shift=True)
    producer = bus.make_producer(s, linger_ms=20)
    for ev in ob.to_events(rows):
        producer.send(s.topic.events, key=ev.user_id, value=encode(ev))
    producer.flush(30)
    before = M.DRIFT.labels("adwin_loss", "prequential_click_loss")._value.get()

    stop = threading.Event()
    th = threading.Thread(target=run, args=(s, stop), daemon=True)
    th.start()
    drift = bus.make_consumer(s, group_id=None)
    drift.assign(bus.all_partitions(drift, s.topic.drift))
    try:
        found = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(d["detector"] == "adwin_loss" for d in found):
            for msgs in drift.poll(timeout_ms=500).values():
                found.extend(json.loads(m.value) for m in msgs)
        loss = [d for d in found if d["detector"] == "adwin_loss"]
        assert loss, f"no loss drift on {s.topic.drift}; got {found}"
        d = loss[0]
        assert d["what"] == "prequential_click_loss" and d["where"] == "champion"
        assert d["evidence"]["mean_after"] > d["evidence"]["mean_before"] and d["when_ms"] >= rows[0].ts
        assert d["challenger_started"] is True
        assert M.DRIFT.labels("adwin_loss", "prequential_click_loss")._value.get() > before
    finally:
        stop.set()
        th.join(30)
        drift.close()
        producer.close(5)
