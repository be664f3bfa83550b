"""Live catalog changes are not starved by a bulk import: the index updater's live lane."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from index_updater.backlog import Backlog
from streamrec import bus
from streamrec.datasets import homedepot
from streamrec.schemas import CatalogOp, decode_catalog, encode
from streamrec.settings import Settings
from tests.polling import wait_for
from tests.test_index_service import delete, encoder, fast_settings, replicas, updater, upsert  # noqa: F401

BULK = 1500


def post(s: Settings, ops: list[CatalogOp]) -> None:
    """As POST /catalog does: one publish_confirmed per request (≤ 1000 objects)."""
    producer = bus.make_producer(s)
    try:
        for start in range(0, len(ops), 1000):
            part = ops[start : start + 1000]
            bus.publish_confirmed(producer, [(s.topic.catalog, op.item_id, encode(op)) for op in part], timeout_s=30)
    finally:
        producer.close()


@pytest.mark.slow
def test_single_changes_overtake_a_bulk_import(fast_settings, updater, replicas, data_dir):  # noqa: F811
    replica = replicas(from_snapshot=False)
    bulk = list(homedepot.catalog(data_dir, limit=BULK))
    post(fast_settings, bulk)
    wait_for(lambda: len(replica.index) >= 50, "the bulk import to start", timeout_s=120)

    pending = bulk[-1]  # still waiting in the bulk: the live upsert replaces it (last write wins)
    started = time.monotonic()
    post(fast_settings, [upsert("live-1", "Cordless hammer drill 20V lithium-ion kit")])
    post(fast_settings, [upsert(pending.item_id, "Galvanized steel garden hose reel")])
    post(fast_settings, [delete(bulk[0].item_id)])

    def live_done() -> bool:
        meta = replica.index.meta(pending.item_id)
        return (
            "live-1" in replica.index
            and meta is not None
            and meta.title == "Galvanized steel garden hose reel"
            and bulk[0].item_id not in replica.index
        )

    wait_for(live_done, "the three live changes", timeout_s=60)
    waited, indexed = time.monotonic() - started, len(replica.index)
    assert indexed < BULK - 100, f"live changes became visible only after the bulk ({indexed} of {BULK} items)"
    wait_for(lambda: len(replica.index) >= BULK, "the rest of the bulk", timeout_s=600)
    # the bulk's own, older op of that item never overwrote the live one
    assert replica.index.meta(pending.item_id).title == "Galvanized steel garden hose reel"
    assert bulk[0].item_id not in replica.index
    print(f"live changes visible after {waited:.1f}s with {indexed} of {BULK} bulk items indexed")


def record(offset: int, key: str, value: bytes, batch: int | None, partition: int = 0) -> ConsumerRecord:
    headers = [(bus.BATCH_HEADER, str(batch).encode())] if batch is not None else []
    return ConsumerRecord(
        "c", partition, -1, offset, 0, 0, key.encode(), value, headers, None, len(key), len(value), len(headers)
    )


def op(item_id: str, title: str) -> bytes:
    return encode(CatalogOp(op="upsert", item_id=item_id, ts=1_700_000_000_000, title=title))


def test_backlog_lanes_supersede_and_commit_low_water_mark():
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536)
    b.add({tp: [record(n, f"i{n}", op(f"i{n}", "bulk"), 1000) for n in range(10)]})
    b.add({tp: [record(10, "i3", op("i3", "live"), 1), record(11, "x", b"not json", 1), record(12, "x", b"{}", 1)]})
    chunk = b.next_chunk(100)
    # the live lane first; i3's bulk op is gone (superseded), both invalid records stay (dead letters)
    assert [m.offset for m in chunk] == [10, 11, 12]
    assert 3 not in [m.offset for m in b.bulk.values()]
    assert b.committable() == {tp: 0}
    b.done(chunk)
    assert b.committable() == {tp: 0}  # offsets 0.. of the bulk are still waiting
    first = b.next_chunk(4)
    assert [m.offset for m in first] == [0, 1, 2, 4]
    b.done(first)
    assert b.committable() == {tp: 5}
    b.committed({tp: 5})
    rest = b.next_chunk(100)
    b.done(rest)
    assert len(b) == 0 and b.committable() == {tp: 13}


@pytest.mark.parametrize("poll_size, live", [(3, True), (40, False)])
def test_records_without_header_are_live_when_they_come_in_a_small_poll(poll_size, live):
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536)
    b.add({tp: [record(n, f"i{n}", op(f"i{n}", "t"), None) for n in range(poll_size)]})
    assert (len(b.live), len(b.bulk)) == ((poll_size, 0) if live else (0, poll_size))


def test_bulk_threads_keep_the_faster_count_and_chunks_follow_the_rate():
    from index_updater.service import BulkThreads, ChunkPace

    t = BulkThreads([1, 2], smallest=16)
    assert t.pick() == 1
    t.observe(1, 128, 1.0)  # 128 items/s with one thread
    assert t.pick() == 2
    t.observe(2, 128, 4.0)  # 32 items/s with two (a saturated host)
    assert t.pick() == 1
    t.observe(2, 8, 0.001)  # too small a chunk to say anything about bulk throughput
    assert t.pick() == 1

    pace = ChunkPace(0.5, smallest=64, largest=1024)
    assert pace.records() == 64
    pace.observe(256, 1.0)
    assert pace.records() == 128  # half a second at 256 items/s
    pace.observe(64, 0.01)
    assert 64 <= pace.records() <= 1024


def test_bulk_chunks_hold_the_oldest_record_and_those_nearest_its_length():
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536, length_window=8)
    titles = ["a" * 40, "b" * 5, "c" * 38, "d" * 6, "e" * 41, "f" * 4, "g" * 39, "h" * 5, "i" * 40]
    b.add({tp: [record(n, f"i{n}", op(f"i{n}", t), 1000) for n, t in enumerate(titles)]})
    first = b.next_chunk(3)
    # the oldest (40 chars) and its nearest in length among the oldest 8; offset 8 is outside the window
    assert [m.offset for m in first] == [0, 4, 6]
    b.done(first)
    assert b.committable() == {tp: 1}
    second = b.next_chunk(3)
    assert [m.offset for m in second] == [1, 3, 7]
    b.done(second)
    assert b.committable() == {tp: 2}
    rest = b.next_chunk(10)
    assert [m.offset for m in rest] == [2, 5, 8]
    b.done(rest)
    assert len(b) == 0 and b.committable() == {tp: 9}


def test_taken_records_are_in_flight_until_done_and_put_back_yields_to_newer_ones():
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536)
    b.add({tp: [record(n, f"i{n}", op(f"i{n}", "bulk"), 1000) for n in range(4)]})
    first = b.take(2)
    assert [m.offset for m in first] == [0, 1]
    assert [m.offset for m in b.take(2)] == [2, 3]  # the next chunk, while the first is in flight
    assert b.committable() == {tp: 0} and len(b) == 0
    b.add({tp: [record(4, "i1", op("i1", "newer"), 1000)]})
    b.put_back(first, live=False)  # its send failed: i0 is redone, i1 only in its newer version
    assert sorted(m.offset for m in b.bulk.values()) == [0, 4]
    b.done(b.take(10))
    assert b.committable() == {tp: 2}  # 2 and 3 are still in flight


def patch_op(item_id: str, **fields) -> bytes:
    return encode(CatalogOp(op="patch", item_id=item_id, ts=1_700_000_000_001, **fields))


def test_a_newer_patch_folds_into_the_waiting_record_of_its_item():
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536)
    removal = encode(CatalogOp(op="delete", item_id="d", ts=1_700_000_000_000))
    b.add(
        {
            tp: [
                record(0, "u", op("u", "Drill"), 1),
                record(1, "d", removal, 1),
                record(2, "p", patch_op("p", price=2.0), 1),
            ]
        }
    )
    b.add({tp: [record(3, "u", patch_op("u", price=5.0), 1), record(4, "d", patch_op("d", price=1.0), 1)]})
    b.add({tp: [record(5, "p", patch_op("p", stock=0, price=None), 1)]})
    chunk = b.next_chunk(10)
    by_offset = {m.offset: decode_catalog(m.value) for m in chunk}
    # the upsert carries its patch (under the patch's offset); the delete stays, its patch waits behind it
    assert sorted(by_offset) == [1, 3, 4, 5]
    assert (by_offset[3].op, by_offset[3].title, by_offset[3].price) == ("upsert", "Drill", 5.0)
    assert by_offset[1].op == "delete" and by_offset[4].op == "patch"
    # two patches fold into one that still removes what the second one nulls
    assert by_offset[5].op == "patch" and by_offset[5].stock == 0 and by_offset[5].price is None
    assert "price" in by_offset[5].model_fields_set
    b.done(chunk)
    assert b.committable() == {tp: 6}


def test_a_put_back_record_folds_into_a_newer_patch():
    tp = TopicPartition("c", 0)
    b = Backlog(live_max_batch=16, max_event_bytes=65536)
    b.add({tp: [record(0, "u", op("u", "Drill"), 1)]})
    first = b.take(1)
    b.add({tp: [record(1, "u", patch_op("u", brand="Bosch"), 1)]})
    b.put_back(first, live=True)  # the upsert's send failed: the waiting patch now carries it
    [m] = b.next_chunk(10)
    merged = decode_catalog(m.value)
    assert (m.offset, merged.op, merged.title, merged.brand) == (1, "upsert", "Drill", "Bosch")
