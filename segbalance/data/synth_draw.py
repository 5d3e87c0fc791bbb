"""Drawing the synthetic nail photos: each group's look (:data:`STYLES`) and :func:`render`.

Drawing is vectorised numpy on the bounding box of each shape (:class:`GroupStyle` says how a
group's photos look); every image draws from its own generator seeded by
``(seed, group, index)``, so one image never depends on which others were drawn.

With ``classes`` the photo also gets a metal ring on a finger in some images (:data:`RING_ODDS`:
most images of the small groups 3 and 4, few of the others), and the mask is a label map:
0 background, 1 nail, 2 ring (:data:`CLASS_NAMES`). The ring's choices come from a second
generator, so the rest of the photo is exactly the binary one's.

Example:
    >>> image, mask = render("0", 0, size=64, seed=0)
    >>> image.shape, mask.shape, sorted(set(mask.ravel().tolist())) == [0, 255]
    ((64, 64, 3), (64, 64), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

RGB = tuple[float, float, float]
#: The classes of ``render(..., classes=True)`` masks, in label-value order.
CLASS_NAMES = ("background", "nail", "ring")
NAIL, RING = 1, 2
#: Per group, the share of images with a ring: the rare class lives in the small groups.
RING_ODDS = {"0": 0.05, "1": 0.08, "2": 0.05, "3": 0.8, "4": 0.8}
_RING_COLOURS: tuple[RGB, ...] = ((226, 180, 40), (240, 200, 70), (205, 212, 225))


@dataclass(frozen=True)
class GroupStyle:
    """How the photos of one group look. Fractions are relative to the image side."""

    description: str
    nails: tuple[int, int]  # inclusive range of visible fingers/nails
    finger_width: tuple[float, float]
    angle_spread: float  # degrees around "pointing up"; 180 = any direction
    brightness: tuple[float, float]
    cast: RGB  # per-channel gain of the light
    vignette: float
    noise: float  # gaussian sigma in 0..255 units
    blur: float  # gaussian radius in pixels at 384 px
    skins: tuple[RGB, ...]
    polishes: tuple[RGB, ...]
    background: str  # "light" | "wood" | "fabric" | "dark"
    free_edge: float = 0.0  # whiteness of the nail tip (natural nails)


_LIGHT_SKINS: tuple[RGB, ...] = ((236, 196, 170), (224, 172, 140), (200, 150, 118))
_DARK_SKINS: tuple[RGB, ...] = ((150, 100, 72), (120, 80, 58), (176, 122, 90))

STYLES: dict[str, GroupStyle] = {
    "0": GroupStyle(
        "studio: bright even light, medium nails, red/pink polish",
        nails=(1, 4), finger_width=(0.09, 0.13), angle_spread=40,
        brightness=(0.95, 1.05), cast=(1.0, 1.0, 1.0), vignette=0.05, noise=2.0, blur=0.0,
        skins=_LIGHT_SKINS, background="light",
        polishes=((200, 20, 40), (230, 60, 120), (150, 20, 60), (250, 110, 140)),
    ),
    "1": GroupStyle(
        "warm close-up: one or two large nails, yellow light, wood",
        nails=(1, 2), finger_width=(0.17, 0.25), angle_spread=60,
        brightness=(0.85, 1.0), cast=(1.12, 1.0, 0.75), vignette=0.15, noise=3.0, blur=0.6,
        skins=_LIGHT_SKINS, background="wood",
        polishes=((225, 190, 170), (240, 210, 200), (190, 60, 50)),
    ),
    "2": GroupStyle(
        "cool daylight: bluish cast, striped fabric, natural pale nails",
        nails=(2, 5), finger_width=(0.08, 0.12), angle_spread=180,
        brightness=(0.85, 1.0), cast=(0.85, 0.97, 1.18), vignette=0.1, noise=3.0, blur=1.0,
        skins=_LIGHT_SKINS + _DARK_SKINS[2:], background="fabric",
        polishes=((245, 215, 210), (235, 200, 195)), free_edge=0.7,
    ),
    "3": GroupStyle(
        "dim: dark, strong vignette, darker skin, nude polish",
        nails=(1, 4), finger_width=(0.10, 0.15), angle_spread=90,
        brightness=(0.45, 0.65), cast=(1.0, 0.95, 0.9), vignette=0.45, noise=5.0, blur=0.5,
        skins=_DARK_SKINS, background="dark",
        polishes=((170, 120, 100), (140, 95, 80), (190, 140, 120)),
    ),
    "4": GroupStyle(
        "far away: many tiny nails, blue/green/black polish, blur and noise",
        nails=(4, 5), finger_width=(0.04, 0.06), angle_spread=180,
        brightness=(0.8, 1.1), cast=(1.0, 1.0, 1.0), vignette=0.2, noise=10.0, blur=1.6,
        skins=_LIGHT_SKINS + _DARK_SKINS, background="light",
        polishes=((30, 60, 200), (20, 150, 70), (25, 25, 30)),
    ),
}  # fmt: skip


def _window(h: int, w: int, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
    ys = slice(max(0, math.floor(y0)), min(h, math.ceil(y1) + 1))
    xs = slice(max(0, math.floor(x0)), min(w, math.ceil(x1) + 1))
    return ys, xs


def _grid(ys: slice, xs: slice) -> tuple[np.ndarray, np.ndarray]:
    yy = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None] + 0.5
    xx = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :] + 0.5
    return yy, xx


class _Canvas:
    """An RGB float image plus its mask (and label map); shapes blend with a soft edge."""

    def __init__(self, img: np.ndarray, labels: bool = False) -> None:
        self.img = img
        self.mask = np.zeros(img.shape[:2], dtype=bool)
        self.labels = np.zeros(img.shape[:2], dtype=np.uint8) if labels else None
        self.h, self.w = img.shape[:2]

    def label(self, ys: slice, xs: slice, alpha: np.ndarray, value: int) -> None:
        """Set the label map to ``value`` where a shape covers a pixel (alpha >= 0.5)."""
        if self.labels is not None:
            region = self.labels[ys, xs]  # a view
            region[alpha >= 0.5] = value

    def blend(self, ys: slice, xs: slice, alpha: np.ndarray, colour: np.ndarray) -> None:
        region = self.img[ys, xs]  # a view: blend in place
        region += (colour - region) * alpha[..., None]

    def finger(self, base: np.ndarray, tip: np.ndarray, radius: float, skin: np.ndarray) -> None:
        """A capsule from ``base`` to ``tip`` (y, x) shaded like a cylinder; hides nails below."""
        pad = radius + 2
        lo, hi = np.minimum(base, tip) - pad, np.maximum(base, tip) + pad
        ys, xs = _window(self.h, self.w, lo[0], hi[0], lo[1], hi[1])
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return
        yy, xx = _grid(ys, xs)
        # python floats keep the float32 grids float32 (numpy scalars would promote)
        by, bx = float(base[0]), float(base[1])
        sy, sx = float(tip[0] - base[0]), float(tip[1] - base[1])
        dy, dx = yy - by, xx - bx
        t = np.clip((dy * sy + dx * sx) / (sy * sy + sx * sx), 0.0, 1.0)
        dist = np.hypot(dy - t * sy, dx - t * sx)
        alpha = np.clip(radius + 0.5 - dist, 0.0, 1.0)
        shade = 1.0 - 0.28 * np.clip(dist / radius, 0.0, 1.0) ** 2
        self.blend(ys, xs, alpha, skin * shade[..., None])
        self.mask[ys, xs] &= alpha < 0.5
        self.label(ys, xs, alpha, 0)

    def ellipse(
        self,
        centre: np.ndarray,
        axis: np.ndarray,
        half_len: float,
        half_wid: float,
        colour: np.ndarray,
        *,
        power: float = 2.6,
        gloss: float = 0.0,
        free_edge: float = 0.0,
        opacity: float = 1.0,
        is_nail: bool = False,
        label: int = 0,
    ) -> None:
        """A rotated rounded (super)ellipse; ``axis`` is the unit (y, x) long-axis direction."""
        pad = max(half_len, half_wid) * 1.1 + 2
        ys, xs = _window(
            self.h, self.w, centre[0] - pad, centre[0] + pad, centre[1] - pad, centre[1] + pad
        )
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return
        yy, xx = _grid(ys, xs)
        dy, dx = yy - float(centre[0]), xx - float(centre[1])
        ay, ax = float(axis[0]), float(axis[1])
        u = (dy * ay + dx * ax) * (1.0 / half_len)
        v = (dx * ay - dy * ax) * (1.0 / half_wid)
        r = (np.abs(u) ** power + np.abs(v) ** power) ** (1.0 / power)
        alpha = np.clip(0.5 - (r - 1.0) * min(half_len, half_wid), 0.0, 1.0)
        # Curved glossy surface: darker towards the sides, a soft streak of light along it.
        shade = 1.0 - 0.22 * np.clip(np.abs(v), 0.0, 1.0) ** 2
        fill = colour * shade[..., None]
        if gloss > 0:
            streak = np.exp(-(((v + 0.35) / 0.16) ** 2) - (u / 0.7) ** 4) * gloss
            fill = fill + (255.0 - fill) * streak[..., None]
        if free_edge > 0:  # u grows towards the finger tip
            edge = np.clip((u - 0.5) * 6.0, 0.0, 1.0) * free_edge
            fill = fill + (250.0 - fill) * edge[..., None]
        self.blend(ys, xs, alpha * opacity, fill)
        if is_nail:
            self.mask[ys, xs] |= alpha >= 0.5
        if label:
            self.label(ys, xs, alpha, label)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a small random grid resized bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    big = Image.fromarray(small, mode="F").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32)


def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    yy = np.arange(h, dtype=np.float32)[:, None] / max(h, w)
    xx = np.arange(w, dtype=np.float32)[None, :] / max(h, w)
    blotch = _smooth_noise(rng, h, w, 6)[..., None]
    if kind == "light":
        base = np.array(rng.uniform(205, 245, 3), dtype=np.float32)
        return np.broadcast_to(base, (h, w, 3)) * (1 + 0.03 * blotch)
    if kind == "wood":
        angle = rng.uniform(0, np.pi)
        along = math.cos(angle) * yy + math.sin(angle) * xx
        grain = np.sin(along * rng.uniform(40, 70) + 3 * _smooth_noise(rng, h, w, 5))
        base = np.array((150, 100, 60), dtype=np.float32) * rng.uniform(0.8, 1.1)
        return base * (1 + 0.12 * grain[..., None] + 0.05 * blotch)
    if kind == "fabric":
        period = rng.uniform(0.05, 0.12)
        stripes = (np.floor(xx / period + 0.3 * yy / period) % 2)[..., None]
        c1 = np.array(rng.uniform(60, 200, 3), dtype=np.float32)
        c2 = np.array(rng.uniform(150, 240, 3), dtype=np.float32)
        return (c1 * stripes + c2 * (1 - stripes)) * (1 + 0.04 * blotch)
    base = np.array(rng.uniform(35, 70, 3), dtype=np.float32)
    return np.broadcast_to(base, (h, w, 3)) * (1 + 0.1 * blotch)


def _ring_fingers(rings: np.random.Generator | None, group: str, n: int) -> set[int]:
    """Which of the ``n`` fingers wear a ring (none without the ring generator)."""
    if rings is None or rings.random() >= RING_ODDS[group]:
        return set()
    count = 2 if n >= 4 and rings.random() < 0.4 else 1
    return {int(i) for i in rings.choice(n, size=count, replace=False)}


def _draw_ring(
    rings: np.random.Generator,
    canvas: _Canvas,
    base: np.ndarray,
    end: np.ndarray,
    radius: float,
) -> None:
    """A glossy metal band across the finger from ``base`` to ``end``, below its nail."""
    axis = (end - base) / max(float(np.linalg.norm(end - base)), 1e-6)
    centre = end - axis * radius * rings.uniform(2.7, 3.4)
    side = float(min(canvas.h, canvas.w))
    half_len = max(radius * rings.uniform(0.5, 0.62), 0.018 * side)  # a wide band: learnable
    colour = np.array(_RING_COLOURS[rings.integers(len(_RING_COLOURS))], dtype=np.float32)
    canvas.ellipse(centre, axis, half_len * 1.35, radius * 1.12, colour * 0.45, power=4.0)
    canvas.ellipse(
        centre, axis, half_len, radius * 1.1, colour,
        power=4.0, gloss=rings.uniform(0.5, 0.8), label=RING,
    )  # fmt: skip


def _draw_hand(
    rng: np.random.Generator,
    canvas: _Canvas,
    style: GroupStyle,
    rings: np.random.Generator | None = None,
    group: str = "0",
) -> None:
    h, w = canvas.h, canvas.w
    side = float(min(h, w))
    n = int(rng.integers(style.nails[0], style.nails[1] + 1))
    width = rng.uniform(*style.finger_width) * side
    angle = np.deg2rad(-90 + rng.uniform(-style.angle_spread, style.angle_spread))
    d = np.array((np.sin(angle), np.cos(angle)))  # finger direction (y, x); -90 deg = up
    p = np.array((d[1], -d[0]))  # across the fingers
    spacing = width * rng.uniform(1.05, 1.25)
    reach = (n - 1) * spacing / 2 + width
    centre = np.array((rng.uniform(0.5 * reach, h - 0.5 * reach), rng.uniform(reach, w - reach)))
    centre = np.clip(centre, 0.2 * side, (h - 0.2 * side, w - 0.2 * side))
    skin = np.array(style.skins[rng.integers(len(style.skins))], dtype=np.float32)
    skin = skin * rng.uniform(0.92, 1.06) * (1 + 0.05 * _smooth_noise(rng, 1, 3, 3)[0])
    polish = np.array(style.polishes[rng.integers(len(style.polishes))], dtype=np.float32)
    # Back of the hand and the wrist run out of the frame behind the fingers.
    palm = centre - d * width * rng.uniform(4.5, 6.0)
    palm_wid = reach + 0.2 * width
    canvas.finger(palm - d * side * 1.5, palm, palm_wid * 0.85, skin * 0.97)
    canvas.ellipse(palm, d, 2.2 * width + 0.3 * palm_wid, palm_wid, skin * 0.97, power=2.2)
    ringed = _ring_fingers(rings, group, n)
    for i in range(n):
        offset = (i - (n - 1) / 2) * spacing
        middle = 1.0 - abs(i - (n - 1) / 2) / max(1.0, n / 2)
        tip = centre + p * offset + d * width * (0.6 * middle + rng.uniform(-0.3, 0.3))
        tilt = d + p * rng.uniform(-0.08, 0.08)
        tilt = tilt / np.linalg.norm(tilt)
        radius = width / 2 * rng.uniform(0.9, 1.05)
        canvas.finger(palm + p * offset * 0.9, tip - tilt * radius, radius, skin)
        if rings is not None and i in ringed:
            _draw_ring(rings, canvas, palm + p * offset * 0.9, tip - tilt * radius, radius)
        nail_len, nail_wid = radius * rng.uniform(0.95, 1.2), radius * rng.uniform(0.72, 0.82)
        nail_c = tip - tilt * (radius * 0.3 + nail_len)
        canvas.ellipse(nail_c, tilt, nail_len * 1.08, nail_wid * 1.1, skin * 0.8)  # cuticle
        colour = polish * rng.uniform(0.9, 1.08)
        gloss = rng.uniform(0.35, 0.6)
        canvas.ellipse(
            nail_c, tilt, nail_len, nail_wid, colour,
            gloss=gloss, free_edge=style.free_edge, is_nail=True, label=NAIL,
        )  # fmt: skip


def render(
    group: str, index: int, size: int, seed: int, classes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3) and its mask, fixed by its arguments.

    The mask is uint8 HxW 0/255 (nails), or with ``classes`` the label map 0 background,
    1 nail, 2 ring (the ring only in some images, :data:`RING_ODDS`).
    """
    style = STYLES[group]
    rng = np.random.default_rng([seed, int(group), index])
    rings = np.random.default_rng([seed, int(group), index, RING]) if classes else None
    h = w = size
    canvas = _Canvas(_background(rng, style.background, h, w).astype(np.float32), classes)
    _draw_hand(rng, canvas, style, rings, group)
    yy = np.arange(h, dtype=np.float32)[:, None] / size - 0.5
    xx = np.arange(w, dtype=np.float32)[None, :] / size - 0.5
    phi, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.25)
    light = 1 + slope * (math.cos(phi) * xx + math.sin(phi) * yy)
    light = light * (1 - style.vignette * 2 * (xx**2 + yy**2)) * rng.uniform(*style.brightness)
    img = canvas.img
    img *= light[..., None]
    img *= np.array(style.cast, dtype=np.float32)
    out = Image.fromarray(np.clip(img, 0, 255, out=img).astype(np.uint8))
    if style.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(style.blur * size / 384))
    pixels = np.asarray(out, dtype=np.float32)
    noise = rng.standard_normal(pixels.shape, dtype=np.float32)
    noise *= style.noise
    noise += pixels
    noise += 0.5
    mask = canvas.mask.astype(np.uint8) * 255 if canvas.labels is None else canvas.labels
    return np.clip(noise, 0, 255, out=noise).astype(np.uint8), mask
