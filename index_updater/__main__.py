"""``python -m index_updater``: the index updater alone, configured from ``STREAMREC_*`` (as in compose)."""

from __future__ import annotations

from index_updater.service import run
from streamrec.lifecycle import setup_logging, stop_on_signals
from streamrec.metrics import serve_metrics
from streamrec.settings import Settings


def main() -> None:
    setup_logging("index-updater")
    s = Settings()
    stop = stop_on_signals()
    serve_metrics(s.metrics_port)
    run(s, stop)


if __name__ == "__main__":
    main()
