"""Reading user images for a bundle: any file Pillow reads, made the size the bundle's experts expect.

The same convention as training's folder data (train/data/folders.py `load_image`): EXIF orientation
applied, converted to RGB (or L for one-channel bundles; transparent pixels onto white), centre-cropped
to a square of the shorter side, then an antialiased bicubic resize. The page shows the result beside
its outputs, so the conversion is never hidden. The runtime cannot import train/ (torch), so it lives here
for the CLI and the page. Every problem is a `PipelineError` naming the image.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from runtime.manifest import PipelineError

MAX_PIXELS = 50_000_000       # refuse decompression bombs before decoding (a 7000x7000 photo still fits)


def fit_image(data: bytes | str | Path, size: tuple[int, int], channels: int = 3, name: str = "image") -> np.ndarray:
    """uint8 (H, W, channels) of the file at `data` (a path, or the file's bytes), cropped and resized to
    `size` (H, W)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    h, w = size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise PipelineError(f"{name} is {im.width}x{im.height} pixels, more than the "
                                        f"{MAX_PIXELS // 1_000_000} megapixels accepted; shrink it first")
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:   # transparent: onto white
                    im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
                im = im.convert("L" if channels == 1 else "RGB")
                side = min(im.width, im.height)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side),
                               reducing_gap=3.0)
                arr = np.asarray(im, dtype=np.uint8)
    except PipelineError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PipelineError(f"{name} is not an image Pillow can read ({type(e).__name__}); "
                            f"use a PNG, JPEG, WebP, GIF or BMP file") from None
    except (OSError, ValueError, SyntaxError) as e:           # truncated or corrupt files raise these
        raise PipelineError(f"{name} could not be decoded: {e}") from None
    return arr[..., None] if arr.ndim == 2 else arr
