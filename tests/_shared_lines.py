"""How much of the compiled engine is written twice.

Counts the substantive lines of the package's compiled sources (``.pyx`` and
``.pxi``) that also occur, verbatim after stripping indentation, in one of the
package's ``.py`` files.  Substantive: code, not blank, not a comment, not in
a docstring or other triple-quoted string, and at least ``MIN_CHARS`` long
(``else:``, ``return 0``, ``pass`` and the like say nothing about duplicated
logic).  Run as a script to see the figures and the shared lines::

    python tests/_shared_lines.py [package_dir]
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, List, Set, Tuple

MIN_CHARS = 16
PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "quorumlock")


def substantive_lines(text: str) -> List[str]:
    """The substantive lines of one source file, stripped."""
    out: List[str] = []
    in_str = None  # the open triple quote, while inside a triple-quoted string
    for raw in text.splitlines():
        line = raw.strip()
        if in_str is not None:
            if in_str in line:
                in_str = None
            continue
        if not line or line.startswith("#"):
            continue
        for q in ('"""', "'''"):
            i = line.find(q)
            if i >= 0 and line.count(q) % 2 == 1:
                in_str = q
                line = line[:i].strip()  # code before the string opens still counts
                break
        if len(line) >= MIN_CHARS and not line.startswith(('"""', "'''")):
            out.append(line)
    return out


def _files(pkg: str, exts: Tuple[str, ...]) -> Iterable[str]:
    for root, dirs, files in os.walk(pkg):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in sorted(files):
            if f.endswith(exts):
                yield os.path.join(root, f)


def measure(pkg: str = PKG) -> Tuple[int, int, List[Tuple[str, str]]]:
    """(shared, total, [(file, line)...]) over the compiled sources of ``pkg``."""
    py: Set[str] = set()
    for path in _files(pkg, (".py",)):
        with open(path, encoding="utf-8") as f:
            py.update(substantive_lines(f.read()))
    total = 0
    shared: List[Tuple[str, str]] = []
    for path in _files(pkg, (".pyx", ".pxi")):
        with open(path, encoding="utf-8") as f:
            lines = substantive_lines(f.read())
        total += len(lines)
        shared += [(os.path.relpath(path, pkg), ln) for ln in lines if ln in py]
    return len(shared), total, shared


if __name__ == "__main__":
    n, total, lines = measure(sys.argv[1] if len(sys.argv) > 1 else PKG)
    for path, ln in lines:
        print(f"{path}: {ln}")
    print(f"{n} of {total} substantive compiled lines also in .py files ({100.0 * n / max(total, 1):.1f} %)")
