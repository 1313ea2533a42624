"""Synthetic May-Grünwald-Giemsa peripheral blood smears for tests and demos.

A field is rendered in optical density (absorbance), as light passes a stained
smear: every object adds its stain's density to a float canvas, so overlapping
cells darken where they overlap and draw order does not matter. The finish
turns density into transmitted light, applies illumination and stain shift,
then blur and sensor noise, and returns an OpenCV BGR uint8 image.

Every object is drawn into its own small patch around its centre, never into a
whole-frame mask, so large fields stay fast and memory-light.

Coordinates are continuous pixel coordinates: pixel column i spans [i, i + 1),
so a frame spans [0, W] x [0, H]. Only nucleated cells are ground truth; red
cells and platelets are background.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import cv2
import numpy as np

DEFAULT_CLASSES: tuple[str, ...] = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")

RBC_DIAMETER_UM = 7.5
PLATELET_DIAMETER_UM = (2.0, 3.0)

# A cell outline deviates from its nominal radius by at most elongation + 3 wobble harmonics.
_BODY_ELONGATION = 0.06
_BODY_WOBBLE = 0.01
_BODY_SLACK = 1.0 + _BODY_ELONGATION + 3 * _BODY_WOBBLE
_BAND_ROWS = 256  # rows finished at a time, bounds the float temporaries of big fields
_SPRITE_BANK = 32  # variants drawn per kind of background object in big scenes


@dataclass(frozen=True)
class SmearConfig:
    width: int = 640
    height: int = 480
    px_per_um: float = 4.0           # scale; cell sizes are defined in micrometres
    classes: tuple[str, ...] = DEFAULT_CLASSES
    nucleated_per_mpx: float = 40.0  # mean nucleated cells per megapixel (Poisson)
    rbc_per_mpx: float = 600.0
    platelets_per_mpx: float = 150.0
    touching_fraction: float = 0.15  # fraction of nucleated cells placed touching/overlapping another
    blur_sigma: float = 0.0          # Gaussian blur, pixels
    noise_std: float = 0.0           # additive Gaussian noise, grey levels
    illumination: float = 0.0        # 0..1 strength of uneven illumination / vignetting
    stain_shift: float = 0.0         # 0..1 magnitude of a random global stain (hue/sat/brightness) shift;
                                     # its direction is random, so a negative value acts as its absolute value

    def __post_init__(self) -> None:
        unknown = [c for c in self.classes if c not in _RECIPES]
        if unknown or not self.classes:
            raise ValueError(f"unknown cell classes {unknown or '(none given)'}; "
                             f"known classes: {', '.join(_RECIPES)}")
        if self.width < 1 or self.height < 1 or self.px_per_um <= 0:
            raise ValueError("width, height and px_per_um must be positive")
        for name in ("nucleated_per_mpx", "rbc_per_mpx", "platelets_per_mpx", "blur_sigma", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("touching_fraction", "illumination"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")
        if abs(self.stain_shift) > 1.0:
            raise ValueError("stain_shift must lie in [-1, 1]")

    def at_pixel_size(self, um_per_px: float) -> "SmearConfig":
        """The same smear seen by a camera of `um_per_px` micrometres per pixel: cells keep their size
        in micrometres, and the densities (per megapixel) are rescaled so the smear keeps its cells
        per square micrometre."""
        if not um_per_px > 0:
            raise ValueError("um_per_px must be positive")
        px_per_um = 1.0 / um_per_px
        area = (self.px_per_um / px_per_um) ** 2  # megapixels then / megapixels now, for one area
        return replace(self, px_per_um=px_per_um, nucleated_per_mpx=self.nucleated_per_mpx * area,
                       rbc_per_mpx=self.rbc_per_mpx * area, platelets_per_mpx=self.platelets_per_mpx * area)


@dataclass
class Field:
    image: np.ndarray      # (H, W, 3) uint8 BGR
    boxes: np.ndarray      # (N, 4) float32 x1, y1, x2, y2 of each nucleated cell, clipped to the frame
    centres: np.ndarray    # (N, 2) float32 x, y true centre (always inside the frame)
    labels: np.ndarray     # (N,) int64 index into class_names
    diameters: np.ndarray  # (N,) float32 nominal diameter in pixels
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class _Recipe:
    """Appearance of one nucleated cell class. Colours are RGB of the layer alone on white."""
    diameter_um: tuple[float, float]
    cytoplasm_rgb: tuple[int, int, int]
    nucleus_rgb: tuple[int, int, int]
    nucleus_shape: str                  # "round", "kidney" or "lobed"
    nucleus_size: tuple[float, float]   # nucleus (round, kidney) or lobe (lobed) radius / cell radius
    lobes: tuple[int, int] = (1, 1)
    strand: float = 0.0                 # lobed: strand width between lobes / lobe width
    chromatin: tuple[float, float] = (0.8, 0.25)  # texture grain in um, contrast
    granule_rgb: tuple[int, int, int] = (0, 0, 0)
    granule_um: float = 0.0             # typical granule diameter
    granule_cover: float = 0.0          # fraction of the cell area covered by granules
    granules_over_nucleus: bool = False
    vacuoles: tuple[int, int] = (0, 0)
    nucleoli: tuple[int, int] = (0, 0)


_RECIPES: dict[str, _Recipe] = {
    "neutrophil": _Recipe(
        diameter_um=(12.0, 14.0), cytoplasm_rgb=(238, 214, 222), nucleus_rgb=(92, 52, 128),
        nucleus_shape="lobed", nucleus_size=(0.24, 0.3), lobes=(2, 5), strand=0.14,
        chromatin=(0.8, 0.25), granule_rgb=(215, 180, 215), granule_um=0.3, granule_cover=0.3),
    "lymphocyte": _Recipe(
        diameter_um=(7.0, 10.0), cytoplasm_rgb=(165, 198, 236), nucleus_rgb=(66, 40, 112),
        nucleus_shape="round", nucleus_size=(0.72, 0.88), chromatin=(0.7, 0.3)),
    "monocyte": _Recipe(
        diameter_um=(15.0, 20.0), cytoplasm_rgb=(196, 196, 220), nucleus_rgb=(130, 92, 165),
        nucleus_shape="kidney", nucleus_size=(0.55, 0.7), chromatin=(0.5, 0.3), vacuoles=(0, 5)),
    "eosinophil": _Recipe(
        diameter_um=(12.0, 15.0), cytoplasm_rgb=(240, 218, 205), nucleus_rgb=(100, 58, 132),
        nucleus_shape="lobed", nucleus_size=(0.27, 0.33), lobes=(2, 3), strand=0.15,
        chromatin=(0.8, 0.25), granule_rgb=(232, 125, 80), granule_um=0.7, granule_cover=0.8),
    "basophil": _Recipe(
        diameter_um=(10.0, 14.0), cytoplasm_rgb=(222, 205, 228), nucleus_rgb=(135, 95, 165),
        nucleus_shape="lobed", nucleus_size=(0.28, 0.34), lobes=(2, 3), strand=0.45,
        chromatin=(0.8, 0.2), granule_rgb=(55, 30, 90), granule_um=0.9, granule_cover=0.3,
        granules_over_nucleus=True),
    "band": _Recipe(
        diameter_um=(12.0, 14.0), cytoplasm_rgb=(238, 214, 222), nucleus_rgb=(92, 52, 128),
        nucleus_shape="lobed", nucleus_size=(0.17, 0.22), lobes=(4, 6), strand=0.85,
        chromatin=(0.8, 0.25), granule_rgb=(215, 180, 215), granule_um=0.3, granule_cover=0.3),
    "blast": _Recipe(
        diameter_um=(14.0, 20.0), cytoplasm_rgb=(150, 176, 226), nucleus_rgb=(140, 100, 172),
        nucleus_shape="round", nucleus_size=(0.75, 0.86), chromatin=(0.4, 0.12), nucleoli=(1, 3)),
    "nrbc": _Recipe(
        diameter_um=(8.0, 11.0), cytoplasm_rgb=(214, 172, 184), nucleus_rgb=(42, 28, 78),
        nucleus_shape="round", nucleus_size=(0.45, 0.6), chromatin=(0.5, 0.08)),
}

_BACKGROUND_RGB = (240, 229, 222)
_RBC_RGB = (236, 170, 166)
_PLATELET_RGB = (160, 112, 182)


def _od(rgb: tuple[int, int, int]) -> np.ndarray:
    """Optical density of a layer whose colour on white is `rgb`, in BGR channel order."""
    return -np.log(np.asarray(rgb[::-1], np.float32) / 255.0)


Outline = Callable[[np.ndarray], np.ndarray]  # radius as a function of angle
Box = tuple[float, float, float, float]
# draw(canvas, x, y, px_per_um, rng): one background object into a density canvas
Drawer = Callable[[np.ndarray, float, float, float, np.random.Generator], None]


class _Cell(NamedTuple):
    x: float
    y: float
    label: int
    diameter: float  # nominal, pixels


class _Streams(NamedTuple):
    """Independent random streams, so changing one knob leaves the rest of a scene unchanged."""
    layout: np.random.Generator
    cells: np.random.Generator
    rbcs: np.random.Generator
    platelets: np.random.Generator
    background: np.random.Generator
    finish: np.random.Generator

    @classmethod
    def from_seed(cls, seed: int | np.random.SeedSequence) -> "_Streams":
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        return cls(*(np.random.default_rng(s) for s in seq.spawn(len(cls._fields))))


# ---------------------------------------------------------------- public API

def max_cell_diameter_px(config: SmearConfig) -> float:
    """Largest extent, in pixels, of any nucleated cell the config can produce."""
    largest_um = max(_RECIPES[name].diameter_um[1] for name in config.classes)
    return float(largest_um * config.px_per_um * _BODY_SLACK + 1.0)


def render_field(config: SmearConfig = SmearConfig(), seed: int = 0) -> Field:
    """Render one field of view with its nucleated-cell ground truth."""
    streams = _Streams.from_seed(seed)
    recipes = [_RECIPES[name] for name in config.classes]
    cells = _layout_nucleated(config, recipes, streams.layout)
    image, boxes = _render_scene(config.width, config.height, cells, config, streams, (0.0, 0.0))
    w, h = config.width, config.height
    clipped = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, [w, h, w, h]).astype(np.float32)
    return Field(
        image=image,
        boxes=clipped,
        centres=np.array([(c.x, c.y) for c in cells], np.float32).reshape(-1, 2),
        labels=np.array([c.label for c in cells], np.int64),
        diameters=np.array([c.diameter for c in cells], np.float32),
        class_names=tuple(config.classes),
    )


def render_cell_crops(labels: np.ndarray, size: int, seed: int = 0,
                      config: SmearConfig = SmearConfig()) -> np.ndarray:
    """One nucleated cell of each given class, centred on a crop ~1.3x its diameter, resized to `size`.

    Returns (N, size, size, 3) uint8 BGR. Crop i depends only on (seed, i, labels[i], config).
    """
    if size < 1:
        raise ValueError("crop size must be positive")
    labels = np.asarray(labels, np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= len(config.classes)):
        raise ValueError(f"labels must index config.classes (0..{len(config.classes) - 1})")
    recipes = [_RECIPES[name] for name in config.classes]
    crops = np.empty((labels.size, size, size, 3), np.uint8)
    for i, seq in enumerate(np.random.SeedSequence(seed).spawn(labels.size)):
        crops[i] = _render_crop(int(labels[i]), recipes, size, _Streams.from_seed(seq), config)
    return crops


# ---------------------------------------------------------------- scenes

def _render_scene(width: int, height: int, cells: list[_Cell], config: SmearConfig,
                  streams: _Streams, frame_origin: tuple[float, float]) -> tuple[np.ndarray, list[Box]]:
    """Draw background, nucleated cells, red cells and platelets; return the image and unclipped cell boxes.

    `frame_origin` places this canvas inside a virtual frame of the config's size,
    which sets where it sits in the illumination pattern.
    """
    ppu = config.px_per_um
    canvas = _background_od(height, width, ppu, streams.background)
    boxes = [_draw_nucleated(canvas, cell, _RECIPES[config.classes[cell.label]], ppu, streams.cells)
             for cell in cells]
    rbc_radius = RBC_DIAMETER_UM * ppu / 2
    rbc_reach = rbc_radius * 1.2 + 2  # bounds size and shape jitter
    rbcs = _scatter(width, height, config.rbc_per_mpx, cells, rbc_reach, 0.5 * rbc_radius, streams.rbcs)
    _draw_many(canvas, rbcs, _draw_rbc, rbc_reach, ppu, streams.rbcs)
    platelets = _platelet_positions(width, height, config, cells, streams.platelets)
    _draw_many(canvas, platelets, _draw_platelet, 2.2 * ppu + 2, ppu, streams.platelets)
    image = _finish(canvas, config, streams.finish, frame_origin)
    return image, boxes


def _render_crop(label: int, recipes: list[_Recipe], size: int, streams: _Streams,
                 config: SmearConfig) -> np.ndarray:
    """A scene of side ~1.3 cell diameters with one nucleated cell near its centre, resized to `size`."""
    rng = streams.layout
    diameter = _sample_diameter(recipes[label], config.px_per_um, rng)
    side = max(8, int(round(1.3 * diameter)))
    x, y = side / 2 + rng.uniform(-0.05, 0.05, 2) * side
    origin = (rng.uniform(0, max(0, config.width - side)), rng.uniform(0, max(0, config.height - side)))
    image, _ = _render_scene(side, side, [_Cell(x, y, label, diameter)], config, streams, origin)
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def _sample_diameter(recipe: _Recipe, px_per_um: float, rng: np.random.Generator) -> float:
    return float(rng.uniform(*recipe.diameter_um) * px_per_um)


def _layout_nucleated(config: SmearConfig, recipes: list[_Recipe], rng: np.random.Generator) -> list[_Cell]:
    """Poisson number of nucleated cells; some touch a neighbour, the rest avoid overlap where they can."""
    w, h = config.width, config.height
    n = int(rng.poisson(config.nucleated_per_mpx * w * h / 1e6))
    xs, ys, rs = np.zeros(n), np.zeros(n), np.zeros(n)
    cells = []
    for i in range(n):
        label = int(rng.integers(len(recipes)))
        diameter = _sample_diameter(recipes[label], config.px_per_um, rng)
        r = diameter / 2
        position = None
        if i > 0 and rng.random() < config.touching_fraction:
            position = _touching_position(w, h, r, xs[:i], ys[:i], rs[:i], rng)
        if position is None:
            position = _free_position(w, h, r, xs[:i], ys[:i], rs[:i], rng)
        xs[i], ys[i], rs[i] = *position, r
        cells.append(_Cell(position[0], position[1], label, diameter))
    return cells


def _random_centre(w: int, h: int, rng: np.random.Generator) -> tuple[float, float]:
    """A centre inside the frame, at least half a pixel from its edges."""
    return float(rng.uniform(0.5, max(0.5, w - 0.5))), float(rng.uniform(0.5, max(0.5, h - 0.5)))


def _free_position(w: int, h: int, r: float, xs: np.ndarray, ys: np.ndarray, rs: np.ndarray,
                   rng: np.random.Generator, tries: int = 20) -> tuple[float, float]:
    """A random centre clear of the placed cells; the last try when none is clear (dense fields)."""
    for _ in range(tries):
        x, y = _random_centre(w, h, rng)
        if np.all(np.hypot(xs - x, ys - y) >= 1.05 * (rs + r)):
            break
    return x, y


def _touching_position(w: int, h: int, r: float, xs: np.ndarray, ys: np.ndarray, rs: np.ndarray,
                       rng: np.random.Generator, tries: int = 10) -> tuple[float, float] | None:
    """A centre that makes the cell touch or overlap a placed one, or None if none fits in the frame."""
    for _ in range(tries):
        j = int(rng.integers(len(xs)))
        angle = rng.uniform(0, 2 * np.pi)
        distance = (r + rs[j]) * rng.uniform(0.7, 0.98)
        x, y = xs[j] + distance * np.cos(angle), ys[j] + distance * np.sin(angle)
        if 0.5 <= x <= w - 0.5 and 0.5 <= y <= h - 0.5:
            return float(x), float(y)
    return None


def _scatter(w: int, h: int, per_mpx: float, cells: list[_Cell], margin: float, clearance: float,
             rng: np.random.Generator) -> np.ndarray:
    """Poisson points over the frame and a margin around it (objects cut by the border),
    dropping those within a nucleated cell's radius + `clearance` of its centre."""
    area = (w + 2 * margin) * (h + 2 * margin)
    n = int(rng.poisson(per_mpx * area / 1e6))
    points = rng.uniform(0, 1, (n, 2)) * [w + 2 * margin, h + 2 * margin] - margin
    return points[~_excluded(points, cells, clearance, w, h, margin)]


