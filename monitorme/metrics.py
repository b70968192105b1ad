"""In-memory counters and gauges, rendered as Prometheus text for ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt


class Histogram:
    """A Prometheus histogram fed a whole batch at a time (one ``np.histogram`` per batch, not per value)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(sorted(bounds), dtype=np.float64)
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # the last bucket is +Inf
        self.sum = 0.0

    def observe_many(self, values: npt.NDArray[np.float64]) -> None:
        if values.size:
            # side="left": a value equal to a bound counts in that bucket (Prometheus' le)
            np.add.at(self.counts, np.searchsorted(self.bounds, values, side="left"), 1)
            self.sum += float(values.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket, as PromQL's ``histogram_quantile`` does."""
        return histogram_quantile(q, list(self.bounds), list(self.counts))


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float:
    """The ``q`` quantile of per-bucket (not cumulative) ``counts``; the last count is the +Inf bucket.

    >>> histogram_quantile(0.5, [0.01, 0.02], [0, 10, 0])
    0.015
    """
    total = sum(counts)
    if total == 0:
        return float("nan")
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return float(bounds[-1])  # beyond the last bound: all we know is "more than this"
            low = float(bounds[i - 1]) if i else 0.0
            return low + (float(bounds[i]) - low) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


class Metrics:
    """A flat registry: ``name{label="v"}`` -> value; cheap enough for per-batch updates.

    >>> m = Metrics()
    >>> m.inc("monitorme_rejected_total", 2, reason="not_json")
    >>> m.render().splitlines()[-1]
    'monitorme_rejected_total{reason="not_json"} 2'
    """

    def __init__(self) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._histograms: dict[str, Histogram] = {}

    def describe(self, name: str, kind: str, text: str) -> None:
        self._help[name] = (kind, text)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[(name, tuple(sorted(labels.items())))] = value

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a gauge read at render time (queue depths and the like)."""
        self._gauges[name] = read

    def histogram(self, name: str, bounds: Sequence[float]) -> Histogram:
        """Register (or return) an unlabelled histogram with these bucket upper bounds."""
        if name not in self._histograms:
            self._histograms[name] = Histogram(bounds)
        return self._histograms[name]

    def get(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted(labels.items()))), 0)

    def total(self, name: str) -> float:
        return sum(v for (n, _), v in self._values.items() if n == name)

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self._values.items() if n == name}

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({n for n, _ in self._values} | set(self._gauges))
        for name in names:
            if name in self._help:
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            if name in self._gauges:
                lines.append(f"{name} {_fmt(self._gauges[name]())}")
                continue
            for (n, labels), value in sorted(self._values.items()):
                if n != name:
                    continue
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{label_text}}} {_fmt(value)}" if labels else f"{name} {_fmt(value)}")
        for name, h in sorted(self._histograms.items()):
            if name in self._help:
                kind, text = self._help[name]
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
            cumulative = np.cumsum(h.counts)
            for bound, n in zip(h.bounds, cumulative[:-1], strict=True):
                lines.append(f'{name}_bucket{{le="{_fmt(float(bound))}"}} {int(n)}')
            lines += [f'{name}_bucket{{le="+Inf"}} {int(cumulative[-1])}', f"{name}_sum {_fmt(h.sum)}",
                      f"{name}_count {int(cumulative[-1])}"]
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
