"""The field quality gate: is this field fit to be counted? Checked before detection.

A field that is out of focus, badly exposed, unevenly lit, too thin or too
thick, or stained unlike the bundle's reference would give a wrong differential
without any single cell looking doubtful. Every measure is taken on a copy of
the frame shrunk by `downscale` (area average), so the gate costs a few
milliseconds on a 1920 x 1080 field:

- light: the frame is cut into a 4 x 4 grid and the 90th percentile of grey in
  each block is taken as the light there (a smear is mostly bright background).
  `white` is the brightest block's light (exposure), `uniformity` the darkest
  block's light over the brightest's, `clipped` the share of pixels at 254 or
  more in any channel (overexposure).
- everything else is measured on the flat-field corrected image (each pixel
  divided by the light interpolated from the grid), in optical density
  OD = -ln(I / light), so uneven light does not pass for stain or blur.
- `stained`: the share of pixels whose red-channel OD is above `nucleus_od`.
  Nuclei stained by May-Grünwald-Giemsa absorb red strongly; red cells and
  plasma barely do. Too little is the thin edge of the smear or bare glass, too
  much a thick area or clumps.
- `focus`: variance of the Laplacian of the corrected grey image over its
  variance: the share of fine detail, which blur removes, whatever the number
  of cells. Undefined (not judged) on a perfectly flat field.
- `stain_angle`: the angle, in degrees, between the mean OD colour of the
  nucleus pixels and the bundle's reference colour (a unit vector in B, G, R
  OD). Undefined when the field holds no nucleus pixels or is grey.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

from edge.runtime.settings import check_section

QUALITY_PREFIX = "quality: "   # the start of the skip reason of a field refused by the gate
GRID = 4                       # light is estimated in GRID x GRID blocks
CLIP_LEVEL = 254
_LOG = np.log(np.arange(256, dtype=np.float32) + 0.5).astype(np.float32)  # ln of a grey level


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class QualityLimits:
    """The gate's limits; the defaults suit the default bundle's synthetic smears and the demo.

    A `quality` section in the bundle's manifest replaces any of them, and
    `edge run --quality KEY=VALUE` replaces those in turn.
    """

    enabled: bool = True
    downscale: int = 4                 # measures are taken on the frame shrunk by this factor
    min_focus: float = 0.45            # variance of the Laplacian / variance, corrected grey
    min_white: float = 150.0           # grey level of the brightest light block (underexposure)
    max_clipped: float = 0.4           # share of saturated pixels (overexposure)
    min_uniformity: float = 0.6        # darkest block's light / brightest block's
    nucleus_od: float = 0.6            # red-channel OD above which a pixel is nucleus-stained
    min_stained: float = 0.0           # share of nucleus pixels; 0: an empty field is allowed
    max_stained: float = 0.12
    stain_reference: tuple[float, float, float] = (0.387, 0.769, 0.509)  # unit OD vector, B G R
    max_stain_angle: float = 6.0       # degrees

    def __post_init__(self) -> None:
        if not isinstance(self.downscale, int) or isinstance(self.downscale, bool) or self.downscale < 1:
            raise ValueError("quality.downscale must be an integer of at least 1")
        if not (isinstance(self.stain_reference, (tuple, list)) and len(self.stain_reference) == 3):
            raise ValueError("quality.stain_reference must be three numbers (B, G, R optical density)")
        ref = np.asarray(self.stain_reference, np.float64)
        if not np.all(np.isfinite(ref)) or np.linalg.norm(ref) <= 0 or np.any(ref < 0):
            raise ValueError("quality.stain_reference must be non-negative and not all zero")
        for name in ("min_focus", "min_white", "max_clipped", "min_uniformity", "nucleus_od",
                     "min_stained", "max_stained", "max_stain_angle"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"quality.{name} must be a non-negative number")
        if self.min_stained > self.max_stained:
            raise ValueError("quality.min_stained must not exceed quality.max_stained")

    @classmethod
    def from_dict(cls, d: dict) -> "QualityLimits":
        """From a manifest section or overrides; unknown keys are refused with the known ones named."""
        check_section(d, cls, "quality")
        if "enabled" in d and not isinstance(d["enabled"], bool):
            raise ValueError("quality.enabled must be true or false")
        values = dict(d)
        if "stain_reference" in values and isinstance(values["stain_reference"], list):
            values["stain_reference"] = tuple(values["stain_reference"])
        return cls(**values)

    def with_overrides(self, overrides: dict) -> "QualityLimits":
        return QualityLimits.from_dict({**self.to_dict(), **overrides})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stain_reference"] = [float(v) for v in self.stain_reference]
        return d


def parse_override(text: str) -> tuple[str, object]:
    """KEY=VALUE from the command line: a number, true/false, or three comma-separated numbers."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--quality takes KEY=VALUE, got {text!r}")
    key, value = key.strip(), value.strip()
    if value.lower() in ("true", "false", "on", "off"):
        return key, value.lower() in ("true", "on")
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        raise ValueError(f"--quality {key}: {value!r} is not a number") from None
    if len(parts) == 3:
        return key, tuple(parts)
    if len(parts) != 1:
        raise ValueError(f"--quality {key}: give one number (or three for stain_reference)")
    return key, int(parts[0]) if key == "downscale" and parts[0].is_integer() else parts[0]


