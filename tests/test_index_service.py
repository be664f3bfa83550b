"""index_updater end to end on the real broker and the real model: catalog → vectors → replicas."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from index_updater import metrics as updater_metrics
from index_updater import service, status
from streamrec import bus
from streamrec.datasets import homedepot
from streamrec.encoder import Encoder, item_text
from streamrec.schemas import CatalogOp, DeadLetter, encode
from streamrec.settings import Settings
from streamrec.vector_index import IndexReplica, index_snapshot_dir, list_snapshots
from tests.polling import wait_for

CATALOG_SIZE = 40


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.from_settings(Settings())


@pytest.fixture(scope="module")
def products(data_dir) -> list[CatalogOp]:
    return list(homedepot.catalog(data_dir, limit=CATALOG_SIZE))


def publish(s: Settings, ops: list[CatalogOp | bytes], key: str = "bad") -> None:
    producer = bus.make_producer(s)
    try:
        for op in ops:
            if isinstance(op, bytes):
                producer.send(s.topic.catalog, key=key, value=op)
            else:
                producer.send(s.topic.catalog, key=op.item_id, value=encode(op))
        producer.flush()
    finally:
        producer.close()


def upsert(item_id: str, title: str, **fields) -> CatalogOp:
    return CatalogOp(op="upsert", item_id=item_id, ts=int(time.time() * 1000), title=title, **fields)


def delete(item_id: str) -> CatalogOp:
    return CatalogOp(op="delete", item_id=item_id, ts=int(time.time() * 1000))


class Updater:
    def __init__(self, s: Settings, encoder: Encoder):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(s, encoder), daemon=True)
        self.thread.start()

    def _run(self, s: Settings, encoder: Encoder) -> None:
        try:
            service.run(s, self.stop, encoder=encoder)
        except BaseException as e:  # surfaced by the fixture
            self.error = e
            raise

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "index updater did not stop within 30s"
        assert self.error is None, f"index updater crashed: {self.error!r}"


@pytest.fixture
def fast_settings(settings, request) -> Settings:
    """Snapshots every 0.3 s; tests may pick the FAISS factory (indirect parametrisation)."""
    factory = getattr(request, "param", "Flat")
    return settings.replace(index={"snapshot_every_s": 0.3, "factory": factory})


@pytest.fixture
def updater(fast_settings, encoder) -> Iterator[Updater]:
    u = Updater(fast_settings, encoder)
    yield u
    u.close()


@pytest.fixture
def replicas(fast_settings, encoder) -> Iterator[Callable[..., IndexReplica]]:
    started: list[IndexReplica] = []

    def start(from_snapshot: bool = True, s: Settings | None = None) -> IndexReplica:
        r = IndexReplica(s or fast_settings, encoder.dim, from_snapshot=from_snapshot)
        r.start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def top_ids(replica: IndexReplica, encoder: Encoder, query: str, k: int = 10) -> list[str]:
    return [i for i, _ in replica.index.search(encoder.encode([query]), k)[0]]


@pytest.mark.parametrize("fast_settings", ["Flat", "HNSW16"], indirect=True)
def test_upsert_is_found_and_delete_removes_it(fast_settings, updater, replicas, encoder, products):
    replica = replicas(from_snapshot=False)
    observed = REGISTRY.get_sample_value("streamrec_index_event_to_searchable_seconds_count") or 0
    publish(fast_settings, products)
    wait_for(lambda: len(replica.index) == len(products), "the catalog in the replica")
    # both replicas (the updater's and this one) timed every record: catalog append → searchable
    assert REGISTRY.get_sample_value("streamrec_index_event_to_searchable_seconds_count") >= observed + len(products)
    for op in products[:5]:
        assert top_ids(replica, encoder, op.title, 1) == [op.item_id]

    publish(fast_settings, [upsert("new-1", "Cordless hammer drill 20V lithium-ion kit")])
    wait_for(lambda: "new-1" in replica.index, "the new item")
    assert top_ids(replica, encoder, "cordless drill", 1) == ["new-1"]
    assert replica.index.meta("new-1").title == "Cordless hammer drill 20V lithium-ion kit"

    publish(fast_settings, [delete("new-1")])
    wait_for(lambda: "new-1" not in replica.index, "the delete")
    assert "new-1" not in top_ids(replica, encoder, "cordless drill", len(products) + 1)
    assert replica.index.vector("new-1") is None


@pytest.mark.parametrize("fast_settings", ["Flat", "HNSW16"], indirect=True)
def test_replacing_the_title_moves_the_item(fast_settings, updater, replicas, encoder, products):
    replica = replicas(from_snapshot=False)
    publish(fast_settings, products + [upsert("x", "Garden hose 50 ft heavy duty")])
    wait_for(lambda: "x" in replica.index, "the first title")
    assert top_ids(replica, encoder, "garden hose", 1) == ["x"]

    new_title = upsert("x", "Smart LED light bulb, dimmable, warm white")
    publish(fast_settings, [new_title])
    wait_for(lambda: replica.index.meta("x").title.startswith("Smart LED"), "the new title")
    assert top_ids(replica, encoder, "dimmable led bulb", 1) == ["x"]
    old_rank = top_ids(replica, encoder, "garden hose", len(products) + 1).index("x")
    assert old_rank > 0
    expected = encoder.encode([item_text(new_title, fast_settings.encoder.item_text_template)])[0]
    np.testing.assert_allclose(replica.index.vector("x"), expected, atol=1e-5)


def test_unchanged_item_is_not_embedded_again(fast_settings, updater, replicas, encoder):
    replica = replicas(from_snapshot=False)
    embedded = updater_metrics.ITEMS_EMBEDDED
    publish(fast_settings, [upsert("p", "Stainless steel kitchen sink", price=199.0)])
    wait_for(lambda: "p" in replica.index, "the item")
    before = embedded._value.get()
    vec = replica.index.vector("p").copy()
    publish(
        fast_settings,
        [
            upsert("p", "Stainless steel kitchen sink", price=199.0),
            upsert("p", "Stainless steel kitchen sink", price=149.0),
        ],
    )
    wait_for(lambda: replica.index.meta("p").price == 149.0, "the price change")
    assert embedded._value.get() == before
    np.testing.assert_array_equal(replica.index.vector("p"), vec)


def patch(item_id: str, **fields) -> CatalogOp:
    return CatalogOp(op="patch", item_id=item_id, ts=int(time.time() * 1000), **fields)


def dead_letters(s: Settings, n: int) -> list[DeadLetter]:
    consumer = bus.make_consumer(s, None, consumer_timeout_ms=5000)
    consumer.assign(bus.all_partitions(consumer, s.topic.dlq))
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 20
    while len(letters) < n and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            letters += [DeadLetter.model_validate_json(m.value) for m in msgs]
    consumer.close()
    return letters


def test_a_patch_changes_price_stock_and_attributes_without_the_encoder(fast_settings, updater, replicas):
    replica = replicas(from_snapshot=False)
    embedded = updater_metrics.ITEMS_EMBEDDED
    publish(
        fast_settings,
        [upsert("d", "Cordless drill", price=99.0, brand="Bosch", stock=4, attributes={"volts": 18, "colour": "blue"})],
    )
    wait_for(lambda: "d" in replica.index, "the item")
    created, vec, before = replica.index.meta("d").created_ms, replica.index.vector("d").copy(), embedded._value.get()
    # two patches in one batch fold into one; a null removes what it names
    publish(fast_settings, [patch("d", price=79.0, stock=0), patch("d", attributes={"colour": None, "kit": "yes"})])
    wait_for(lambda: replica.index.meta("d").price == 79.0, "the patch")
    meta = replica.index.meta("d")
    assert (meta.title, meta.brand, meta.stock, meta.available) == ("Cordless drill", "Bosch", 0, False)
    assert meta.attributes == {"volts": 18.0, "kit": "yes"}
    assert meta.created_ms == created  # the item is as new as its first upsert
    assert embedded._value.get() == before  # no encoder call
    np.testing.assert_array_equal(replica.index.vector("d"), vec)
    publish(fast_settings, [patch("d", in_stock=True, brand=None)])  # back in stock (a backorder, stock 0)
    wait_for(lambda: replica.index.meta("d").available, "the restock")
    assert replica.index.meta("d").brand is None
    publish(fast_settings, [patch("d", title="Cordless hammer drill")])  # new text: embedded again
    wait_for(lambda: replica.index.meta("d").title == "Cordless hammer drill", "the new title")
    assert embedded._value.get() == before + 1
    assert replica.index.meta("d").price == 79.0


def test_a_patch_of_an_unknown_or_deleted_item_is_dead_lettered(fast_settings, updater, replicas):
    replica = replicas(from_snapshot=False)
    publish(fast_settings, [patch("nowhere", price=1.0), upsert("gone", "Garden hose"), delete("gone")])
    publish(fast_settings, [upsert("g2", "Garden rake"), delete("g2"), patch("g2", price=3.0), upsert("ok", "Shovel")])
    wait_for(lambda: "ok" in replica.index, "the valid record")
    letters = dead_letters(fast_settings, 2)
    assert sorted(d.reason for d in letters) == ["unknown_item", "unknown_item"]
    assert all("patch of item" in d.error for d in letters)
    assert "nowhere" not in replica.index and "g2" not in replica.index


def test_invalid_catalog_records_are_dead_lettered(fast_settings, updater, replicas):
    replica = replicas(from_snapshot=False)
    bad_delete = json.dumps({"op": "delete", "item_id": "z", "ts": int(time.time() * 1000), "title": "t"})
    publish(fast_settings, [b"not json", bad_delete.encode(), upsert("ok", "Patio umbrella")])
    wait_for(lambda: "ok" in replica.index, "the valid record")
    consumer = bus.make_consumer(fast_settings, None, consumer_timeout_ms=5000)
    consumer.assign(bus.all_partitions(consumer, fast_settings.topic.dlq))
    letters = []
    deadline = time.monotonic() + 20
    while len(letters) < 2 and time.monotonic() < deadline:
        for msgs in consumer.poll(timeout_ms=500).values():
            letters += [DeadLetter.model_validate_json(m.value) for m in msgs]
    consumer.close()
    assert sorted(d.reason for d in letters) == ["invalid", "not_json"]
    assert {d.original_bytes() for d in letters} == {b"not json", bad_delete.encode()}
    assert all(d.source_topic == fast_settings.topic.catalog for d in letters)


@pytest.mark.parametrize("fast_settings", ["Flat", "HNSW16"], indirect=True)
def test_snapshot_plus_tail_equals_scratch_and_replicas_converge(fast_settings, updater, replicas, encoder, products):
    first, rest = products[:30], products[30:]
    publish(fast_settings, first)
    snap_dir = index_snapshot_dir(fast_settings)

    def snapshot_with(n: int) -> bool:
        return any(json.loads((p / "manifest.json").read_text())["items"] == n for p in list_snapshots(snap_dir))

    wait_for(lambda: snapshot_with(len(first)), "a snapshot of the first items")
    early = replicas(from_snapshot=False)  # runs while the tail streams in
    tail = rest + [delete(first[0].item_id), upsert(first[1].item_id, "Outdoor solar path light, 6 pack")]
    publish(fast_settings, tail)
    from_snap = replicas(from_snapshot=True)
    scratch = replicas(from_snapshot=False)
    assert from_snap.loaded_snapshot is not None
    assert sum(from_snap.offsets.values()) > 0, "the snapshot replica must start past the head"
    final = {op.item_id for op in products} - {first[0].item_id}
    for r in (early, from_snap, scratch):
        wait_for(
            lambda r=r: set(r.index.item_ids()) == final and r.index.meta(first[1].item_id).title.startswith("Outdoor"),
            "the final catalog",
        )
    queries = ["angle bracket", "deck coating", "solar light", "drill", "paint", "door lock"]
    for q in queries:
        expected = top_ids(scratch, encoder, q)
        assert top_ids(from_snap, encoder, q) == expected
        assert top_ids(early, encoder, q) == expected
    for item_id in final:
        np.testing.assert_array_equal(from_snap.index.vector(item_id), scratch.index.vector(item_id))

    summary = status.summary(fast_settings)
    assert summary["index_factory"] == fast_settings.index.factory
    assert summary["model_id"] == encoder.model_id
    assert len(first) - 1 <= summary["size"] <= len(products)  # the newest snapshot, whichever it is
    assert summary["snapshot_age_s"] >= 0


def test_damaged_snapshot_is_reported_and_rebuilt_from_the_topic(fast_settings, encoder, replicas, products, caplog):
    updater = Updater(fast_settings, encoder)
    try:
        publish(fast_settings, products[:10])
        snap_dir = index_snapshot_dir(fast_settings)
        wait_for(
            lambda: any(json.loads((p / "manifest.json").read_text())["items"] == 10 for p in list_snapshots(snap_dir)),
            "a snapshot of 10 items",
        )
    finally:
        updater.close()  # no newer snapshot may replace the ones we damage
    for path in list_snapshots(snap_dir):
        (path / "vectors.npy").write_bytes(b"garbage")
    replica = replicas(from_snapshot=True)
    wait_for(lambda: len(replica.index) == 10, "the index rebuilt from the topic")
    assert replica.loaded_snapshot is None
    assert "does not match its checksum" in caplog.text
