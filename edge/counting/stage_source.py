"""A synthetic microscope stage: video of a viewport touring one large synthetic smear.

    synthetic-stage[:fields=N,seed=S,width=W,height=H,step=F,still=K,move=M,fps=R,noise=D,density=C,blur=0|1]

The stage visits `fields` positions left to right. The first field is shown
still for K frames; each later one is reached in M moving frames (the view
slides, motion-blurred with blur=1) and then held still for K frames.
Consecutive fields overlap: the stage steps `step` x the field width (0.7 =>
30 % overlap), with a few pixels of jitter across and a little up and down,
so shifts are neither round nor purely horizontal. Frames carry camera noise
of `noise` grey levels (fresh on every frame) and timestamps R frames a second.

Ground truth for tests and demos: `slide` holds every nucleated cell in slide
coordinates (edge/synthetic/smear.py Field; a cell's id is its row), `plan[i]` says
where frame i looks and whether the stage is moving, and `cells_in_view`
gives the cells a frame shows, as an ideal detector would report them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from edge.runtime.frames import Frame
from edge.counting.frame_source import FrameSource, count, number
from edge.synthetic.smear import SmearConfig, render_field

STAGE_OPTIONS = {"fields": count, "seed": count, "width": count, "height": count, "step": number,
                 "still": count, "move": count, "fps": number, "noise": number, "density": number,
                 "blur": count}


@dataclass(frozen=True)
class StageFrame:
    """Ground truth of one frame."""
    origin: tuple[int, int]  # top-left corner of the view on the slide, pixels
    moving: bool
    field: int               # index of the field the stage rests at; -1 while moving


class StageSource(FrameSource):
    def __init__(self, fields: int = 5, seed: int = 0, width: int = 320, height: int = 240,
                 step: float = 0.7, still: int = 12, move: int = 6, fps: float = 30.0, noise: float = 2.0,
                 density: float = 150.0, blur: int = 1):
        super().__init__()
        if fields < 1 or still < 1 or min(width, height) < 32 or not 0 < step <= 2 or fps <= 0:
            raise ValueError("need fields >= 1, still >= 1, width and height >= 32, 0 < step <= 2 and fps > 0")
        self.description = (f"synthetic-stage:fields={fields},seed={seed},width={width},height={height},"
                            f"step={step:g},still={still},move={move}")
        self.size, self.fps, self.noise, self.blur, self.seed = (width, height), fps, noise, bool(blur), seed
        self.field_origins = _field_origins(fields, width, height, step, np.random.default_rng([seed, 7]))
        slide_size = self.field_origins.max(axis=0) + (width, height)
        self.slide = render_field(SmearConfig(width=int(slide_size[0]), height=int(slide_size[1]),
                                              nucleated_per_mpx=density), seed=seed)
        self.plan = _plan(self.field_origins, still, move)
        self.truth: StageFrame | None = None  # of the frame last read
        self._start = time.time()
        self._next = 0

    def _read(self, timeout: float | None) -> Frame | None:
        if self._next >= len(self.plan):
            return None
        i = self._next
        self._next += 1
        self.truth = self.plan[i]
        origin = f"stage field {self.truth.field}" if not self.truth.moving else "stage moving"
        return Frame(i, self._render(i), self._start + i / self.fps, origin)

    def _render(self, i: int) -> np.ndarray:
        (x, y), (w, h) = self.plan[i].origin, self.size
        view = self.slide.image[y:y + h, x:x + w]
        if self.plan[i].moving and self.blur:
            view = _motion_blur(view, np.subtract(self.plan[i].origin, self.plan[i - 1].origin))
        if not self.noise:
            return view.copy()
        rng = np.random.default_rng([self.seed, i, 11])
        noisy = view + rng.standard_normal(view.shape, dtype=np.float32) * self.noise
        return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)

    def cells_in_view(self, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of the cells a view at `origin` shows (any part), and their boxes in frame pixels,
        clipped to the frame: what an ideal detector reports."""
        w, h = self.size
        boxes = np.clip(self.slide.boxes - np.tile(origin, 2), 0, [w, h, w, h])
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return np.flatnonzero(visible), boxes[visible]

    def cells_in_fields(self) -> np.ndarray:
        """Ids of the distinct cells in the union of all fields: what a field-aware count must count."""
        seen = [self.cells_in_view(tuple(origin))[0] for origin in self.field_origins]
        return np.unique(np.concatenate(seen))


def _field_origins(fields: int, width: int, height: int, step: float, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners of the fields, left to right; all >= 0."""
    jitter_x, jitter_y = width // 40, height // 8
    steps = np.round(step * width) + rng.integers(-jitter_x, jitter_x + 1, fields - 1)
    xs = np.concatenate([[jitter_x], jitter_x + np.cumsum(np.maximum(steps, 1))])
    ys = rng.integers(0, 2 * jitter_y + 1, fields)
    return np.stack([xs, ys], axis=1).astype(np.int64)


def _plan(origins: np.ndarray, still: int, move: int) -> list[StageFrame]:
    plan = [StageFrame(tuple(map(int, origins[0])), False, 0)] * still
    for field, (start, end) in enumerate(zip(origins[:-1], origins[1:]), start=1):
        for j in range(1, move + 1):
            position = np.round(start + (end - start) * j / (move + 1)).astype(int)
            plan.append(StageFrame(tuple(map(int, position)), True, -1))
        plan += [StageFrame(tuple(map(int, end)), False, field)] * still
    return plan


def _motion_blur(view: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Smear the view along the displacement of this frame, as a moving stage under exposure does."""
    length = float(np.hypot(*displacement))
    if length < 1:
        return view
    side = int(np.ceil(length)) | 1
    kernel = np.zeros((side, side), np.float32)
    centre, half = np.array([side // 2, side // 2]), displacement / 2
    p, q = np.round(centre - half).astype(int), np.round(centre + half).astype(int)
    cv2.line(kernel, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), 1.0, 1)
    return cv2.filter2D(view, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)