def _excluded(points: np.ndarray, cells: list[_Cell], clearance: float, w: int, h: int,
              margin: float) -> np.ndarray:
    """Whether each point lies inside a nucleated cell's exclusion disc, looked up on a coarse raster
    so the cost grows with the frame area, not with points x cells."""
    if not cells or not len(points):
        return np.zeros(len(points), bool)
    step = max(1.0, clearance / 2)
    shape = (int(np.ceil((h + 2 * margin) / step)) + 1, int(np.ceil((w + 2 * margin) / step)) + 1)
    raster = np.zeros(shape, np.uint8)
    for c in cells:
        centre = (int(round((c.x + margin) / step)), int(round((c.y + margin) / step)))
        cv2.circle(raster, centre, int(round((c.diameter / 2 + clearance) / step)), 1, -1)
    cols = np.clip(((points[:, 0] + margin) / step).round().astype(int), 0, shape[1] - 1)
    rows = np.clip(((points[:, 1] + margin) / step).round().astype(int), 0, shape[0] - 1)
    return raster[rows, cols].astype(bool)


def _platelet_positions(w: int, h: int, config: SmearConfig, cells: list[_Cell],
                        rng: np.random.Generator) -> np.ndarray:
    """Platelets, alone or in small clumps around scattered seeds."""
    mean_clump = 1.5
    ppu = config.px_per_um
    seeds = _scatter(w, h, config.platelets_per_mpx / mean_clump, cells, 2 * ppu, 1.5 * ppu, rng)
    sizes = 1 + rng.poisson(mean_clump - 1, len(seeds))
    members = np.repeat(seeds, sizes, axis=0)
    spread = rng.normal(0, 1.6 * ppu, members.shape) * (np.repeat(sizes, sizes) > 1)[:, None]
    return members + spread


