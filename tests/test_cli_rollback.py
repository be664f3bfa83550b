"""`streamrec model rollback` without a version serves the current version's parent, like the
cockpit's button (both use ModelStore.previous_version)."""

from typer.testing import CliRunner

from launcher.cli import app
from streamrec.model_store import ModelStore
from streamrec.ranking import RankingHead


def test_model_rollback_defaults_to_the_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(tmp_path))
    store = ModelStore(tmp_path / "models")
    v1 = store.publish(RankingHead(), {"reason": "initial"})
    v2 = store.publish(RankingHead(), {"reason": "periodic", "parent": v1})
    store.publish(RankingHead(), {"reason": "periodic", "parent": v2})
    runner = CliRunner()
    result = runner.invoke(app, ["model", "rollback"])
    assert result.exit_code == 0, result.output
    assert store.latest_version() == v2
    assert runner.invoke(app, ["model", "rollback", str(v1)]).exit_code == 0 and store.latest_version() == v1
    result = runner.invoke(app, ["model", "rollback"])
    assert result.exit_code == 1 and store.latest_version() == v1
