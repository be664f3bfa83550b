"""Access control (serving/auth.py) on the real app with a fake engine and producer: 401 / 403 / 202,
nothing published on refusal, loopback-only writes when keyless, rate limit 429, constant-time
comparison, CORS; and the admin model routes (serving/admin.py) on a real model store."""

from __future__ import annotations

import hmac

import pytest
from fastapi.testclient import TestClient

from serving import auth
from serving.app import create_app
from streamrec.model_store import ModelStore
from streamrec.ranking import RankingHead
from streamrec.settings import Settings
from tests.test_serving_app import FakeEngine, FakeProducer

LOOPBACK = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)
EVENT = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}
KEYS = {"producer_keys": "prod-1,prod-2", "admin_keys": "admin-1", "read_keys": "read-1"}


def _client(client=REMOTE, state_dir=None, **api) -> tuple[TestClient, FakeProducer, Settings]:
    """An app whose ``api`` settings group is ``api`` (the rest: defaults)."""
    producer = FakeProducer()
    s = Settings(api=api) if state_dir is None else Settings(api=api, state_dir=state_dir)
    return TestClient(create_app(s, FakeEngine(), producer), client=client), producer, s


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_writes_need_a_producer_key_and_refusals_publish_nothing():
    client, producer, _ = _client(**KEYS)
    r = client.post("/events", json=EVENT)
    assert r.status_code == 401 and "producer API key required" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/events", json=EVENT, headers=_bearer("prod-1x"))
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    r = client.post("/catalog", json={"op": "delete", "item_id": "i1", "ts": 1}, headers=_bearer("read-1"))
    assert r.status_code == 403 and "read role" in r.json()["detail"] and "producer key" in r.json()["detail"]
    assert producer.sent == []  # nothing reached the broker
    assert client.post("/events", json=EVENT, headers=_bearer("prod-2")).status_code == 202
    assert client.post("/events", json=EVENT, headers=_bearer("admin-1")).status_code == 202  # admin may write
    assert len(producer.sent) == 2


def test_reads_are_open_unless_a_read_key_is_required():
    client, _, _ = _client(**KEYS)
    assert client.get("/search", params={"q": "ink"}).status_code == 200
    client, _, _ = _client(**KEYS, require_read_key=True)
    r = client.get("/search", params={"q": "ink"})
    assert r.status_code == 401 and "requires a key for reads" in r.json()["detail"]
    for key in ("read-1", "prod-1", "admin-1"):
        assert client.get("/search", params={"q": "ink"}, headers=_bearer(key)).status_code == 200
    assert client.get("/search", params={"q": "ink"}, headers=_bearer("nope")).status_code == 401
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200  # probes


def test_without_keys_writes_and_admin_are_accepted_from_loopback_only(tmp_path):
    remote, producer, _ = _client(client=REMOTE, state_dir=tmp_path)
    r = remote.post("/events", json=EVENT)
    assert (
        r.status_code == 403
        and "loopback" in r.json()["detail"]
        and "STREAMREC_API_PRODUCER_KEYS" in r.json()["detail"]
    )
    assert remote.post("/admin/models/rollback").status_code == 403
    assert producer.sent == []
    assert remote.get("/recommend", params={"user_id": "u"}).status_code == 200  # reads stay open
    local, producer, _ = _client(client=LOOPBACK, state_dir=tmp_path)
    assert local.post("/events", json=EVENT).status_code == 202 and len(producer.sent) == 1
    ipv6, producer, _ = _client(client=("::1", 1), state_dir=tmp_path)
    assert ipv6.post("/events", json=EVENT).status_code == 202


def test_rate_limit_answers_429_with_retry_after_per_key():
    client, producer, _ = _client(**KEYS, rate_limit_per_s=0.5, rate_limit_burst=2)
    ok = [client.post("/events", json=EVENT, headers=_bearer("prod-1")).status_code for _ in range(2)]
    r = client.post("/events", json=EVENT, headers=_bearer("prod-1"))
    assert ok == [202, 202] and r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert len(producer.sent) == 2
    assert client.post("/events", json=EVENT, headers=_bearer("prod-2")).status_code == 202  # another key's bucket
    for _ in range(2):
        client.get("/recommend", params={"user_id": "u"})
    assert client.get("/recommend", params={"user_id": "u"}).status_code == 429  # keyless: per client IP


def test_token_bucket_refills_with_time():
    now = [0.0]
    buckets = auth.TokenBuckets(rate=2.0, burst=1, clock=lambda: now[0])
    assert buckets.take("k") == 0 and buckets.take("k") == pytest.approx(0.5)
    now[0] = 0.5
    assert buckets.take("k") == 0


def test_token_buckets_hold_at_most_cap_identities_forgetting_the_least_recent():
    buckets = auth.TokenBuckets(rate=1e-6, burst=1, cap=2, clock=lambda: 0.0)
    assert [buckets.take(k) for k in ("a", "b")] == [0, 0]
    assert buckets.take("a") > 0  # "a" is now the most recently seen, "b" the least
    assert buckets.take("c") == 0 and len(buckets.buckets) == 2
    assert buckets.take("a") > 0  # kept: still empty
    assert buckets.take("b") == 0  # forgotten, so a full bucket again


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.key_matches("b", ["a", "b", "c"]) and len(calls) == 3  # no early exit on a match
    client, _, _ = _client(**KEYS)
    calls.clear()
    assert client.post("/events", json=EVENT, headers=_bearer("prod-1")).status_code == 202
    assert len(calls) == 4  # every producer, admin and read key


def test_cors_origins_setting():
    client, _, _ = _client(**KEYS, cors_origins="https://shop.example")
    r = client.options(
        "/events",
        headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
    r = client.get("/recommend", params={"user_id": "u"}, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def _publish(store: ModelStore, parent: int | None) -> int:
    head = RankingHead()
    return store.publish(head, {"reason": "test", "parent": parent, "metrics": {"click_auc": 0.7}})


def test_admin_promote_and_rollback_need_the_admin_key(tmp_path):
    client, _, s = _client(state_dir=tmp_path, **KEYS)
    store = ModelStore.from_settings(s)
    v1 = _publish(store, None)
    v2 = _publish(store, v1)
    v3 = _publish(store, v2)
    assert client.post("/admin/models/rollback").status_code == 401
    assert client.post("/admin/models/rollback", headers=_bearer("prod-1")).status_code == 403
    assert store.latest_version() == v3
    r = client.post("/admin/models/rollback", headers=_bearer("admin-1"))
    assert r.status_code == 200 and r.json() == {"action": "rollback", "previous_version": v3, "serving_version": v2}
    r = client.post(f"/admin/models/{v3}/promote", headers=_bearer("admin-1"), json={"note": "fixed"})
    assert r.status_code == 200 and store.latest_version() == v3
    r = client.post("/admin/models/rollback", headers=_bearer("admin-1"), json={"to": v1})
    assert r.status_code == 200 and store.latest_version() == v1
    assert client.post("/admin/models/99/promote", headers=_bearer("admin-1")).status_code == 404
    assert client.post("/admin/models/rollback", headers=_bearer("admin-1")).status_code == 409  # nothing older