# ---------------------------------------------------------------- patches and shapes

def _patch_grid(cx: float, cy: float, half: float) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Origin of a square patch around (cx, cy) and the offsets of its pixel centres from (cx, cy):
    dx with shape (1, n), dy with shape (n, 1)."""
    h = int(np.ceil(half))
    x0, y0 = int(np.floor(cx)) - h, int(np.floor(cy)) - h
    offsets = np.arange(2 * h + 2, dtype=np.float32) + 0.5
    return x0, y0, (x0 + offsets - cx)[None, :], (y0 + offsets - cy)[:, None]


def _add_to_canvas(canvas: np.ndarray, od: np.ndarray, x0: int, y0: int) -> None:
    """Add a patch of density to the canvas at (x0, y0), clipped to the canvas."""
    ph, pw = od.shape[:2]
    ch, cw = canvas.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, cw), min(y0 + ph, ch)
    if xa < xb and ya < yb:
        canvas[ya:yb, xa:xb] += od[ya - y0:yb - y0, xa - x0:xb - x0]


def _tight_box(alpha: np.ndarray, x0: int, y0: int) -> Box | None:
    """Box (x1, y1, x2, y2) of the pixels more than half covered, in frame coordinates; None if none is."""
    rows = np.flatnonzero(alpha.max(axis=1) > 0.5)
    cols = np.flatnonzero(alpha.max(axis=0) > 0.5)
    if not rows.size:
        return None
    return float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1)


def _random_outline(rng: np.random.Generator, radius: float, elongation: float, wobble: float) -> Outline:
    """Radius as a function of angle: an ellipse-like stretch plus a little irregularity."""
    e, phi = rng.uniform(0, elongation), rng.uniform(0, np.pi)
    amps, phases = rng.uniform(0, wobble, 3), rng.uniform(0, 2 * np.pi, 3)

    def outline(theta: np.ndarray) -> np.ndarray:
        r = 1 + e * np.cos(2 * (theta - phi))
        for k, a, p in zip((3, 4, 5), amps, phases):
            r = r + a * np.cos(k * theta + p)
        return radius * r
    return outline


def _polar_alpha(dx: np.ndarray, dy: np.ndarray, outline: Outline, edge: float = 1.0) -> np.ndarray:
    """Antialiased coverage of a star-shaped region given by its outline; `edge` is the ramp width in px."""
    angles = np.linspace(-np.pi, np.pi, 361)
    radius = np.interp(np.arctan2(dy, dx), angles, outline(angles))  # far cheaper than outline per pixel
    return np.clip((radius - np.hypot(dx, dy)) / edge + 0.5, 0, 1)


def _ellipse_alpha(dx: np.ndarray, dy: np.ndarray, a: float, b: float, angle: float,
                   edge: float = 1.0) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rn = np.hypot((dx * c + dy * s) / a, (dy * c - dx * s) / b)
    return np.clip((1 - rn) * (a + b) / (2 * edge) + 0.5, 0, 1)


def _capsule_alpha(dx: np.ndarray, dy: np.ndarray, p: np.ndarray, q: np.ndarray, half_width: float,
                   edge: float = 1.0) -> np.ndarray:
    """Coverage of a stroke of the given half width from p to q (offsets from the patch centre)."""
    d = q - p
    t = np.clip(((dx - p[0]) * d[0] + (dy - p[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    dist = np.hypot(dx - p[0] - t * d[0], dy - p[1] - t * d[1])
    return np.clip((half_width - dist) / edge + 0.5, 0, 1)


def _smooth_noise(shape: tuple[int, int], grain_px: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std noise whose blobs are about `grain_px` pixels across."""
    h, w = shape
    grid = rng.standard_normal((max(2, int(h / max(grain_px, 1.0)) + 2),
                                max(2, int(w / max(grain_px, 1.0)) + 2))).astype(np.float32)
    noise = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return (noise - noise.mean()) / max(float(noise.std()), 1e-6)