@dataclass(frozen=True)
class QualityReport:
    """The gate's measures on one field and the limits it broke (none: the field may be counted)."""

    measures: dict[str, float]
    failures: tuple[str, ...] = ()                          # one text per broken limit
    checks: tuple[str, ...] = ()                            # the names of the broken checks
    stain_vector: tuple[float, float, float] | None = None  # mean nucleus OD colour, unit length

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def reason(self) -> str:
        """The skip reason recorded for a refused field, e.g. 'quality: focus: 0.210 < 0.45'."""
        return QUALITY_PREFIX + "; ".join(self.failures)


def quality_check_name(reason: str) -> list[str]:
    """The check names in a recorded quality skip reason ('quality: focus: 0.2 < 0.45; stain: ...')."""
    return [part.split(":")[0].strip() for part in reason[len(QUALITY_PREFIX):].split("; ") if part]


class QualityGate:
    def __init__(self, limits: QualityLimits = QualityLimits()):
        self.limits = limits
        ref = np.asarray(limits.stain_reference, np.float64)
        self._reference = ref / np.linalg.norm(ref)

    def check(self, image: np.ndarray) -> QualityReport:
        measures, stain = measure_field(image, self.limits.downscale, self.limits.nucleus_od)
        if stain is not None:
            cosine = float(np.clip(np.dot(stain, self._reference), -1.0, 1.0))
            measures["stain_angle"] = math.degrees(math.acos(cosine))
        return QualityReport(measures, *self._judge(measures),
                             tuple(float(v) for v in stain) if stain is not None else None)

    def _judge(self, m: dict[str, float]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        lim = self.limits
        angle, focus = m.get("stain_angle", 0.0), m.get("focus", math.inf)
        rules = [("focus", focus < lim.min_focus, f"{focus:.3f} < {lim.min_focus:g}"),
                 ("exposure", m["white"] < lim.min_white, f"light {m['white']:.0f} < {lim.min_white:g}"),
                 ("clipping", m["clipped"] > lim.max_clipped,
                  f"{100 * m['clipped']:.1f} % saturated > {100 * lim.max_clipped:g} %"),
                 ("illumination", m["uniformity"] < lim.min_uniformity,
                  f"uniformity {m['uniformity']:.2f} < {lim.min_uniformity:g}"),
                 ("density", m["stained"] < lim.min_stained,
                  f"too sparse, {100 * m['stained']:.2f} % stained < {100 * lim.min_stained:g} %"),
                 ("density", m["stained"] > lim.max_stained,
                  f"too dense, {100 * m['stained']:.1f} % stained > {100 * lim.max_stained:g} %"),
                 ("stain", angle > lim.max_stain_angle, f"{angle:.1f} deg from the reference > {lim.max_stain_angle:g}")]
        broken = [(name, f"{name}: {text}") for name, bad, text in rules if bad]
        return tuple(t for _, t in broken), tuple(n for n, _ in broken)


def measure_field(image: np.ndarray, downscale: int = 4, nucleus_od: float = 0.6
                  ) -> tuple[dict[str, float], np.ndarray | None]:
    """The gate's measures on a BGR uint8 frame, and the unit mean OD colour of its nucleus pixels."""
    small = _shrink(image, downscale)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    light = _block_light(grey)
    white = float(light.max())
    log_light = cv2.resize(np.log(np.maximum(light, 1.0) + 0.5).astype(np.float32),
                           (grey.shape[1], grey.shape[0]), interpolation=cv2.INTER_LINEAR)
    nucleus = (log_light - cv2.LUT(small[..., 2], _LOG)) > nucleus_od   # red-channel optical density
    corrected = log_light - cv2.LUT(grey, _LOG)               # grey OD, flat-field corrected
    variance = float(corrected.var())
    measures = {"white": white,
                "clipped": float(np.count_nonzero(cv2.max(cv2.max(small[..., 0], small[..., 1]), small[..., 2])
                                                  >= CLIP_LEVEL)) / grey.size,
                "uniformity": float(light.min()) / white if white > 0 else 0.0,
                "stained": float(np.count_nonzero(nucleus)) / grey.size}
    if variance > 1e-6:  # a perfectly flat field (bare glass, a blank frame) has no detail to be sharp
        measures["focus"] = float(cv2.Laplacian(corrected, cv2.CV_32F).var()) / variance
    stain = None
    if np.count_nonzero(nucleus) >= 4:
        mean = float(log_light[nucleus].mean()) - _LOG[small[nucleus]].mean(axis=0).astype(np.float64)  # OD, B G R
        norm = np.linalg.norm(mean)
        monochrome = mean[0] == mean[1] == mean[2]  # a grey camera's frame holds no stain colour to judge
        stain = mean / norm if norm > 0 and not monochrome else None
    return measures, stain


def _shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """The frame shrunk by `factor` with each pixel the mean of its block.

    Powers of two are halved step by step with bilinear sampling, which at
    exactly half size is the mean of 2 x 2 pixels and much faster than INTER_AREA.
    """
    h, w = image.shape[:2]
    if factor & (factor - 1) == 0:
        while factor > 1 and min(h, w) >= 2 * GRID:
            h, w, factor = h // 2, w // 2, factor // 2
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        return image
    return cv2.resize(image, (max(GRID, w // factor), max(GRID, h // factor)), interpolation=cv2.INTER_AREA)


def _block_light(grey: np.ndarray) -> np.ndarray:
    """(GRID, GRID) light level of each block: its 90th percentile of grey."""
    bh, bw = grey.shape[0] // GRID, grey.shape[1] // GRID
    blocks = grey[:bh * GRID, :bw * GRID].reshape(GRID, bh, GRID, bw).transpose(0, 2, 1, 3).reshape(GRID * GRID, -1)
    k = int(0.9 * (blocks.shape[1] - 1))
    return np.partition(blocks, k, axis=1)[:, k].reshape(GRID, GRID).astype(np.float32)


FOCUS_MARGIN = 0.5        # min_focus: this share of the reference fields' 5th-percentile focus
STAIN_ANGLE_MARGIN = 1.25  # max_stain_angle: this multiple of their 95th-percentile angle (at least the default)


def fit_quality_limits(images, base: QualityLimits = QualityLimits()) -> QualityLimits:
    """`base` with the camera- and stain-dependent limits fitted on reference fields (good fields of one
    microscope and stain, e.g. a detector's real training fields).

    The focus measure scales with the optics and the camera's resolution and
    the stain colour with the lab's protocol, so neither default transfers
    from the synthetic smears: min_focus becomes FOCUS_MARGIN x the 5th
    percentile of the fields' focus, the stain reference their mean nucleus
    colour, and max_stain_angle STAIN_ANGLE_MARGIN x the 95th percentile of
    their angles to it. The light and density limits are kept.
    """
    measured = [measure_field(im, base.downscale, base.nucleus_od) for im in images]
    focus = [m["focus"] for m, _ in measured if "focus" in m]
    vectors = np.array([s for _, s in measured if s is not None])
    if not focus or len(vectors) == 0:
        raise ValueError("the reference fields hold no detail or no nucleus-stained pixels to fit limits on")
    reference = vectors.mean(axis=0)
    reference /= np.linalg.norm(reference)
    angles = np.degrees(np.arccos(np.clip(vectors @ reference, -1.0, 1.0)))
    return replace(base, min_focus=round(FOCUS_MARGIN * float(np.percentile(focus, 5)), 4),
                   stain_reference=tuple(round(float(v), 4) for v in reference),
                   max_stain_angle=round(max(base.max_stain_angle,
                                             STAIN_ANGLE_MARGIN * float(np.percentile(angles, 95))), 2))
