"""Process lifecycle shared by the services: logging and graceful stop on SIGTERM/SIGINT.

A service loop checks ``stop.is_set()`` between batches, finishes the batch in hand, commits,
and returns: SIGTERM drains, it never abandons work half-done.
"""

from __future__ import annotations

import logging
import os
import signal
import threading


def setup_logging(service: str) -> None:
    level = os.environ.get("STREAMREC_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "urllib3", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def stop_on_signals(stop: threading.Event | None = None) -> threading.Event:
    """Set (and return) ``stop`` on SIGTERM/SIGINT; only possible from the main thread."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _handler(signum, _frame):
            logging.getLogger(__name__).info("received %s, draining", signal.Signals(signum).name)
            stop.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
    return stop


def default_threads(n: int) -> None:
    """Make ``n`` every thread's OpenMP / BLAS default; call it before torch or FAISS is imported.

    Why the environment: OpenMP's thread count is per thread, read from ``OMP_NUM_THREADS`` when the
    runtime loads; ``limit_cpu_threads`` below sets it for the calling thread only. Serving runs its
    requests on threadpool threads, whose default was every core: each head or FAISS call there
    started a team whose other thread then spun at a barrier, measured at 8 ms of a core per /search
    (README: serving). A variable the operator set is kept."""
    if n <= 0:
        return
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(n))


def limit_cpu_threads(n: int) -> None:
    """Cap intra-op threads of every pool in the process; 0 keeps the libraries' defaults.

    torch, FAISS and numpy each bring their own OpenMP / OpenBLAS runtime, so one call must reach
    all of them: on a busy small host, a parallel region waiting for an unscheduled thread turned a
    5 ms matrix product into 50 ms. The pools are loaded first so the limit reaches them.
    """
    if n <= 0:
        return
    import faiss  # noqa: F401  (loads FAISS's OpenMP and OpenBLAS)
    import numpy  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(limits=n)