def _spots(region: np.ndarray, count: int, diameter_px: float, rng: np.random.Generator) -> np.ndarray:
    """Coverage of `count` round spots of about `diameter_px`, centred on pixels of `region`.

    Spots are splatted as points and blurred, so many small granules cost one blur,
    and their random strength varies their size.
    """
    inside = np.flatnonzero(region > 0.5)
    points = np.zeros(region.shape, np.float32)
    if count <= 0 or not inside.size:
        return points
    np.add.at(points.reshape(-1), rng.choice(inside, count), rng.uniform(0.5, 1.5, count).astype(np.float32))
    sigma = max(0.5, diameter_px / 3)
    # A single unit spot peaks at 1 after the blur; the 1.5 gain gives it a plateau about diameter_px across.
    blobs = cv2.GaussianBlur(points, (0, 0), sigma) * (2 * np.pi * sigma ** 2)
    return np.clip(1.5 * blobs, 0, 1)


def _colour_jitter(od: np.ndarray, rng: np.random.Generator, channel: float = 0.08,
                   strength: float = 0.15) -> np.ndarray:
    """Per-cell variation of staining: each channel and the overall density scaled a little."""
    per_channel = rng.uniform(1 - channel, 1 + channel, 3).astype(np.float32)
    return od * per_channel * rng.uniform(1 - strength, 1 + strength)


