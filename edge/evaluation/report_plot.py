"""Risk-coverage curves side by side in one PNG, drawn with OpenCV (no plotting library on the device)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

_W, _H, _MARGIN = 360, 300, 48
_FIT, _HELD, _TARGET, _AXIS = (160, 160, 160), (200, 90, 20), (40, 40, 200), (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class RiskCoveragePanel:
    title: str
    fitted: tuple[np.ndarray, np.ndarray] | None    # coverage, risk on the cells it was fitted on
    held_out: tuple[np.ndarray, np.ndarray] | None  # the same on held-out cells
    point: tuple[float, float] | None               # (coverage, risk) at the operating point
    target_risk: float


def draw_risk_coverage(panels: list[RiskCoveragePanel], path: Path) -> None:
    """One panel per rule, all on the same risk scale: grey the fitting cells, blue held-out
    cells, red the target risk (1 - target accuracy), a dot at the operating point."""
    if not panels:
        raise ValueError("no curves to draw")
    curves = [c for p in panels for c in (p.fitted, p.held_out) if c is not None]
    top = max(max(float(np.max(r)) for _, r in curves), max(p.target_risk for p in panels) * 2, 0.01)
    top = float(np.ceil(top * 20) / 20)  # a round 5 % step
    canvas = np.hstack([_panel(p, top) for p in panels])
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")


def _panel(p: RiskCoveragePanel, top: float) -> np.ndarray:
    img = np.full((_H, _W, 3), 255, np.uint8)
    x0, y0, x1, y1 = _MARGIN, 28, _W - 12, _H - 36

    def xy(cov, risk):
        cov = np.clip(np.asarray(cov, float), 0, 1)
        risk = np.clip(np.asarray(risk, float), 0, top)
        return np.stack([x0 + cov * (x1 - x0), y1 - risk / top * (y1 - y0)], axis=-1).round().astype(np.int32)

    cv2.rectangle(img, (x0, y0), (x1, y1), _AXIS, 1)
    for frac in (0.0, 0.5, 1.0):
        x = int(round(x0 + frac * (x1 - x0)))
        cv2.putText(img, f"{frac:.1f}", (x - 10, y1 + 16), _FONT, 0.4, _AXIS, 1, cv2.LINE_AA)
        y = int(round(y1 - frac * (y1 - y0)))
        cv2.putText(img, f"{frac * top:.2f}", (2, y + 4), _FONT, 0.4, _AXIS, 1, cv2.LINE_AA)
    cv2.putText(img, "coverage", (x0 + (x1 - x0) // 2 - 30, _H - 6), _FONT, 0.45, _AXIS, 1, cv2.LINE_AA)
    cv2.putText(img, p.title[:44], (6, 18), _FONT, 0.45, _AXIS, 1, cv2.LINE_AA)
    ty = int(xy(0, p.target_risk)[1])
    for x in range(x0, x1, 8):
        cv2.line(img, (x, ty), (min(x + 4, x1), ty), _TARGET, 1)
    for curve, colour in ((p.fitted, _FIT), (p.held_out, _HELD)):
        if curve is not None and len(curve[0]):
            cv2.polylines(img, [xy(*curve)], False, colour, 2, cv2.LINE_AA)
    if p.point is not None:
        cv2.circle(img, tuple(int(v) for v in xy(*p.point)), 5, _TARGET, -1, cv2.LINE_AA)
    return img
