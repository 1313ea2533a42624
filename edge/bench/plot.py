"""edge-bench charts as PNG images, drawn with OpenCV (edge/ carries no plotting library)."""
from __future__ import annotations

import math

import cv2
import numpy as np

WIDTH, HEIGHT = 960, 560
LEFT, RIGHT, TOP, BOTTOM = 80, 230, 64, 60
# a qualitative palette (BGR) that stays apart in print and for common colour blindness
PALETTE = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148),
           (75, 86, 140), (194, 119, 227), (127, 127, 127), (34, 189, 188), (207, 190, 23), (0, 0, 0)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
GREY, BLACK = (220, 220, 220), (0, 0, 0)


def line_chart(series: dict[str, tuple[list[float], list[float]]], title: str, xlabel: str, ylabel: str,
               log_x: bool = False, steps: bool = False, y_range: tuple[float, float] | None = None
               ) -> np.ndarray:
    """One line per series name (x values, y values); `steps` draws a staircase, as for a CDF."""
    img = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys = np.concatenate([np.asarray(y, float) for _, y in series.values()])
    x_lo, x_hi = _padded_range(xs, log_x)
    y_lo, y_hi = y_range or (0.0, float(ys.max()) * 1.1 if ys.size and ys.max() > 0 else 1.0)
    px = _axis(x_lo, x_hi, LEFT, WIDTH - RIGHT, log_x)
    py = _axis(y_lo, y_hi, HEIGHT - BOTTOM, TOP, False)
    for v in _ticks(x_lo, x_hi, log_x):
        x = px(v)
        cv2.line(img, (x, TOP), (x, HEIGHT - BOTTOM), GREY, 1)
        _text(img, _label(v), (x, HEIGHT - BOTTOM + 18), centre=True)
    for v in _ticks(y_lo, y_hi, False):
        y = py(v)
        cv2.line(img, (LEFT, y), (WIDTH - RIGHT, y), GREY, 1)
        _text(img, _label(v), (LEFT - 8, y + 4), right=True)
    cv2.rectangle(img, (LEFT, TOP), (WIDTH - RIGHT, HEIGHT - BOTTOM), BLACK, 1)
    _text(img, title, (LEFT, 26), scale=0.6)
    _text(img, xlabel + (" (log scale)" if log_x else ""), ((LEFT + WIDTH - RIGHT) // 2, HEIGHT - 18), centre=True)
    _text(img, ylabel, (8, TOP - 12))
    for i, (name, (x, y)) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = [(px(a), py(b)) for a, b in zip(x, y)]
        if steps:
            pts = [p for prev, cur in zip(pts, pts[1:]) for p in (prev, (cur[0], prev[1]))] + pts[-1:]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, np.int32)], False, colour, 2, cv2.LINE_AA)
        if not steps:
            for p in pts:
                cv2.circle(img, p, 4, colour, -1, cv2.LINE_AA)
        ly = TOP + 12 + 20 * i
        cv2.line(img, (WIDTH - RIGHT + 14, ly - 4), (WIDTH - RIGHT + 40, ly - 4), colour, 3)
        _text(img, name, (WIDTH - RIGHT + 46, ly))
    return img


def cdf_chart(samples_ms: dict[str, list[float]], title: str) -> np.ndarray:
    """Latency CDF of every stage that took time and of the whole field, on a log time axis."""
    samples = dict(samples_ms, field=np.sum(list(samples_ms.values()), axis=0))
    series = {}
    for stage, values in samples.items():
        v = np.maximum(np.sort(np.asarray(values, float)), 1e-3)
        if v.size and v.max() > 1e-3:
            series[stage] = ([v[0], *v], [0.0, *(np.arange(1, v.size + 1) / v.size)])
    return line_chart(series, title, "milliseconds per field", "fraction of fields", log_x=True, steps=True,
                      y_range=(0.0, 1.0))


def _padded_range(values: np.ndarray, log: bool) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    if log:
        return 10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi) + 1e-9)
    if lo == hi:
        return lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _axis(lo: float, hi: float, p0: int, p1: int, log: bool):
    f = math.log10 if log else (lambda v: v)
    a, b = f(lo), f(hi)
    return lambda v: int(round(p0 + (f(v) - a) / (b - a) * (p1 - p0)))


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(round(math.log10(lo)), round(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10((hi - lo) / 5))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 7)
    return [v for v in np.arange(math.ceil(lo / step) * step, hi + step / 2, step) if lo <= v <= hi]


def _label(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.0e}"


def _text(img, text: str, org: tuple[int, int], scale: float = 0.45, centre: bool = False,
          right: bool = False) -> None:
    (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    x = org[0] - w // 2 if centre else org[0] - w if right else org[0]
    cv2.putText(img, text, (x, org[1]), FONT, scale, BLACK, 1, cv2.LINE_AA)


def throughput_chart(runs: list[dict], x_key: str, varying: list[str]) -> np.ndarray:
    """Fields per second against one option, a line per combination of the other varied options."""
    others = [k for k in varying if k != x_key]
    series: dict[str, tuple[list, list]] = {}
    for r in sorted(runs, key=lambda r: r[x_key]):
        name = ", ".join(f"{k} {_short(r[k])}" for k in others) or "fields/s"
        xs, ys = series.setdefault(name, ([], []))
        xs.append(r[x_key])
        ys.append(r["fields_per_s"])
    return line_chart(series, f"throughput against {x_key}", x_key, "fields per second")


def _short(value) -> str:
    return str(value).rstrip("/").rsplit("/", 1)[-1]
