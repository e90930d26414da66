"""Every ``>>>`` example in the package's docstrings runs as a doctest and passes.

A usage sketch that cannot run (a trained net, a dataset, a sweep on disk) is written as a
plain indented code block instead, without prompts, so that no module holds a ``>>>`` that
is never checked.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import io
import types
from pathlib import Path

import pytest
import torch

import resnet_dyn

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
PACKAGE = Path(resnet_dyn.__file__).resolve().parent


def modules_with_examples() -> list[str]:
    """Dotted names of the package's modules whose source holds a ``>>>``, found by reading
    the files (a package is its ``__init__.py``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text(encoding="utf-8"):
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def run_examples(module: types.ModuleType) -> doctest.TestResults:
    """``doctest.testmod`` of ``module``; failures are printed (pytest shows them). The
    examples seed torch: the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        return doctest.testmod(module, optionflags=OPTIONS, report=False)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name: str) -> None:
    results = run_examples(importlib.import_module(name))
    assert results.attempted > 0, f"{name} has '>>>' in its source but no doctest example"
    assert results.failed == 0, f"{name}: {results.failed} of {results.attempted} examples failed"


def test_modules_with_examples_are_found() -> None:
    assert MODULES, "no module of the package has a '>>>' example: nothing is checked"
    assert len(set(MODULES)) == len(MODULES)
    for name in MODULES:
        assert importlib.util.find_spec(name) is not None, name


def test_a_wrong_example_is_reported_as_failed() -> None:
    """The check of a module cannot pass vacuously: a module with one right and one wrong
    example gives one failure out of two attempts through the same ``run_examples``."""
    module = types.ModuleType("fake_examples", "Right:\n\n>>> 1 + 1\n2\n")
    exec(
        'def halve(x):\n    """Wrong:\n\n    >>> halve(3)\n    1\n    """\n    return x / 2\n',
        module.__dict__,
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = run_examples(module)
    assert (results.failed, results.attempted) == (1, 2)
    assert "Failed example:\n    halve(3)" in printed.getvalue()
    assert "Got:\n    1.5" in printed.getvalue()


def _wrong_example() -> None:
    """
    >>> sorted({3, 1, 2})
    [1, 2, 3, 4]
    """


def test_doctest_runner_reports_a_wrong_expected_output() -> None:
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    with contextlib.redirect_stdout(io.StringIO()):
        for test in doctest.DocTestFinder().find(_wrong_example, globs={}):
            runner.run(test)
        results = runner.summarize(verbose=False)
    assert (results.failed, results.attempted) == (1, 1)
