"""The bench plots: no legend over a panel.

First-round code, on bench/results-n3-coalesced.json: "3 legends over
panels" -- the latency CDF's two (inside, lower right, where the slow
curves rise) and the modes plot's (on its bars)."""

from __future__ import annotations

import json
import pathlib
from typing import Any, List

import pytest

pytest.importorskip("matplotlib")

from quorumlock.bench import plots  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent.parent / "bench" / "results-n3-coalesced.json"


def _figures(monkeypatch: Any, tmp_path: pathlib.Path) -> List[Any]:
    figs: List[Any] = []
    real = plots._save

    def keep(fig: Any, path: str) -> None:
        real(fig, path)
        fig.canvas.draw()
        figs.append(fig)

    monkeypatch.setattr(plots, "_save", keep)
    monkeypatch.setattr(plots._plt(), "close", lambda fig=None: None)
    paths = plots.make_plots(json.loads(RESULTS.read_text()), str(tmp_path))
    assert all(pathlib.Path(p).stat().st_size > 1000 for p in paths)
    return figs


def test_no_legend_covers_a_panel(monkeypatch: Any, tmp_path: pathlib.Path) -> None:
    figs = _figures(monkeypatch, tmp_path)
    assert len(figs) == 3
    covering = []
    for fig in figs:
        r = fig.canvas.get_renderer()
        legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends, "every plot has a legend"
        for leg in legends:
            lb = leg.get_window_extent(r)
            for ax in fig.axes:
                if lb.overlaps(ax.get_window_extent(r)):
                    covering.append((fig.axes[0].get_title(), ax.get_title()))
    assert covering == [], f"{len(covering)} legends over panels: {covering}"
