"""Training augmentation on uint8 BGR images (H, W, 3), before the shared preprocessing.

The CCL paper's set, each applied with probability 0.5: rotation by 0-90
degrees, a random resized crop (torchvision's default scale and ratio), one of
brightness / contrast / saturation with an offset of 0.3, and random erasing
(torchvision's defaults). Added for robustness to other labs and microscopes:
right-angle turns and flips (a cell has no up), stain jitter in optical density,
hue shift, gamma, Gaussian blur (focus), sensor noise, JPEG re-encoding, and a
jitter of the cell's box (scale and framing) before the cell view is cut.

Each transform is a plain function of the image and its parameters; `Augment`
draws the parameters from a numpy Generator, so a seed fixes the result per
(seed, epoch, DataLoader worker) (torchvision's transform classes draw from
torch's global generator instead). Every transform keeps the image's shape and dtype.

Where torchvision.transforms.v2 has the same operation, it does the pixel work:
brightness, contrast, saturation and erasing. The rest are ours, and why:
the HED stain jitter, hue on OpenCV's full-range HSV and gamma have no v2
equivalent of the same meaning; JPEG uses OpenCV's codec (torchvision 0.29
deprecates its own image encoding); rotation fills its corners by reflection (v2
fills a constant); crops and blur resample with OpenCV as the device does;
noise and the box jitter act before the cell view is cut.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as tvf

from edge.runtime.preprocess import IMAGENET_MEAN

Box = tuple[int, int, int, int]  # top, left, height, width

# Stain vectors (rows: haematoxylin, eosin, DAB) in RGB optical density, Ruifrok &
# Johnston 2001 as in scikit-image. They are H&E's; for the Romanowsky stains of
# blood smears (MGG, Wright-Giemsa) they are only roughly right, which is all a
# jitter needs: any invertible basis near the stains' own keeps the jitter's
# variations looking like stain variations.
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED).astype(np.float32)

# torchvision's RandomErasing fills with 0 after normalisation, i.e. with the mean colour.
MEAN_BGR: tuple[int, int, int] = tuple(round(255 * v) for v in IMAGENET_MEAN[::-1])


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _with_torchvision(image: np.ndarray, operation, *args) -> np.ndarray:
    """Apply a torchvision v2 functional `operation` to a uint8 BGR image (H, W, 3)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1)
    out = operation(tensor, *args)
    return np.ascontiguousarray(out.permute(1, 2, 0).numpy()[..., ::-1])


# ---------------------------------------------------------------- geometry

def turn(image: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """Rotate by a multiple of 90 degrees (counter-clockwise), then optionally mirror left-right."""
    out = np.rot90(image, quarter_turns)
    return np.ascontiguousarray(out[:, ::-1] if flip else out)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate counter-clockwise about the image centre, keeping the size.

    The corners are filled by reflecting the image rather than with black
    (torchvision's fill): the device never sees black wedges, so training
    should not teach the model that they mean "rotated".
    """
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def crop_resize(image: np.ndarray, box: Box) -> np.ndarray:
    """Cut `box` out and resize it back to the image's size."""
    top, left, bh, bw = box
    h, w = image.shape[:2]
    return cv2.resize(image[top:top + bh, left:left + bw], (w, h), interpolation=cv2.INTER_LINEAR)


def _ten_sizes(area: int, rng: np.random.Generator, scale: tuple[float, float],
               ratio: tuple[float, float]) -> Iterator[tuple[int, int]]:
    """torchvision's ten tries: sides (a, b) with a * b a `scale` fraction of `area`, a / b log-uniform in `ratio`."""
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        yield round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
    """torchvision's RandomResizedCrop box: area fraction in `scale`, aspect (w/h) log-uniform in `ratio`.

    Ten tries, then the largest central box with an aspect inside `ratio`.
    """
    for w, h in _ten_sizes(height * width, rng, scale, ratio):
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------- colour

def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale every channel by `factor` (torchvision: blend with black)."""
    return _with_torchvision(image, tvf.adjust_brightness, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's mean grey level (torchvision's adjust_contrast)."""
    return _with_torchvision(image, tvf.adjust_contrast, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the pixel's own grey level: 0 gives grey, 1 the image (torchvision's adjust_saturation)."""
    return _with_torchvision(image, tvf.adjust_saturation, factor)


def jitter_stains(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift the three stain concentrations in optical density (Tellez et al. 2018).

    Per pixel, OD = -ln((I + 1) / 256) is split into stain amounts by the
    inverse stain basis, each stain s becomes s * scale + shift, and the
    result is recomposed. scale 1 and shift 0 give the image back.
    """
    rgb = image[..., ::-1].reshape(-1, 3).astype(np.float32)
    stains = -np.log((rgb + 1.0) / 256.0) @ _HED_FROM_RGB
    od = (stains * np.asarray(scale, np.float32) + np.asarray(shift, np.float32)) @ _RGB_FROM_HED
    out = 256.0 * np.exp(-od) - 1.0
    return _to_uint8(out).reshape(image.shape)[..., ::-1].copy()


def shift_hue(image: np.ndarray, turns: float) -> np.ndarray:
    """Rotate the hue by `turns` of the colour circle (0.5 = opposite colour)."""
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(turns * 256)) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR_FULL)


def adjust_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """I -> 255 (I / 255) ** gamma: gamma < 1 lightens the mid-tones, black and white stay."""
    table = _to_uint8(255.0 * (np.arange(256) / 255.0) ** gamma)
    return cv2.LUT(image, table)


# ---------------------------------------------------------------- degradation

