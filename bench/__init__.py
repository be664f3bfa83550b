"""Benchmarks, run from the repository root as modules: ``python -m bench.quality --search``.

As modules they import the project's packages, not their neighbours: run as a file, bench/ would be
first on ``sys.path`` and bench/learner.py and bench/serving.py would shadow the learner and
serving packages. The tests import their shared parts (``bench.feature_reference``,
``bench.quality``, …) the same way."""
