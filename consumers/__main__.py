"""``python -m consumers``: run the ingestion service with settings from the environment."""

from __future__ import annotations

from consumers.service import run
from streamrec.lifecycle import setup_logging, stop_on_signals
from streamrec.metrics import serve_metrics
from streamrec.settings import Settings


def main() -> None:
    setup_logging("consumers")
    settings = Settings()
    serve_metrics(settings.metrics_port)
    run(settings, stop_on_signals())


if __name__ == "__main__":
    main()