# ---------------------------------------------------------------- nuclei

def _round_nucleus(dx: np.ndarray, dy: np.ndarray, radius: float, recipe: _Recipe,
                   rng: np.random.Generator, edge: float) -> np.ndarray:
    """A round to oval nucleus, often a little off centre."""
    size = rng.uniform(*recipe.nucleus_size)
    shift = rng.uniform(0, max(0.0, 0.95 - size * 1.1)) * radius
    angle = rng.uniform(0, 2 * np.pi)
    outline = _random_outline(rng, size * radius, 0.08, 0.01)
    return _polar_alpha(dx - shift * np.cos(angle), dy - shift * np.sin(angle), outline, edge)


def _kidney_nucleus(dx: np.ndarray, dy: np.ndarray, radius: float, recipe: _Recipe,
                    rng: np.random.Generator, edge: float) -> np.ndarray:
    """A bean- or horseshoe-shaped nucleus, indented on one side, sometimes folded on another."""
    size = rng.uniform(*recipe.nucleus_size)
    notch = rng.uniform(0, 2 * np.pi)
    shift = rng.uniform(0.05, max(0.06, 0.95 - size * 1.25)) * radius
    body = _random_outline(rng, size * radius, 0.0, 0.015)
    stretch = rng.uniform(0.1, 0.22)
    depth, width = rng.uniform(0.25, 0.45), rng.uniform(0.45, 0.75)
    fold = rng.uniform(0, 0.15)

    def outline(theta: np.ndarray) -> np.ndarray:
        from_notch = np.angle(np.exp(1j * (theta - notch)))
        from_fold = np.angle(np.exp(1j * (theta - notch - np.pi)))
        return (body(theta) * (1 + stretch * np.cos(2 * (theta - notch - np.pi / 2)))
                * (1 - depth * np.exp(-(from_notch / width) ** 2))
                * (1 - fold * np.exp(-(from_fold / 0.4) ** 2)))
    # The notch faces away from the shift, so the nucleus hugs one side of the cell.
    return _polar_alpha(dx + shift * np.cos(notch), dy + shift * np.sin(notch), outline, edge)


