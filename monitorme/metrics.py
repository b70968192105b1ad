"""In-memory counters and gauges, rendered as Prometheus text for ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable


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
        return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
