"""``python -m learner``: the learner service alone, configured from ``STREAMREC_*`` (as in compose)."""

from __future__ import annotations

from streamrec.lifecycle import default_threads, limit_cpu_threads, setup_logging, stop_on_signals
from streamrec.metrics import serve_metrics
from streamrec.settings import Settings


def main() -> None:
    setup_logging("learner")
    s = Settings()
    default_threads(s.cpu_threads)
    from learner.service import run  # torch loads after the thread defaults are set

    limit_cpu_threads(s.cpu_threads)
    stop = stop_on_signals()
    serve_metrics(s.metrics_port)
    run(s, stop)


if __name__ == "__main__":
    main()
