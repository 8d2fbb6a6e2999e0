"""OOD sets that need no download, and adaptation of foreign data to a model.

Built-in sets (every image uint8 (H, W, C) with values 0..K−1, seeded):

    const      each image one solid value per channel, uniform over 0..K−1 (the paper's set)
    uniform    iid pixels uniform over 0..K−1
    gaussian   iid pixels N((K−1)/2, ((K−1)/6)²), rounded and clipped to 0..K−1
    mnist-like all 1797 handwritten digits of scikit-learn (8×8, 17 levels) in MNIST's
               format: 20×20 box (bicubic, then a contrast ramp that saturates the strokes
               as MNIST's are), placed in 28×28 with the centre of mass at the centre; then
               adapted like any data
    glyphs     letters A–Z, a–z rendered with the system's TrueType fonts (DejaVu, else
               Pillow's built-in font) in MNIST's format: white on black, 20×20 box, centred
               by mass, random weight, size and a small rotation (seeded)
    glyph-digits  the same for the digits 0–9
    shapes     1–3 random outlined or filled ellipses, rectangles and thick lines, white-ish
               on black, anti-aliased (4× supersampled)
    blur       the in-distribution negatives blurred by a Gaussian of σ = 1 pixel (simpler
               images with lower NLL than the originals: the failure complexity corrections
               exist for)
    hflip      the in-distribution negatives mirrored left–right
    vflip      the in-distribution negatives upside down
    invert     the in-distribution negatives with every value v ↦ K−1−v

The last three are paired with the negatives: the same images, transformed, so only the
transformation separates them. Any other name is a DATA spec (``pcdm.data.load``, test
split), adapted to the model: RGB→gray by ITU-R 601 luma (Pillow's ``L``), gray→RGB by
replication, centre crop to the model's aspect ratio, Lanczos resize to H×W, then
requantisation to the model's K by bin centres. Each adaptation is reported.
"""

from __future__ import annotations

import numpy as np

BUILTIN = ("const", "uniform", "gaussian", "mnist-like", "glyphs", "glyph-digits", "shapes")
TRANSFORMS = ("hflip", "vflip", "invert", "blur")


def constant_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` solid images: each image draws one value per channel uniformly from 0..K−1
    (for gray images: one value for the whole image), as the paper's constant set."""
    h, w, c = shape_hwc
    rng = np.random.default_rng([seed, 1])
    values = rng.integers(0, K, size=(n, 1, 1, c), dtype=np.int64)
    return np.ascontiguousarray(np.broadcast_to(values, (n, h, w, c)), dtype=np.uint8)


def uniform_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` images of iid pixels uniform over 0..K−1."""
    rng = np.random.default_rng([seed, 2])
    return rng.integers(0, K, size=(n, *shape_hwc), dtype=np.int64).astype(np.uint8)


def gaussian_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` images of iid pixels N((K−1)/2, ((K−1)/6)²), rounded and clipped to 0..K−1."""
    rng = np.random.default_rng([seed, 3])
    v = rng.normal((K - 1) / 2, (K - 1) / 6, size=(n, *shape_hwc))
    return np.clip(np.rint(v), 0, K - 1).astype(np.uint8)


