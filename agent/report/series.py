"""Every series of a dataset, a tag of a source of a gateway, under one number, and what the
batches' lineage said of it over time.

Lineage arrives as one JSON text per batch, naming the tags present in that batch. The
texts repeat (the same tags window after window) but vary with which on-change tags sent
something, so what is cached is bounded: the last few texts parsed into arrays, and each
distinct per-tag entry (a lineage *variant*) numbered once. Per batch the work is then a
dictionary hit and a few array operations; a variant that differs from a series' current
one opens a new segment of its history (a config change: another unit, filter, rate).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from agent.report.dataset import Footer, Selection
from agent.windows.dataquality import owed_rate_ns

_CACHED = 256  # lineage texts kept parsed


@dataclass(frozen=True)
class LineageView:
    """One gateway's lineage text as arrays over the selected series it names."""

    series: np.ndarray  # int64
    rate_ns: np.ndarray  # float64: the period each owes a sample per; inf if none owed
    variant: np.ndarray  # int64: the number of each series' lineage entry
    names: dict[str, int]  # "source/tag" -> position in these arrays


class SeriesIndex:
    def __init__(self, selection: Selection) -> None:
        self.selection = selection
        self.keys: list[tuple[str, str, str]] = []  # (gateway, source, tag)
        self._numbers: dict[tuple[str, str, str], int] = {}  # -1: not selected
        self._variants: dict[tuple[int, str], int] = {}
        self.variants: list[dict[str, Any]] = []  # lineage entry of each variant
        self.current = np.empty(0, np.int64)  # each series' variant now, -1 none yet
        self.history: list[list[tuple[int, int]]] = []  # per series: (variant, since ns)
        self.rate_ns = np.empty(0, np.float64)  # latest owed period per series
        self._views: OrderedDict[tuple[str, str], LineageView] = OrderedDict()
        self.revision = 0  # bumped whenever a series' lineage entry changes (or first comes)

    @property
    def count(self) -> int:
        return len(self.keys)

    def number(self, gateway: str, source: str, tag: str) -> int:
        """The series' number, registering it; -1 if the selection leaves it out."""
        key = (gateway, source, tag)
        found = self._numbers.get(key)
        if found is not None:
            return found
        if not self.selection.wants(f"{source}/{tag}"):
            self._numbers[key] = -1
            return -1
        number = self._numbers[key] = len(self.keys)
        self.keys.append(key)
        self.history.append([])
        if number >= self.current.shape[0]:
            size = max(64, 2 * number)
            self.current = np.concatenate([self.current, np.full(size - number, -1, np.int64)])
            self.rate_ns = np.concatenate([self.rate_ns, np.full(size - number, math.inf)])
        return number

    def view(self, footer: Footer) -> LineageView:
        """The batch's lineage as arrays; a series whose entry changed starts a new segment
        of its history at this window."""
        key = (footer.gateway, footer.lineage)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._parse(footer.gateway, footer.lineage)
            if len(self._views) > _CACHED:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(key)
        changed = np.flatnonzero(self.current[view.series] != view.variant)
        if changed.size:
            self.revision += 1
        for index in changed.tolist():
            series, variant = int(view.series[index]), int(view.variant[index])
            self.history[series].append((variant, footer.window_start))
            self.current[series] = variant
            self.rate_ns[series] = view.rate_ns[index]
        return view

    def _parse(self, gateway: str, text: str) -> LineageView:
        entries: dict[str, dict[str, Any]] = json.loads(text)
        series, rates, variants, names = [], [], [], {}
        for name, entry in entries.items():
            source, _, tag = name.partition("/")
            number = self.number(gateway, source, tag)
            if number < 0:
                continue
            spelled = json.dumps(entry, sort_keys=True)
            variant = self._variants.get((number, spelled))
            if variant is None:
                variant = self._variants[(number, spelled)] = len(self.variants)
                self.variants.append(entry)
            series.append(number)
            rates.append(owed_rate_ns(entry))
            variants.append(variant)
            names[name] = len(series) - 1
        return LineageView(
            np.array(series, np.int64),
            np.array(rates, np.float64),
            np.array(variants, np.int64),
            names,
        )

    def row_series(
        self,
        gateways: list[str],
        gateway: np.ndarray,
        source: pa.ChunkedArray,
        tag: pa.ChunkedArray,
    ) -> np.ndarray:
        """The series of each row: ``gateway`` indexes ``gateways`` per row, ``source`` and
        ``tag`` are dictionary columns whose chunks share one dictionary (unified); -1 for
        rows the selection leaves out."""
        if not len(gateway):
            return np.empty(0, np.int64)
        sources = source.chunk(0).dictionary.to_pylist()
        tags = tag.chunk(0).dictionary.to_pylist()
        codes = (gateway * len(sources) + _indices(source)) * len(tags) + _indices(tag)
        lookup = np.full(len(gateways) * len(sources) * len(tags), -1, np.int64)
        present = np.flatnonzero(np.bincount(codes, minlength=lookup.shape[0]))
        for code in present.tolist():  # only pairs that occur: not every source x tag
            rest, t = divmod(code, len(tags))
            g, s = divmod(rest, len(sources))
            lookup[code] = self.number(gateways[g], sources[s], tags[t])
        return lookup[codes]

    def gateways(self) -> list[str]:
        return sorted({gateway for gateway, _, _ in self.keys})

    def names(self) -> list[str]:
        """Display names: ``source/tag``, or ``gateway:source/tag`` when several gateways
        are in the dataset (two of them may both have a ``plc1``)."""
        several = len(self.gateways()) > 1
        return [f"{g}:{s}/{t}" if several else f"{s}/{t}" for g, s, t in self.keys]

    def lineage(self, series: int) -> dict[str, Any]:
        """The series' lineage as its latest batch gave it ({} if no batch described it)."""
        variant = int(self.current[series])
        return self.variants[variant] if variant >= 0 else {}

    def changes(self, series: int) -> list[dict[str, Any]]:
        """The series' lineage over time: one entry per change, with when it took effect;
        a segment repeating the previous one's entry is merged into it."""
        merged: list[dict[str, Any]] = []
        for variant, since in self.history[series]:
            if merged and merged[-1]["lineage"] == self.variants[variant]:
                continue
            merged.append({"since_ns": since, "lineage": self.variants[variant]})
        return merged


def _indices(column: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([chunk.indices.to_numpy() for chunk in column.chunks]).astype(np.int64)
