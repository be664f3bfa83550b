"""`streamrec status` without --json: readable tables (launcher/status_view.py), errors shown in place."""

from rich.console import Console

from launcher.status_view import print_report

REPORT = {
    "settings": {"kafka": "kafka:9092", "redis": "redis://redis:6379/0"},
    "serving": {"status": "ok", "index_items": 150, "model_version": 3, "vector_offsets": {"0": 7}},
    "lag": {
        "consumers": {"streamrec.events": {0: 1, 1: 2, 2: 0}, "streamrec.catalog": {0: 0}},
        "index-updater": {"streamrec.catalog": {0: 4}},
        "learner": {"error": "broker away"},
        "serving (vector follower)": {"streamrec.vectors": {0: 2000}},
    },
    "models": {
        "serving_version": 3,
        "recent": [
            {
                "version": 2,
                "current": False,
                "created_ms": 1_700_000_000_000,
                "reason": "periodic",
                "parent": 1,
                "metrics": {"click_auc": 0.7123, "click_logloss": 0.2, "examples": 100},
            },
            {"version": 3, "current": True, "created_ms": 1_700_000_001_000, "reason": "promotion", "parent": 2},
        ],
    },
    "consumers": {
        "group": "streamrec-consumers",
        "bot_filter": {"quarantined": {"user_rate": 3}, "topic": "streamrec.quarantine"},
        "dead_letters": {"counts": {"bad_json": 2}, "topic": "streamrec.dlq"},
        "partitions": {"streamrec.events[0]": {"lag": 0, "applied_offset": 10, "outbox_pending": 0}},
        "keyspaces": [
            {
                "keyspace": "streamrec:{0.0}:",
                "master": "10.0.0.7:6379",
                "events_partitions": [0, 3],
                "used_memory": 3 * 2**20,
                "maxmemory": 2**30,
                "maxmemory_policy": "volatile-lru",
            },
            {
                "keyspace": "streamrec:{1.4}:",
                "master": "10.0.0.8:6379",
                "events_partitions": [1, 4],
                "used_memory": 2**20,
                "maxmemory": 2**30,
                "maxmemory_policy": "allkeys-lru",
            },
        ],
        "stream_clock_ms": 1_700_000_000_000,
    },
    "index": {"error": "no snapshot yet"},
}


def test_status_prints_tables_not_a_dict_repr():
    console = Console(record=True, width=140)
    print_report(REPORT, console)
    text = console.export_text()
    assert "{'" not in text and "'" not in text  # no Python repr (a keyspace's hash tag has braces)
    for expected in (
        "Consumer lag",
        "0:1, 1:2, 2:0",
        "streamrec.catalog",
        "index-updater",
        "serving (vector follower)",
        "streamrec.vectors",
        "2000",
        "broker away",
        "v3 *",
        "2023-11-14 22:13:21 UTC",
        "0.7123",
        "bad_json",
        "user_rate",
        "no snapshot yet",
        "Feature keyspaces",
        "10.0.0.7:6379",
        "0, 3",
        "3.0 MiB",
        "allkeys-lru (unsafe",
        "2023-11-14 22:13:20 UTC",
    ):
        assert expected in text, expected
