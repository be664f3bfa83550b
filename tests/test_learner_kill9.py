"""``kill -9`` of the learner process: it resumes from its checkpoint, losing neither model nor events."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.stack import settings_env
from learner.checkpoint import Checkpointer
from streamrec import bus
from streamrec.model_store import ModelStore
from streamrec.schemas import encode
from tests.conftest import isolated_settings
from tests.polling import wait_for
from tests.test_learner_service import labelled_traffic

REPO = Path(__file__).resolve().parent.parent
PER_BATCH = 120 * 4 + 40  # 4 shown items per request close, plus 40 click positives at once


def _start(s, log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "learner"], cwd=REPO, env=settings_env(s), stdout=f, stderr=subprocess.STDOUT
        )


@pytest.mark.slow
def test_kill_9_resumes_from_checkpoint(kafka_broker, redis_server, tmp_path):
    s = isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path / "state",
        learner={
            "label_window_s": 0.5,
            "publish_every_updates": 5,
            "publish_every_s": 0.3,
            "batch_size": 16,
            "max_batch_delay_s": 0.05,
            "checkpoint_every_s": 0.2,
            "follow_vectors": False,
        },
        drift={"warmup": 100_000},
    )
    store, ckpt = ModelStore.from_settings(s), Checkpointer(s.state_dir / "learner")
    log = tmp_path / "learner.log"
    producer = bus.make_producer(s)

    sent = 0

    def send(tag: str) -> None:
        nonlocal sent
        for ev in labelled_traffic(120, t0=int(time.time() * 1000), tag=tag):
            producer.send(s.topic.events, key=ev.user_id, value=encode(ev))
            sent += 1
        producer.flush(10)

    def examples() -> int:
        st = ckpt.load()
        return st["core"]["examples"] if st else -1

    proc = _start(s, log)
    try:
        wait_for(lambda: store.latest_version() >= 1, f"the initial version (log: {log})", timeout_s=60)
        send("a")
        wait_for(lambda: examples() == PER_BATCH, "batch a in a checkpoint", timeout_s=60)
        before = ckpt.load()
        send("b")
        time.sleep(0.3)  # somewhere in the middle of batch b
        os.kill(proc.pid, 9)
        proc.wait(10)
        killed_at = examples()
        assert PER_BATCH <= killed_at <= 2 * PER_BATCH

        proc = _start(s, log)
        wait_for(lambda: examples() == 2 * PER_BATCH, f"batch b learned after the restart (log: {log})", timeout_s=90)
        time.sleep(1.0)  # nothing is learned twice after the restart either
        assert examples() == 2 * PER_BATCH
        # the records in the checkpointed state: each one sent, once (the killed run's tail is re-read)
        wait_for(lambda: sum(ckpt.load()["events_in_state"].values()) == sent, "every record in the state once")
        v = wait_for(
            lambda: (lambda m: store.latest_version() if m["examples"] == 2 * PER_BATCH else None)(
                store.meta(store.latest_version())
            ),
            "a version trained on both batches",
            timeout_s=30,
        )
        reasons = [m["reason"] for m in store.list()]
        assert reasons.count("initial") == 1, reasons  # the model was resumed, not started over
        assert store.meta(v)["updates"] > before["core"]["champion"]["updates"]
    finally:
        proc.terminate()
        proc.wait(30)
        producer.close(5)
    assert proc.returncode == 0, f"learner did not drain on SIGTERM (log: {log})"
