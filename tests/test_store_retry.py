"""The writers' retry policy (streamrec.store.retry_until_done): what retries, how long it waits,
what it reports and when it gives up."""

from __future__ import annotations

import logging
import threading

import pytest
import redis

from streamrec import store


class Flaky:
    """Raises ``errors`` in turn, then returns ``"done"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def waits(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(store.time, "sleep", slept.append)
    return slept


def test_retries_until_the_call_succeeds_with_capped_doubling_waits(waits, caplog):
    fn = Flaky(*[redis.ConnectionError("down")] * 9)
    seen: list[BaseException] = []
    with caplog.at_level(logging.WARNING, logger=store.log.name):
        assert store.retry_until_done(fn, on_error=seen.append, max_delay_s=5.0) == "done"
    assert fn.calls == 10
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert len(seen) == 9 and all(isinstance(e, redis.ConnectionError) for e in seen)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 9


def test_other_errors_propagate_at_once(waits):
    fn = Flaky(ValueError("a bug, not an outage"))
    seen: list[BaseException] = []
    with pytest.raises(ValueError, match="a bug"):
        store.retry_until_done(fn, on_error=seen.append)
    assert fn.calls == 1 and waits == [] and seen == []


def test_retry_on_chooses_the_errors_that_retry(waits):
    fn = Flaky(OSError("broker"), redis.TimeoutError("slow"))
    assert store.retry_until_done(fn, retry_on=(redis.RedisError, OSError)) == "done"
    assert fn.calls == 3 and len(waits) == 2
    with pytest.raises(OSError):
        store.retry_until_done(Flaky(OSError("broker")))  # the default retries Redis errors only


def test_a_set_stop_raises_the_error_itself_after_reporting_it():
    stop = threading.Event()
    stop.set()
    fn = Flaky(redis.ConnectionError("down"), redis.ConnectionError("down"))
    seen: list[BaseException] = []
    with pytest.raises(redis.ConnectionError):
        store.retry_until_done(fn, stop, on_error=seen.append)
    assert fn.calls == 1 and len(seen) == 1


class StopFlag(threading.Event):
    """A stop flag that records the back-off waited on it and is set during the third one."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.append(timeout or 0.0)
        if len(self.waited) == 3:
            self.set()
        return self.is_set()


def test_the_back_off_waits_on_the_stop_flag(monkeypatch):
    """A SIGTERM during an outage ends the back-off at once instead of sitting it out."""
    monkeypatch.setattr(store.time, "sleep", lambda s: pytest.fail("slept without watching the stop flag"))
    stop = StopFlag()
    fn = Flaky(*[redis.ConnectionError("down")] * 100)
    with pytest.raises(redis.ConnectionError):
        store.retry_until_done(fn, stop)
    assert stop.waited == pytest.approx([0.1, 0.2, 0.4])
    assert fn.calls == 4  # the call after the interrupted wait fails, and the set flag ends the retry
