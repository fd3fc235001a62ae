"""Choose the engine: the compiled core, or its pure-Python twin.

``QUORUMLOCK_NO_EXTENSIONS=1`` (any non-empty value but ``0``) selects the twin.
Otherwise the compiled ``quorumlock._core`` is used when it was built, and the
twin when it was not.  ``IMPLEMENTATION`` says which one is in use
(``"cython"`` or ``"python"``); ``tests/test_backend.py`` fails when a build
that has the extension silently fell back to the twin."""

from __future__ import annotations

import os

NO_EXTENSIONS = os.environ.get("QUORUMLOCK_NO_EXTENSIONS", "") not in ("", "0")

if NO_EXTENSIONS:
    from . import _pycore as core
else:
    try:
        from . import _core as core  # type: ignore[no-redef]
    except ImportError:  # not built: sdist installed without a compiler, or a plain checkout
        from . import _pycore as core  # type: ignore[no-redef]

IMPLEMENTATION: str = core.IMPLEMENTATION

__all__ = ["core", "IMPLEMENTATION", "NO_EXTENSIONS"]
