"""The docstring examples run and pass: every module of the services and the kernel whose source
holds an example (``>>>``) is found by reading the files, so a new example runs without a list to
keep. Reading rather than ``--doctest-modules``, which imports every module of every package (the
CLI, torch users), slow and with side effects."""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

from streamrec.settings import REPO_ROOT

PACKAGES = ("streamrec", "consumers", "learner", "index_updater", "serving", "launcher")


def modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                rel = path.relative_to(REPO_ROOT).with_suffix("")
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                found.append(".".join(parts))
    return found


MODULES_WITH_EXAMPLES = modules_with_examples()


def test_examples_are_found() -> None:
    assert "learner.online" in MODULES_WITH_EXAMPLES and len(MODULES_WITH_EXAMPLES) >= 10, MODULES_WITH_EXAMPLES


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test, out=out.write)
    assert runner.tries > 0, f"{name} has no examples any more: drop it from the list"
    assert runner.failures == 0, out.getvalue()