def _lobed_nucleus(dx: np.ndarray, dy: np.ndarray, radius: float, recipe: _Recipe,
                   rng: np.random.Generator, edge: float) -> np.ndarray:
    """Lobes strung along a curved arc, joined by strands (thin: segmented; thick: band form)."""
    n = int(rng.integers(recipe.lobes[0], recipe.lobes[1] + 1))
    lobe = rng.uniform(*recipe.nucleus_size) * radius
    arc = rng.uniform(0.35, 0.5) * radius
    step = 2 * np.arcsin(min(1.0, lobe * rng.uniform(1.5, 2.1) / (2 * arc)))
    step = min(step, 1.7 * np.pi / max(n - 1, 1))
    angles = rng.uniform(0, 2 * np.pi) + step * (np.arange(n) - (n - 1) / 2)
    centres = arc * np.stack([np.cos(angles), np.sin(angles)], 1) + rng.normal(0, 0.04 * radius, (n, 2))
    centres -= centres.mean(0) - rng.normal(0, 0.06 * radius, 2)
    stretch = rng.uniform(1.0, 1.25, n)
    reach = np.hypot(*centres.T).max() + lobe * stretch.max()
    centres *= min(1.0, 0.9 * radius / reach)  # keep the nucleus inside the cell
    alpha = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), np.float32)
    for (px, py), angle, elong in zip(centres, angles, stretch):
        tangent = angle + np.pi / 2 + rng.uniform(-0.4, 0.4)
        width = lobe * rng.uniform(0.75, 0.95)
        lobe_alpha = _ellipse_alpha(dx - px, dy - py, lobe * elong, width, tangent, edge)
        np.maximum(alpha, lobe_alpha, out=alpha)
    for p, q in zip(centres[:-1], centres[1:]):
        np.maximum(alpha, _capsule_alpha(dx, dy, p, q, recipe.strand * lobe * 0.85, edge), out=alpha)
    return alpha


_NUCLEUS_SHAPES = {"round": _round_nucleus, "kidney": _kidney_nucleus, "lobed": _lobed_nucleus}


# ---------------------------------------------------------------- drawing cells