def mnist_like_images(n: int | None = None) -> np.ndarray:
    """Handwritten digits (scikit-learn's 8×8 set, 17 levels) brought to MNIST's format:
    28×28 gray, K = 256, white strokes on a black background, the digit in a 20×20 box
    centred by its mass. MNIST's strokes are saturated with anti-aliased edges (most of an
    MNIST image is 0, most stroke pixels are near 255), so the bicubic 20×20 upsampling is
    followed by a contrast ramp that maps ≤ 35 % of full scale to 0 and ≥ 65 % to 255."""
    from PIL import Image
    from scipy.ndimage import center_of_mass, shift
    from sklearn.datasets import load_digits

    digits = load_digits().images[:n]  # values 0..16
    out = np.zeros((len(digits), 28, 28, 1), dtype=np.uint8)
    for i, d in enumerate(digits):
        img = Image.fromarray((d * (255.0 / 16)).astype(np.float32), mode="F")
        box = np.asarray(img.resize((20, 20), Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
        box = np.clip((box - 0.35) / 0.30, 0.0, 1.0)
        canvas = np.zeros((28, 28))
        canvas[4:24, 4:24] = box
        cy, cx = center_of_mass(canvas) if canvas.any() else (13.5, 13.5)
        canvas = shift(canvas, (round(13.5 - cy), round(13.5 - cx)), order=0)  # whole pixels, zero fill
        out[i, ..., 0] = np.rint(canvas * 255)
    return out


def _mnist_box(img: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] (strokes bright) → MNIST's format: the bounding box of the
    strokes scaled (Lanczos, aspect kept) into a 20×20 box, placed in 28×28 with the
    centre of mass at the centre; uint8 (28, 28), values 0..255."""
    from PIL import Image
    from scipy.ndimage import center_of_mass, shift

    ys, xs = np.nonzero(img > 0.05)
    canvas = np.zeros((28, 28))
    if len(ys):
        crop = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        h, w = crop.shape
        scale = 20.0 / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        box = Image.fromarray(crop.astype(np.float32), mode="F").resize((nw, nh), Image.Resampling.LANCZOS)
        box = np.clip(np.asarray(box, dtype=np.float64), 0.0, 1.0)
        top, left = (28 - nh) // 2, (28 - nw) // 2
        canvas[top : top + nh, left : left + nw] = box
        cy, cx = center_of_mass(canvas)
        canvas = shift(canvas, (round(13.5 - cy), round(13.5 - cx)), order=0)
    return np.rint(np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def _fonts() -> list:
    """TrueType fonts for the glyph sets: DejaVu's faces where installed (sorted, so the
    set is the same on every machine that has them), else Pillow's built-in font."""
    from glob import glob

    paths = sorted(
        p
        for d in ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/usr/share/fonts/TTF")
        for p in glob(f"{d}/DejaVu*.ttf")
    )
    return paths or [None]


def glyph_images(n: int, chars: str, seed: int = 0) -> np.ndarray:
    """``n`` rendered characters of ``chars`` in MNIST's format (uint8 (n, 28, 28, 1), K = 256):
    each image draws a character, a font face, a size of 40–56 px and a rotation of ±15°,
    renders it white on black at 64×64 and boxes it as MNIST does (:func:`_mnist_box`)."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng([seed, 5])
    fonts = _fonts()
    out = np.zeros((n, 28, 28, 1), dtype=np.uint8)
    for i in range(n):
        ch = chars[rng.integers(len(chars))]
        path = fonts[rng.integers(len(fonts))]
        size = int(rng.integers(40, 57))
        font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
        img = Image.new("L", (96, 96), 0)
        ImageDraw.Draw(img).text((48, 48), ch, fill=255, font=font, anchor="mm")
        img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
        out[i, ..., 0] = _mnist_box(np.asarray(img, dtype=np.float64) / 255.0)
    return out


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


def shape_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` images of 1–3 random primitives (outlined or filled ellipse, rectangle, or a line
    1–3 px wide), each of one brightness in [½, 1] of full scale, on black; drawn at 4× and
    box-downsampled (anti-aliased edges); gray images, RGB replicated."""
    from PIL import Image, ImageDraw

    h, w, c = shape_hwc
    rng = np.random.default_rng([seed, 6])
    out = np.zeros((n, h, w, c), dtype=np.uint8)
    for i in range(n):
        img = Image.new("L", (4 * w, 4 * h), 0)
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            kind = rng.integers(3)
            x0, x1 = np.sort(rng.uniform(0, 4 * w, 2))
            y0, y1 = np.sort(rng.uniform(0, 4 * h, 2))
            fill = int(rng.integers(128, 256))
            lw = int(4 * rng.integers(1, 4))
            box = [x0, y0, max(x1, x0 + 8), max(y1, y0 + 8)]
            if kind == 2:
                ends = [x0, y0, x1, y1] if rng.random() < 0.5 else [x0, y1, x1, y0]
                d.line(ends, fill=fill, width=lw)
            elif rng.random() < 0.5:
                (d.ellipse if kind == 0 else d.rectangle)(box, fill=fill)
            else:
                (d.ellipse if kind == 0 else d.rectangle)(box, outline=fill, width=lw)
        a = np.asarray(img.resize((w, h), Image.Resampling.BOX), dtype=np.float64) * (K - 1) / 255.0
        out[i] = np.clip(np.rint(a), 0, K - 1).astype(np.uint8)[..., None]
    return out


def transformed(images: np.ndarray, name: str, K: int) -> np.ndarray:
    """The in-distribution images under one of ``TRANSFORMS``."""
    if name == "hflip":
        return np.ascontiguousarray(images[:, :, ::-1])
    if name == "vflip":
        return np.ascontiguousarray(images[:, ::-1])
    if name == "invert":
        return (K - 1 - images.astype(np.int64)).astype(np.uint8)
    if name == "blur":
        from scipy.ndimage import gaussian_filter

        v = gaussian_filter(images.astype(np.float64), sigma=(0, 1.0, 1.0, 0), mode="constant")
        return np.clip(np.rint(v), 0, K - 1).astype(np.uint8)
    raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")


def requantise(images: np.ndarray, K_from: int, K_to: int) -> np.ndarray:
    """Map values of K_from levels to K_to levels by bin centres: v ↦ ⌊(v + ½) K_to / K_from⌋,
    which keeps the encoded value 2(v + ½)/K − 1 as close as the new grid allows."""
    if K_from == K_to:
        return images
    v = (images.astype(np.float64) + 0.5) * K_to / K_from
    return np.clip(np.floor(v), 0, K_to - 1).astype(np.uint8)


def adapt_images(
    images: np.ndarray, K: int, shape_hwc: tuple[int, int, int], K_model: int
) -> tuple[np.ndarray, list[str]]:
    """Bring uint8 (N, H, W, C) images with K levels to the model's shape and K.
    Returns the adapted images and one short note per change made (empty if none)."""
    from PIL import Image

    h, w, c = shape_hwc
    n, h0, w0, c0 = images.shape
    notes: list[str] = []
    if c0 != c:
        notes.append("RGB→gray (luma)" if c == 1 else "gray→RGB (replicated)")
    crop = _centre_crop_box(h0, w0, h, w)
    if crop != (0, 0, w0, h0):
        notes.append(f"centre-cropped {h0}×{w0}→{crop[3] - crop[1]}×{crop[2] - crop[0]}")
    resize = (crop[3] - crop[1], crop[2] - crop[0]) != (h, w)
    if resize:
        notes.append(f"resized to {h}×{w} (Lanczos)")
    if c0 != c or crop != (0, 0, w0, h0) or resize:
        out = np.empty((n, h, w, c), dtype=np.uint8)
        for i, im in enumerate(images):
            img = Image.fromarray(np.ascontiguousarray(im[..., 0] if c0 == 1 else im))
            img = img.convert("L" if c == 1 else "RGB")
            img = img.crop(crop)
            if resize:
                img = img.resize((w, h), Image.Resampling.LANCZOS)
            a = np.asarray(img)
            out[i] = a[..., None] if c == 1 else a
        images = np.minimum(out, K - 1)  # Lanczos may overshoot the source's top level
    if K != K_model:
        notes.append(f"requantised K {K}→{K_model}")
        images = requantise(images, K, K_model)
    return images, notes


def _centre_crop_box(h0: int, w0: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Largest centred (left, top, right, bottom) box of aspect ratio h:w inside h0×w0."""
    if h0 * w > w0 * h:  # too tall
        ch, cw = max(1, round(w0 * h / w)), w0
    else:
        ch, cw = h0, max(1, round(h0 * w / h))
    top, left = (h0 - ch) // 2, (w0 - cw) // 2
    return (left, top, left + cw, top + ch)


def load_ood_set(
    spec: str, n: int, shape_hwc: tuple[int, int, int], K: int, seed: int, negatives: np.ndarray
) -> tuple[np.ndarray, str, list[str]]:
    """(images, display name, adaptation notes) for one ``--ood`` argument; ``negatives``
    are the in-distribution images the paired transforms start from."""
    if spec == "const":
        return constant_images(n, shape_hwc, K, seed), spec, []
    if spec == "uniform":
        return uniform_images(n, shape_hwc, K, seed), spec, []
    if spec == "gaussian":
        return gaussian_images(n, shape_hwc, K, seed), spec, ["N((K−1)/2, ((K−1)/6)²), clipped"]
    if spec in TRANSFORMS:
        return transformed(negatives[:n], spec, K), spec, [f"{spec} of the in-distribution negatives"]
    if spec in ("glyphs", "glyph-digits"):
        chars = LETTERS if spec == "glyphs" else DIGITS
        images, notes = adapt_images(glyph_images(n, chars, seed), 256, shape_hwc, K)
        what = "letters A–Z, a–z" if spec == "glyphs" else "digits 0–9"
        return images, spec, [f"{what} rendered in MNIST format (28×28, K=256)", *notes]
    if spec == "shapes":
        return shape_images(n, shape_hwc, K, seed), spec, []
    if spec == "mnist-like":
        images, notes = adapt_images(mnist_like_images(), 256, shape_hwc, K)
        return images[:n], spec, ["scikit-learn digits in MNIST format (28×28, K=256)", *notes]
    from ..data import load

    data = load(spec, "test", limit=n)
    images, notes = adapt_images(data.images, data.K, shape_hwc, K)
    return images, data.name, notes
