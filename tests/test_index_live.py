"""LiveIndex without a broker: ids, upserts, deletes, tombstones, training, atomicity, snapshots."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from streamrec.vector_index import (
    REBUILDS,
    ItemMeta,
    LiveIndex,
    SnapshotError,
    VectorRecord,
    decode_record,
    encode_record,
    list_snapshots,
    read_snapshot,
    want_gpu,
    write_snapshot,
)

DIM = 16
FACTORIES = ["Flat", "HNSW16", "IVF4,Flat", "IVF4,PQ4", "SQ8", "PCA8,IVF4,Flat", "IDMap2,Flat"]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def batch(ids: list[str], vectors: np.ndarray) -> list[tuple[str, np.ndarray, ItemMeta]]:
    return [(i, v, ItemMeta(title=f"title {i}")) for i, v in zip(ids, vectors, strict=True)]


@pytest.mark.parametrize("factory", FACTORIES)
def test_upsert_replace_delete_for_every_factory(factory):
    rng = np.random.default_rng(7)
    index = LiveIndex(DIM, factory, compact_min=10_000)  # no background compaction here
    x = unit(rng, 600)
    ids = [f"i{n}" for n in range(600)]
    index.apply(batch(ids, x), [])
    index.rebuild()  # trains IVF/PQ/SQ now that there is data
    assert index.trained and len(index) == 600

    deleted = ids[0:600:4]
    replaced = ids[1:600:4]
    index.apply(batch(replaced, -x[1:600:4]), deleted)  # a replaced vector points the other way
    assert len(index) == 450 and all(i not in index for i in deleted)

    results = index.search(x, 10)
    for n, hits in enumerate(results):
        found = [i for i, _ in hits]
        assert len(found) == 10 and len(set(found)) == 10
        assert not set(found) & set(deleted), "a deleted item came back"
        if ids[n] in replaced:
            assert ids[n] not in found[:3], "a replaced item was found by its old vector"
    recall = np.mean(
        [ids[n] in [i for i, _ in results[n]] for n in range(600) if ids[n] not in deleted and ids[n] not in replaced]
    )
    assert recall > 0.5, f"{factory}: an item is rarely found by its own vector ({recall:.2f})"
    assert index.meta("i1") == ItemMeta(title="title i1")
    np.testing.assert_array_equal(index.vector("i1"), -x[1])
    assert index.vector("i0") is None and index.meta("i0") is None


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat"])
def test_exclude_and_scores(factory):
    rng = np.random.default_rng(3)
    x = unit(rng, 400)
    ids = [f"i{n}" for n in range(400)]
    index = LiveIndex(DIM, factory)
    index.apply(batch(ids, x), [])
    index.rebuild()
    hits = index.search(x[5], 5, exclude=["i5", "nope"])[0]
    assert "i5" not in [i for i, _ in hits] and len(hits) == 5
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    for item, score in hits:
        assert score == pytest.approx(float(x[5] @ index.vector(item)), abs=1e-4)


def test_l2_scores_are_higher_is_better():
    rng = np.random.default_rng(1)
    x = unit(rng, 50)
    index = LiveIndex(DIM, "Flat", metric="l2")
    index.apply(batch([f"i{n}" for n in range(50)], x), [])
    hits = index.search(x[9], 3)[0]
    assert hits[0][0] == "i9" and hits[0][1] == pytest.approx(0.0, abs=1e-5)
    assert hits[1][1] < hits[0][1]


def test_ivf_searches_exactly_until_it_can_train_itself():
    rng = np.random.default_rng(11)
    index = LiveIndex(DIM, "IVF8,Flat")  # needs 39 × 8 = 312 vectors to train
    x = unit(rng, 400)
    index.apply(batch([f"i{n}" for n in range(100)], x[:100]), [])
    assert not index.trained
    assert [index.search(x[n], 1)[0][0][0] for n in range(100)] == [f"i{n}" for n in range(100)]
    index.apply(batch([f"i{n}" for n in range(100, 400)], x[100:]), [])
    index.rebuild()  # joins the training rebuild the batch started
    assert index.trained and len(index) == 400
    assert index.search(x[200], 1)[0][0][0] == "i200"


def test_hnsw_tombstones_never_appear_while_compaction_runs():
    """Each batch deletes one generation of items and adds the next: a search must see exactly one
    generation (never half a batch), never an older one than before (no tombstone leaks)."""
    rng = np.random.default_rng(5)
    gen_size, gens = 20, 60
    index = LiveIndex(DIM, "HNSW16", compact_min=30, compact_ratio=0.05)
    index.apply(batch([f"base{n}" for n in range(300)], unit(rng, 300)), [])
    vectors = [unit(rng, gen_size) for _ in range(gens)]
    queries = unit(rng, 32)
    problems: list[str] = []
    done = threading.Event()
    compactions = REBUILDS.labels("compact")._value.get()

    def reader() -> None:
        seen = -1
        while not done.is_set():
            for hits in index.search(queries, 60):
                gs = {int(i.split("-")[0][1:]) for i, _ in hits if i.startswith("g")}
                if len(gs) > 1:
                    problems.append(f"generations {gs} visible together")
                elif gs and min(gs) < seen:
                    problems.append(f"generation {min(gs)} after {seen}")
                seen = max(gs | {seen})

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for g in range(gens):
        old = [f"g{g - 1}-{j}" for j in range(gen_size)] if g else []
        index.apply(batch([f"g{g}-{j}" for j in range(gen_size)], vectors[g]), old)
    done.set()
    for t in threads:
        t.join()
    index.rebuild()
    assert not problems, problems[:5]
    assert REBUILDS.labels("compact")._value.get() > compactions, "compaction never ran concurrently"
    assert index.tombstones == 0, "compaction left tombstones behind"
    assert len(index) == 300 + gen_size
    live = {f"g{gens - 1}-{j}" for j in range(gen_size)}
    found = {i for hits in index.search(vectors[gens - 1], 5) for i, _ in hits if i.startswith("g")}
    assert found == live


def test_hnsw_tombstones_survive_a_dump_and_load():
    rng = np.random.default_rng(2)
    x = unit(rng, 200)
    index = LiveIndex(DIM, "HNSW16", compact_min=10_000)
    index.apply(batch([f"i{n}" for n in range(200)], x), [])
    index.apply([], [f"i{n}" for n in range(0, 200, 2)])
    assert index.tombstones == 100
    copy = LiveIndex(DIM, "HNSW16")
    copy.load(index.dump())
    assert copy.tombstones == 100 and len(copy) == 100
    for hits in copy.search(x, 10):
        assert all(int(i[1:]) % 2 == 1 for i, _ in hits)


def test_snapshot_roundtrip_and_damage_is_reported(tmp_path):
    rng = np.random.default_rng(4)
    x = unit(rng, 50)
    index = LiveIndex(DIM, "Flat")
    index.apply(batch([f"i{n}" for n in range(50)], x), ["i3"])
    path = write_snapshot(
        tmp_path,
        index.dump(),
        topic="t.vectors",
        offsets={0: 12, 1: 7},
        hashes={"i1": "abc"},
        model_id="m/fp32",
        keep=2,
    )
    snap = read_snapshot(path)
    assert snap.offsets == {0: 12, 1: 7} and snap.hashes == {"i1": "abc"}
    copy = LiveIndex(DIM, "Flat")
    copy.load(snap.dump)
    assert copy.search(x[:5], 5) == index.search(x[:5], 5)
    assert copy.meta("i7") == index.meta("i7") and copy.version == index.version

    for _ in range(2):
        write_snapshot(tmp_path, index.dump(), topic="t.vectors", offsets={}, hashes={}, keep=2)
    assert len(list_snapshots(tmp_path)) == 2, "old snapshots are pruned"
    newest = list_snapshots(tmp_path)[0]
    (newest / "items.jsonl").write_text("{}\n")
    with pytest.raises(SnapshotError, match="items.jsonl does not match its checksum"):
        read_snapshot(newest)
    (newest / "manifest.json").write_text("{")
    with pytest.raises(SnapshotError, match="unreadable manifest"):
        read_snapshot(newest)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="bad FAISS factory string 'IVFbanana'"):
        LiveIndex(DIM, "IVFbanana")
    index = LiveIndex(DIM, "Flat")
    with pytest.raises(ValueError, match="has dim 3"):
        index.apply([("a", np.ones(3), ItemMeta("a"))], [])
    with pytest.raises(ValueError, match="NaN"):
        index.apply([("a", np.full(DIM, np.nan), ItemMeta("a"))], [])
    assert len(index) == 0 and index.version == 0, "a rejected batch changes nothing"
    with pytest.raises(ValueError, match="metric"):
        LiveIndex(DIM, "Flat", metric="cosine")


def test_gpu_choice_is_guarded():
    if faiss.get_num_gpus() == 0:
        assert not want_gpu("auto")
        with pytest.raises(RuntimeError, match="faiss sees no GPU"):
            want_gpu("always")
    else:  # on a GPU host the index lives on the GPU and answers like the CPU one
        rng = np.random.default_rng(9)
        x = unit(rng, 300)
        cpu, gpu = LiveIndex(DIM, "Flat", use_gpu="never"), LiveIndex(DIM, "Flat", use_gpu="always")
        for index in (cpu, gpu):
            index.apply(batch([f"i{n}" for n in range(300)], x), ["i1", "i2"])
        assert [[i for i, _ in h] for h in gpu.search(x, 10)] == [[i for i, _ in h] for h in cpu.search(x, 10)]
    assert not want_gpu("never")


def test_vector_records_roundtrip_and_reject_garbage():
    vec = np.linspace(-1, 1, DIM, dtype=np.float32)
    rec = VectorRecord(
        "a", vector=vec, meta=ItemMeta("A", "cat", 9.5, "d"), content_hash="h", model_id="m/fp32", source_ms=123
    )
    back = decode_record(encode_record(rec))
    np.testing.assert_array_equal(back.vector, vec)
    assert (back.meta, back.content_hash, back.model_id, back.source_ms) == (rec.meta, "h", "m/fp32", 123)
    assert decode_record(encode_record(VectorRecord("b", deleted=True, source_ms=1))).deleted
    assert decode_record(None, key=b"c") == VectorRecord("c", deleted=True)
    with pytest.raises(ValueError, match="bad vector record"):
        decode_record(b'{"item_id": "x", "vector": "AAAA", "dim": 5, "meta": {"title": "t"}}')
    with pytest.raises(ValueError, match="bad vector record"):
        decode_record(b"[1, 2]")