def _draw_nucleated(canvas: np.ndarray, cell: _Cell, recipe: _Recipe, px_per_um: float,
                    rng: np.random.Generator) -> Box:
    """Draw one nucleated cell; return its tight box (unclipped, frame coordinates)."""
    radius = cell.diameter / 2
    x0, y0, dx, dy = _patch_grid(cell.x, cell.y, radius * _BODY_SLACK + 2)
    body = _polar_alpha(dx, dy, _random_outline(rng, radius, _BODY_ELONGATION, _BODY_WOBBLE))
    edge = max(1.0, 0.3 * px_per_um)  # nuclei have slightly soft borders at high magnification
    nucleus = _NUCLEUS_SHAPES[recipe.nucleus_shape](dx, dy, radius, recipe, rng, edge) * body
    od = _nucleated_od(body, nucleus, radius, recipe, px_per_um, rng)
    _add_to_canvas(canvas, od, x0, y0)
    # A sub-pixel cell (absurdly small scale) covers no pixel by half; fall back to its nominal box.
    return _tight_box(body, x0, y0) or (cell.x - radius, cell.y - radius, cell.x + radius, cell.y + radius)


def _nucleated_od(body: np.ndarray, nucleus: np.ndarray, radius: float, recipe: _Recipe,
                  px_per_um: float, rng: np.random.Generator) -> np.ndarray:
    """Density of a nucleated cell: textured cytoplasm and chromatin, then vacuoles, nucleoli, granules."""
    shape = body.shape
    cytoplasm = 1 - nucleus
    grain, contrast = recipe.chromatin
    chromatin = np.clip(1 + contrast * _smooth_noise(shape, grain * px_per_um, rng), 0.3, None)
    if recipe.nucleoli[1]:
        count = int(rng.integers(recipe.nucleoli[0], recipe.nucleoli[1] + 1))
        chromatin *= 1 - 0.45 * _spots(nucleus, count, 1.6 * px_per_um, rng)
    texture = 1 + 0.1 * _smooth_noise(shape, 1.5 * px_per_um, rng)
    if recipe.vacuoles[1]:
        count = int(rng.integers(recipe.vacuoles[0], recipe.vacuoles[1] + 1))
        texture *= 1 - 0.75 * _spots(cytoplasm * body, count, 1.3 * px_per_um, rng)
    od = (_colour_jitter(_od(recipe.cytoplasm_rgb), rng) * (cytoplasm * texture)[..., None]
          + _colour_jitter(_od(recipe.nucleus_rgb), rng) * (nucleus * chromatin)[..., None])
    if recipe.granule_cover:
        region = body if recipe.granules_over_nucleus else body * cytoplasm
        diameter = recipe.granule_um * px_per_um
        count = int(recipe.granule_cover * region.sum() / (np.pi * max(diameter, 1.0) ** 2 / 4))
        granules = _spots(region, count, diameter, rng) * region
        granule_od = _colour_jitter(_od(recipe.granule_rgb), rng)
        od = od * (1 - granules[..., None]) + granule_od * granules[..., None]
    return od * body[..., None]


def _draw_many(canvas: np.ndarray, points: np.ndarray, draw: Drawer, extent_px: float,
               px_per_um: float, rng: np.random.Generator) -> None:
    """Draw background objects at `points` with `draw(canvas, x, y, px_per_um, rng)`.

    Beyond a bank's worth, stamp randomly turned and mirrored copies of a bank of drawn
    variants instead: indistinguishable among hundreds of objects and several times faster.
    `extent_px` bounds an object's reach from its centre.
    """
    if len(points) <= _SPRITE_BANK:
        for x, y in points:
            draw(canvas, x, y, px_per_um, rng)
        return
    side = 2 * int(np.ceil(extent_px)) + 2
    drawn = np.zeros((_SPRITE_BANK, side, side, 3), np.float32)
    for sprite in drawn:
        draw(sprite, side / 2, side / 2, px_per_um, rng)
    turned = [np.rot90(drawn, k, axes=(1, 2)) for k in range(4)]
    bank = np.ascontiguousarray(np.concatenate(turned + [t[:, :, ::-1] for t in turned]))
    origins = np.round(points - side / 2).astype(int)
    for (x0, y0), pick in zip(origins, rng.integers(len(bank), size=len(points))):
        _add_to_canvas(canvas, bank[pick], int(x0), int(y0))


def _draw_rbc(canvas: np.ndarray, cx: float, cy: float, px_per_um: float, rng: np.random.Generator) -> None:
    """A biconcave red cell: a pink disc with a paler centre and a slightly denser rim."""
    radius = RBC_DIAMETER_UM * px_per_um / 2 * rng.uniform(0.9, 1.1)
    e, angle = rng.uniform(0, 0.08), rng.uniform(0, np.pi)
    a, b = radius * (1 + e), radius * (1 - e)
    x0, y0, dx, dy = _patch_grid(cx, cy, a + 1)
    c, s = np.cos(angle), np.sin(angle)
    rn = np.hypot((dx * c + dy * s) / a, (dy * c - dx * s) / b)  # 0 at the centre, 1 at the edge
    alpha = np.clip((1 - rn) * radius + 0.5, 0, 1)
    pallor = rng.uniform(0.45, 0.7) * np.exp(-(rn / rng.uniform(0.35, 0.5)) ** 4)
    rim = 0.15 * np.exp(-((rn - 0.85) / 0.12) ** 2)
    od = _colour_jitter(_od(_RBC_RGB), rng, 0.05, 0.1) * (alpha * (1 - pallor + rim))[..., None]
    _add_to_canvas(canvas, od, x0, y0)


