"""Progress while the benchmark works: tqdm when installed, else one stderr line.

The bar is updated between steps only, never inside a measured loop."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, List, Optional, TextIO

__all__ = ["LogCapture", "Progress"]


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream: Optional[TextIO] = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._desc = ""
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                self._bar = None
            else:
                self._bar = tqdm(total=self.total, file=self.stream, unit="step", dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")  # fmt: skip

    def step(self, desc: str) -> None:
        """Say what runs now."""
        self._desc = desc
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_description_str(desc[:48].ljust(48), refresh=True)
        else:
            el = time.monotonic() - self._t0
            self.stream.write(f"\r[{self.done:3d}/{self.total}] {el:6.1f}s {desc[:60]:<60}")
            self.stream.flush()

    def advance(self, k: int = 1) -> None:
        self.done += k
        if self.enabled and self._bar is not None:
            self._bar.update(k)

    def write(self, msg: str) -> None:
        """A line that must not be overwritten by the bar."""
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        else:
            self.stream.write(("\n" if self.enabled else "") + msg + "\n")
            self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            el = time.monotonic() - self._t0
            self.stream.write(f"\r[{self.done:3d}/{self.total}] {el:6.1f}s done{' ' * 60}\n")
            self.stream.flush()


class LogCapture(logging.Handler):
    """Collects the ``quorumlock`` logger's lines (reconnects, restart-guard
    notices) while a row runs, instead of letting them cut through the bar;
    the runner puts them in the row's ``extra.client_log``."""

    def __init__(self, name: str = "quorumlock") -> None:
        super().__init__(logging.INFO)
        self.messages: List[str] = []
        self._logger = logging.getLogger(name)
        self._saved = (self._logger.propagate, self._logger.level)
        self._logger.addHandler(self)
        self._logger.propagate = False
        if self._logger.level == logging.NOTSET or self._logger.level > logging.INFO:
            self._logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 50:
            self.messages.append(f"{record.levelname}: {record.getMessage()}")

    def close(self) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate, level = self._saved
        self._logger.setLevel(level)
        super().close()
