"""`streamrec model rollback` without a version serves the current version's parent, like the
cockpit's button (both use ModelStore.previous_version); `streamrec model query-encoder` lists and
picks the fine-tuned query encoder's versions."""

from typer.testing import CliRunner

from launcher.cli import app
from streamrec.model_store import ModelStore
from streamrec.query_versions import QueryVersions
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


def test_an_operator_picks_the_served_query_encoder_version(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMREC_STATE_DIR", str(tmp_path))
    store = QueryVersions(tmp_path / "query_encoders")
    for gap in (0.01, 0.02):
        store.publish(lambda d: (d / "config.json").write_text("{}"), {"gap": gap}, keep=3)
    runner = CliRunner()
    listing = runner.invoke(app, ["model", "query-encoder"])
    assert listing.exit_code == 0 and '* {"created_ms"' in listing.output and '"gap": 0.02' in listing.output
    assert runner.invoke(app, ["model", "query-encoder", "0"]).exit_code == 0 and store.current() == 0
    assert runner.invoke(app, ["model", "query-encoder", "1"]).exit_code == 0 and store.current() == 1
    missing = runner.invoke(app, ["model", "query-encoder", "7"])
    assert missing.exit_code == 1 and store.current() == 1
