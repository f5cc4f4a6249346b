"""PNG grids to look at: rows of images with optional text above each row and labels on top."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font():
    return ImageFont.load_default()


def save_grid(rows: list[list[np.ndarray]], path: str | Path, row_titles: list[str] | None = None,
              col_titles: list[str] | None = None, header: str | None = None, pad: int = 2,
              scale: int = 1) -> Path:
    """Write rows of uint8 (H, W, 3) images as one PNG. `row_titles` go as a text line above each row
    (e.g. a caption above its samples), `col_titles` once above the first row, `header` on top."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = rows[0][0].shape[:2]
    h, w = h * scale, w * scale
    ncol = max(len(r) for r in rows)
    line = 12
    width = max(ncol * (w + pad) + pad, 200)
    top = (line + 2 if header else 0) + (line + 2 if col_titles else 0)
    row_h = h + pad + (line + 2 if row_titles else 0)
    canvas = Image.new("RGB", (width, top + len(rows) * row_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 2
    if header:
        draw.text((pad, y), header, fill=(0, 0, 0), font=_font())
        y += line + 2
    if col_titles:
        for j, t in enumerate(col_titles):
            draw.text((pad + j * (w + pad), y), t[: max(1, w // 6)], fill=(60, 60, 60), font=_font())
        y += line + 2
    for i, row in enumerate(rows):
        if row_titles:
            draw.text((pad, y), row_titles[i], fill=(0, 0, 120), font=_font())
            y += line + 2
        for j, img in enumerate(row):
            tile = Image.fromarray(img)
            if scale != 1:
                tile = tile.resize((w, h), Image.NEAREST)
            canvas.paste(tile, (pad + j * (w + pad), y))
        y += h + pad
    canvas.save(path)
    return path