def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (defocus)."""
    return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode as JPEG at `quality` (1-100) and decode: the block artefacts of compressed cameras.
    OpenCV's codec: torchvision 0.29 deprecates its own image encoding (v2's jpeg rests on it)."""
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian sensor noise of `sigma` grey levels, independent per pixel and channel."""
    return _to_uint8(image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32))


def jitter_box(box: np.ndarray, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """`box` (x0, y0, x1, y1) about its centre times `scale`, moved by `shift` x its longer side."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    cx, cy, half_w, half_h = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * scale, (y1 - y0) / 2 * scale
    side = max(x1 - x0, y1 - y0)
    cx, cy = cx + shift[0] * side, cy + shift[1] * side
    return np.array([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dtype=np.float32)


def erase(image: np.ndarray, box: Box, fill: tuple[int, int, int]) -> np.ndarray:
    """Paint `box` with the BGR colour `fill`."""
    top, left, h, w = box
    value = torch.tensor(fill[::-1], dtype=torch.uint8)[:, None, None]  # RGB, as the tensor is
    return _with_torchvision(image, tvf.erase, top, left, h, w, value)


def random_erase_box(height: int, width: int, rng: np.random.Generator,
                     scale: tuple[float, float] = (0.02, 0.33),
                     ratio: tuple[float, float] = (0.3, 3.3)) -> Box | None:
    """torchvision's RandomErasing box (aspect h/w log-uniform in `ratio`); None if ten tries miss."""
    for h, w in _ten_sizes(height * width, rng, scale, ratio):
        if 0 < h < height and 0 < w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


# ---------------------------------------------------------------- composition

@dataclass(frozen=True)
class Augment:
    """The training augmentation: call with (image, rng); each step fires with its probability.

    Before any of them, `jitter_box` rescales and moves the cell's box, so
    the cell view (edge.runtime.cell_view) frames it as a detector's looser, tighter
    or off-centre box would. Order: geometry, colour and stain, degradation,
    erasing last (as torchvision erases the finished tensor). The crop and erase areas are
    narrower than torchvision's defaults (crop down to 8 %, erase up to 33 %):
    on single-cell images those often cut away or cover the whole cell, which
    teaches the label from the background.
    """

    p_frame: float = 0.8
    frame_scale: tuple[float, float] = (0.8, 1.25)
    frame_shift: float = 0.08
    p_turn: float = 1.0
    p_rotate: float = 0.5
    max_degrees: float = 90.0
    p_crop: float = 0.5
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    p_colour: float = 0.5
    colour_offset: float = 0.3
    # Stain and hue wider than the paper's colour jitter: another lab's stain differs more than
    # one lab's slides do (BCCD's Wright-Giemsa against PBC's May-Grunwald-Giemsa).
    p_stain: float = 0.6
    stain_scale: float = 0.15
    stain_shift: float = 0.08
    p_hue: float = 0.4
    max_hue_turns: float = 0.05
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (40, 95)
    p_noise: float = 0.2
    noise_sigma: tuple[float, float] = (2.0, 8.0)
    p_erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.15)
    erase_ratio: tuple[float, float] = (0.3, 3.3)
    erase_fill: tuple[int, int, int] = MEAN_BGR

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected a uint8 BGR image (H, W, 3), got {image.dtype} {image.shape}")
        steps = ((self.p_turn, self._turn), (self.p_rotate, self._rotate), (self.p_crop, self._crop),
                 (self.p_colour, self._colour), (self.p_stain, self._stain), (self.p_hue, self._hue),
                 (self.p_gamma, self._gamma), (self.p_blur, self._blur), (self.p_noise, self._noise),
                 (self.p_jpeg, self._jpeg), (self.p_erase, self._erase))
        for probability, step in steps:
            if rng.random() < probability:
                image = step(image, rng)
        return image

    def jitter_box(self, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The cell's box for this draw's view: rescaled (log-uniform) and moved, with probability p_frame."""
        if rng.random() >= self.p_frame:
            return box
        low, high = self.frame_scale
        scale = math.exp(rng.uniform(math.log(low), math.log(high)))
        return jitter_box(box, scale, tuple(rng.uniform(-self.frame_shift, self.frame_shift, 2)))

    def _noise(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return add_noise(image, rng.uniform(*self.noise_sigma), rng)

    def _turn(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return turn(image, int(rng.integers(4)), bool(rng.integers(2)))

    def _rotate(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rotate(image, rng.uniform(0.0, self.max_degrees))

    def _crop(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return crop_resize(image, random_crop_box(*image.shape[:2], rng, self.crop_scale, self.crop_ratio))

    def _colour(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        adjust = (adjust_brightness, adjust_contrast, adjust_saturation)[int(rng.integers(3))]
        return adjust(image, rng.uniform(1.0 - self.colour_offset, 1.0 + self.colour_offset))

    def _stain(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = rng.uniform(1.0 - self.stain_scale, 1.0 + self.stain_scale, 3)
        return jitter_stains(image, scale, rng.uniform(-self.stain_shift, self.stain_shift, 3))

    def _hue(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return shift_hue(image, rng.uniform(-self.max_hue_turns, self.max_hue_turns))

    def _gamma(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        low, high = self.gamma_range
        return adjust_gamma(image, math.exp(rng.uniform(math.log(low), math.log(high))))

    def _blur(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return blur(image, rng.uniform(*self.blur_sigma))

    def _jpeg(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return jpeg(image, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))

    def _erase(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        box = random_erase_box(*image.shape[:2], rng, self.erase_scale, self.erase_ratio)
        return image if box is None else erase(image, box, self.erase_fill)


def light_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Right-angle turns, flips and a brightness/contrast jitter: the synthetic bundle's recipe."""
    image = turn(image, int(rng.integers(4)), bool(rng.random() < 0.5))
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-15, 15)
    return _to_uint8(image.astype(np.float32) * gain + bias)
