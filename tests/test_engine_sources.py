"""The compiled engine is not written twice (issue #16).

``tests/_shared_lines.py`` measures the substantive lines of the ``.pyx`` /
``.pxi`` sources that also occur in the package's ``.py`` files.  The target
is at most 5 %; until the one-source conversion lands, a ratchet keeps the
figure from growing (lower ``RATCHET_PERCENT`` whenever it drops)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _shared_lines import measure, substantive_lines  # noqa: E402

TARGET_PERCENT = 5.0
RATCHET_PERCENT = 36.0   # measured 35.5 % (690 of 1945 lines) on branch h1-onesource


def _percent() -> float:
    n, total, _ = measure()
    assert total > 0, "no compiled sources found"
    return 100.0 * n / total


def test_shared_lines_do_not_grow() -> None:
    assert _percent() <= RATCHET_PERCENT


@pytest.mark.xfail(strict=True, reason="issue #16: the engine is still written twice (.pxi and _pycore.py)")
def test_shared_lines_at_most_5_percent() -> None:
    assert _percent() <= TARGET_PERCENT


def test_measure_counts_a_copied_line(tmp_path: "os.PathLike[str]") -> None:
    """The measure sees a line copied from a .py file into a .pxi, and skips
    comments, docstrings and short lines."""
    pkg = str(tmp_path)
    with open(os.path.join(pkg, "a.py"), "w") as f:
        f.write('"""doc string line that is long"""\nx = compute_something(1, 2)\n# a comment that is long enough\n')
    with open(os.path.join(pkg, "b.pxi"), "w") as f:
        f.write('"""doc string line that is long"""\n    x = compute_something(1, 2)\n'
                '# a comment that is long enough\ncdef int y = other_thing(3)\nelse:\n')
    n, total, shared = measure(pkg)
    assert (n, total) == (1, 2), shared
    assert substantive_lines('s = """\nprose inside a string\n"""\nreturn 0\n') == []
