"""Model snapshots: versions, atomic visibility to a reader in another process, rollback."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from streamrec.model_store import ModelNotFound, ModelStore
from streamrec.ranking import N_FEATURES, RankingHead


def _head(bias: float) -> RankingHead:
    h = RankingHead()
    with torch.no_grad():
        h.click_wide.bias.fill_(bias)
    return h


def test_publish_load_list_rollback(tmp_path):
    store = ModelStore(tmp_path)
    assert store.latest_version() == 0
    with pytest.raises(ModelNotFound):
        store.load()
    v1 = store.publish(_head(-1.0), {"reason": "initial", "metrics": {"click_auc": None}})
    v2 = store.publish(_head(1.0), {"reason": "periodic", "parent": v1})
    assert (v1, v2) == (1, 2) and store.latest_version() == 2
    v, head, meta = store.load()
    assert v == 2 and meta["reason"] == "periodic" and meta["feature_schema"]["names"] == head.feature_names
    assert head.predict(np.zeros((1, N_FEATURES), np.float32))[0][0] > 0.5
    store.rollback(1)
    assert store.latest_version() == 1 and store.load()[2]["reason"] == "initial"
    assert [(m["version"], m["current"]) for m in store.list()] == [(1, True), (2, False)]
    assert store.publish(_head(0.0), {"reason": "periodic"}) == 3  # numbers never reused
    with pytest.raises(ModelNotFound):
        store.rollback(42)


def test_prune_keeps_the_newest_the_served_and_the_protected(tmp_path):
    store = ModelStore(tmp_path)
    for k in range(8):
        store.publish(_head(float(k)), {"reason": f"v{k + 1}"})
    store.rollback(2)
    assert store.prune(keep=3, protect={4}) == [1, 3, 5]
    assert store.versions() == [2, 4, 6, 7, 8] and store.latest_version() == 2
    assert store.load()[0] == 2 and store.publish(_head(0.0), {}) == 9
    with pytest.raises(ValueError):
        store.prune(keep=0)


READER = textwrap.dedent("""
    import json, sys, time
    from streamrec.model_store import ModelStore
    store, seen, deadline = ModelStore(sys.argv[1]), [], time.monotonic() + 60
    target = int(sys.argv[2])
    while time.monotonic() < deadline:
        v = store.latest_version()
        if v and (not seen or seen[-1][0] != v):
            version, head, meta = store.load(v)          # must never see a partial snapshot
            seen.append((version, meta["reason"]))
            if version >= target:
                break
        time.sleep(0.002)
    print(json.dumps(seen))
""")


def test_a_reader_process_only_sees_complete_versions(tmp_path):
    store = ModelStore(tmp_path)
    store.publish(_head(0.0), {"reason": "v1"})
    reader = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), "25"], stdout=subprocess.PIPE, text=True)
    for k in range(2, 26):
        store.publish(_head(float(k)), {"reason": f"v{k}"})
    out, _ = reader.communicate(timeout=90)
    seen = json.loads(out)
    assert reader.returncode == 0 and seen[-1] == [25, "v25"]
    assert all(reason == f"v{v}" for v, reason in seen)  # the weights and meta of one version, together
