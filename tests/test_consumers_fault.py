"""Fault test: 40k+ DIGINETICA events (``STREAMREC_FAULT_EVENTS``) through real consumer
processes that are killed with SIGKILL at random (two of them share the partitions for part of the
run), and through a learner process that is killed too. Afterwards every Redis feature equals a
reference computed straight from the file, the DLQ holds exactly the malformed records mixed in,
the quarantine topic exactly the bot traffic, and the learner's checkpoint holds every record of
the topic exactly once.

The stream and the reference live in ``bench/feature_reference.py`` (``bench/chaos.py`` runs the
same checks on 1M events with every service of the stack killed at random)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import isolated_settings  # noqa: E402

from bench.feature_reference import BOT, FEATURE_ENV, Reference, build_stream, feature_mismatches, rejection_mismatches
from launcher.stack import settings_env
from learner.checkpoint import Checkpointer
from streamrec import bus
from streamrec.datasets import diginetica
from streamrec.features import FeatureStore
from streamrec.schemas import encode
from streamrec.settings import REPO_ROOT
from tests.polling import wait_for

pytestmark = pytest.mark.slow

N_SESSION_EVENTS = int(os.environ.get("STREAMREC_FAULT_EVENTS", "40000"))
KILLS = 6
PRODUCE_PER_S = 4000  # paced so that the six kills (~12 s) land while records still arrive
LEARNER_KILLS = 3


# --- consumer processes ------------------------------------------------------------------------


class Fleet:
    """Real ``python -m consumers`` processes sharing one group."""

    def __init__(self, settings, log_dir):
        from launcher.embedded import child_env

        self.env = (
            child_env(
                settings.replace(
                    kafka={
                        "consumer_session_timeout_ms": 4000,
                        "consumer_heartbeat_ms": 400,
                        "consumer_max_poll_interval_ms": 20_000,
                    }
                ).to_env()
            )
            | {"STREAMREC_LOG_LEVEL": "WARNING"}
            | FEATURE_ENV
        )
        self.log_dir = log_dir
        self.live: list[subprocess.Popen] = []
        self.started = 0
        self.killed = 0

    def start(self) -> subprocess.Popen:
        log = open(self.log_dir / f"consumer{self.started}.log", "wb")
        p = subprocess.Popen(
            [sys.executable, "-m", "consumers"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.fspath(REPO_ROOT),
        )
        log.close()
        self.started += 1
        self.live.append(p)
        return p

    def check_alive(self) -> None:
        crashed = [p for p in self.live if p.poll() is not None]
        assert not crashed, f"a consumer exited on its own (code {crashed[0].returncode}); see {self.log_dir}"

    def kill9(self, p: subprocess.Popen) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.live.remove(p)
        self.killed += 1

    def stop_all(self) -> list[int]:
        for p in self.live:
            p.terminate()
        codes = [p.wait(60) for p in self.live]
        self.live.clear()
        return codes

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.live:  # a failed test leaves no consumer behind
            p.kill()
            p.wait()


class Learner:
    """A real ``python -m learner`` process, restarted after each SIGKILL as the supervisor does."""

    def __init__(self, settings, log_dir):
        self.env = settings_env(settings) | FEATURE_ENV
        self.log = log_dir / "learner.log"
        self.ckpt = Checkpointer(settings.state_dir / "learner")
        self.proc: subprocess.Popen | None = None
        self.killed = 0

    def start(self) -> None:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "learner"], env=self.env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT
            )

    def in_state(self) -> dict[int, int]:
        """Records per partition in the last checkpoint."""
        st = self.ckpt.load()
        return {int(p): n for p, n in (st or {}).get("events_in_state", {}).items()}

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"the learner exited on its own; see {self.log}"
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.killed += 1

    def __enter__(self) -> Learner:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_kill9_and_rebalances_lose_nothing_and_count_nothing_twice(kafka_broker, redis_server, tmp_path, data_dir):
    settings = isolated_settings(
        kafka_broker,
        redis_server,
        tmp_path / "state",
        kafka={"consumer_session_timeout_ms": 4000, "consumer_heartbeat_ms": 400},
        learner={
            "follow_vectors": False,
            "checkpoint_every_s": 1.0,  # kills land between checkpoints: the restart re-reads a tail
        },
    )
    rng = random.Random(20160101)
    stream = build_stream(data_dir, N_SESSION_EVENTS, rng)
    raw_items = {e.item_id for _k, _v, e in stream if e is not None and not e.item_id.startswith("sg")}
    ops = list(diginetica.catalog(data_dir, raw_items))
    with Fleet(settings, tmp_path) as fleet, Learner(settings, tmp_path) as learner:
        fs = FeatureStore.from_settings(settings)
        producer = bus.make_producer(settings, linger_ms=20, batch_size=512 * 1024)

        for op in ops:  # the catalog first, so category affinity does not depend on topic interleaving
            producer.send(settings.topic.catalog, key=op.item_id, value=encode(op))
        producer.flush()
        fleet.start()
        learner.start()
        deadline = time.monotonic() + 120
        while sum(a is not None for a in fs.item_attributes([op.item_id for op in ops])) < len(ops):
            assert time.monotonic() < deadline, "catalog not applied"
            time.sleep(0.2)

        last_offset: dict[int, int] = {}

        def produce():
            # paced, so that the kills (and the learner's restarts, seconds each) land while records
            # still arrive: unpaced, the learner reads the whole stream before its second restart
            futures, started = [], time.monotonic()
            for i in range(0, len(stream), 1000):
                futures += [producer.send(settings.topic.events, key=k, value=v) for k, v, _e in stream[i : i + 1000]]
                time.sleep(max(0.0, started + (i + 1000) / PRODUCE_PER_S - time.monotonic()))
            producer.flush()
            for f in futures:
                md = f.get(timeout=60)
                last_offset[md.partition] = max(last_offset.get(md.partition, -1), md.offset)

        sender = threading.Thread(target=produce)
        sender.start()

        # the reference, while the consumers work
        ref = Reference.of(stream, categories={op.item_id: op.category for op in ops if op.category})
        assert max(ref.item_bucket.values()) <= BOT.item_limit  # so no item_burst, whatever the order

        # the learner is killed once its restarted process has checkpointed 1.5k–7.5k new records (so
        # every kill hits a learner that is reading, between two checkpoints) and restarted half a
        # second later, the supervisor's first back-off
        learner_mid_stream: list[bool] = []

        def kill_learner() -> None:
            lrng, seen = random.Random(9), 0
            while learner.killed < LEARNER_KILLS:
                target = seen + lrng.randint(1_500, 7_500)
                wait_for(lambda t=target: sum(learner.in_state().values()) >= t, "learner progress", 120, 0.2)
                time.sleep(lrng.uniform(0.0, 1.0))
                seen = sum(learner.in_state().values())
                learner_mid_stream.append(seen < len(stream))
                learner.kill9()
                time.sleep(0.5)
                learner.start()

        chaos_learner = threading.Thread(target=kill_learner)
        chaos_learner.start()

        # chaos: SIGKILL at random instants; two consumers for the middle of the run; one kill lands
        # right after a start, while the group is rebalancing
        total = len(stream)
        mid_stream_kills = 0
        for k in range(KILLS):
            time.sleep(rng.uniform(0.7, 2.5))
            want = 2 if 1 <= k <= 3 else 1
            while len(fleet.live) < want:
                fleet.start()
            fleet.check_alive()
            victim = rng.choice(fleet.live)
            if k == 2:  # the newest consumer is joining: kill the other one mid-rebalance
                time.sleep(rng.uniform(1.0, 2.0))
                victim = fleet.live[0]
            applied = sum(
                int(fs.r.get(fs.keys.offset(settings.consumers.group, settings.topic.events, p)) or 0)
                for p in range(settings.topic.partitions)
            )
            fleet.kill9(victim)
            mid_stream_kills += applied < total
            if not fleet.live:
                fleet.start()
        sender.join()
        chaos_learner.join()
        assert mid_stream_kills >= 5, "the kills must land while events are still being applied"
        assert learner_mid_stream == [True] * LEARNER_KILLS, "the learner kills must land while it is still reading"

        def offset_done() -> bool:
            r = fs.r
            for p, last in last_offset.items():
                v = r.get(fs.keys.offset(settings.consumers.group, settings.topic.events, p))
                if v is None or int(v) < last + 1:
                    return False
            return not any(
                r.llen(fs.keys.outbox(settings.consumers.group, settings.topic.events, p)) for p in last_offset
            )

        deadline = time.monotonic() + 180
        while not offset_done():
            assert time.monotonic() < deadline, "consumers did not finish"
            fleet.check_alive()
            time.sleep(0.5)
        codes = fleet.stop_all()
        assert codes == [0] * len(codes), "SIGTERM must drain and exit cleanly"

        # the learner: every record of the topic in its checkpointed state, exactly once
        ends = {p: last + 1 for p, last in last_offset.items()}
        deadline = time.monotonic() + 180
        while (learner.ckpt.load() or {}).get("offsets") != ends:
            assert time.monotonic() < deadline, f"the learner did not reach the end; see {learner.log}"
            assert learner.proc is not None and learner.proc.poll() is None, f"learner exited; see {learner.log}"
            time.sleep(0.5)
        assert learner.proc is not None
        learner.proc.terminate()
        assert learner.proc.wait(60) == 0, f"the learner must drain on SIGTERM; see {learner.log}"
        assert learner.in_state() == ends, "records in the learner's state per partition vs the topic"
        assert sum(ends.values()) == total

    # --- every feature equals the reference; rejections are exactly what was mixed in -------------
    assert feature_mismatches(fs, ref, settings.redis.prefix) == []
    assert rejection_mismatches(settings, fs, ref) == []
