"""The docstring examples run and pass.

An explicit list rather than ``--doctest-modules``: that imports every module of every package
(the CLI, torch/transformers users, bench scripts), which is slow and has side effects; these
are the modules that carry examples.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

MODULES_WITH_EXAMPLES = [
    "learner.online",
    "learner.estimator",
    "learner.drift",
    "streamrec.encoder",
    "streamrec.memory",
    "learner.pipeline",
    "serving.backpressure",
    "streamrec.sessions.learned",
    "streamrec.gcpause",
    "learner.next_item",
]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    assert runner.tries > 0, f"{name} has no examples any more: drop it from the list"
    assert runner.failures == 0, out.getvalue()