def _draw_platelet(canvas: np.ndarray, cx: float, cy: float, px_per_um: float,
                   rng: np.random.Generator) -> None:
    """A small irregular purple fragment with a granular centre."""
    radius = rng.uniform(*PLATELET_DIAMETER_UM) * px_per_um / 2
    x0, y0, dx, dy = _patch_grid(cx, cy, radius * 1.45 + 1)
    alpha = _polar_alpha(dx, dy, _random_outline(rng, radius, 0.25, 0.06))
    grains = np.clip(1 + 0.4 * _smooth_noise(alpha.shape, 0.5 * px_per_um, rng), 0.2, None)
    od = _colour_jitter(_od(_PLATELET_RGB), rng, 0.08, 0.25) * (alpha * grains)[..., None]
    _add_to_canvas(canvas, od, x0, y0)


def _background_od(height: int, width: int, px_per_um: float, rng: np.random.Generator) -> np.ndarray:
    """Pale stained plasma/glass with gentle unevenness on a scale of ~40 um."""
    grain = 40 * px_per_um
    grid = 1 + 0.15 * rng.standard_normal((int(height / grain) + 2, int(width / grain) + 2, 1))
    grid = (grid * _od(_BACKGROUND_RGB)).astype(np.float32)
    # Smooth at 1/8 resolution, then a cheap linear step to full size (big fields).
    small = cv2.resize(grid, (max(2, width // 8), max(2, height // 8)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- optics and camera

def _finish(canvas: np.ndarray, config: SmearConfig, rng: np.random.Generator,
            frame_origin: tuple[float, float]) -> np.ndarray:
    """Density canvas -> BGR uint8 through illumination, stain shift, blur and noise.

    Consumes `canvas`. Works in row bands so big fields need no full-frame float temporaries.
    """
    height, width = canvas.shape[:2]
    light = _illumination_model(config.illumination, rng)
    stain = _stain_model(config.stain_shift, rng)
    image = np.empty((height, width, 3), np.uint8)
    cols = (np.arange(width, dtype=np.float32) + 0.5 + frame_origin[0]) / config.width
    rows = (np.arange(height, dtype=np.float32) + 0.5 + frame_origin[1]) / config.height
    for top in range(0, height, _BAND_ROWS):
        band = canvas[top:top + _BAND_ROWS]
        np.exp(np.negative(band, out=band), out=band)
        if light is not None:
            band *= light(cols[None, :], rows[top:top + _BAND_ROWS, None])[..., None]
        if stain is not None:
            band = stain(band)
        image[top:top + band.shape[0]] = cv2.convertScaleAbs(band, alpha=255)
    if config.blur_sigma > 0:
        image = cv2.GaussianBlur(image, (0, 0), config.blur_sigma)
    if config.noise_std > 0:
        _add_noise(image, config.noise_std, rng)
    return image


def _illumination_model(strength: float, rng: np.random.Generator) -> Callable | None:
    """Relative light over the frame (coordinates in frame units 0..1): off-centre vignetting and a tilt."""
    # Drawn even when off, so the noise drawn after it does not depend on this knob.
    cx, cy = rng.uniform(0.3, 0.7, 2)
    tilt_x, tilt_y = rng.uniform(-0.3, 0.3, 2)
    s = strength
    if s <= 0:
        return None

    def light(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        # Separable: a row term plus a column term, so only the final sum is full size.
        across = 1 - s * ((u - cx) ** 2 - tilt_x * (u - 0.5))
        down = s * ((v - cy) ** 2 - tilt_y * (v - 0.5))
        return np.clip(across - down, 0.05, None)
    return light


def _stain_model(magnitude: float, rng: np.random.Generator) -> Callable | None:
    """A random global hue rotation and saturation/brightness scaling, on float BGR in [0, 1]."""
    # Drawn even when off, so the noise drawn after it does not depend on this knob.
    hue = magnitude * rng.uniform(-25, 25)  # degrees
    saturation = 1 + magnitude * rng.uniform(-0.4, 0.4)
    brightness = 1 + magnitude * rng.uniform(-0.15, 0.15)
    if magnitude == 0:
        return None

    def shift(bgr: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(np.clip(bgr, 0, 1), cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0] + hue) % 360
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 1)
        hsv[..., 2] *= brightness
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return shift


def _add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Additive Gaussian sensor noise, in place, band by band."""
    for top in range(0, image.shape[0], _BAND_ROWS):
        band = image[top:top + _BAND_ROWS]
        noisy = band + rng.standard_normal(band.shape, dtype=np.float32) * std
        band[:] = np.clip(noisy + 0.5, 0, 255)
