"""What the runtime accepts as input, checked with one clear PipelineError each, and the image conversions
between the API (uint8 NHWC) and the graphs (float NCHW in [-1, 1])."""
from __future__ import annotations

import numbers

import numpy as np

from runtime.manifest import PipelineError


def images_to_model(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))


def images_from_model(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint((x.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def as_float_batch(x, tail: tuple[int, ...], what: str, max_rows: int | None = None) -> np.ndarray:
    """A numeric (N, *tail) array, 1 <= N <= max_rows, all finite, as float32; anything else is a PipelineError."""
    shape = f"(N, {', '.join(map(str, tail))})"
    if x is None or isinstance(x, (str, bytes, dict)):
        got = "None" if x is None else f"a {type(x).__name__}"
        raise PipelineError(f"{what} must be an array of numbers of shape {shape}, got {got}")
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise PipelineError(f"{what} is not a rectangular array of numbers: {e}") from None
    if arr.ndim == 0:
        raise PipelineError(f"{what} must be an array of shape {shape}, got a single {arr.dtype} value")
    if arr.dtype.kind not in "fiub":
        raise PipelineError(f"{what} must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] == 0:
        raise PipelineError(f"{what} is empty (a batch of zero); pass at least one row")
    if arr.shape[1:] != tuple(tail):
        raise PipelineError(f"{what} must have shape {shape}, got {arr.shape}")
    check_rows(len(arr), max_rows, what)
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr.reshape(len(arr), -1)).all(1)
    if bad.any():
        raise PipelineError(f"{what} contains NaN/Inf in {int(bad.sum())} row(s), first at row {int(np.argmax(bad))}")
    return arr


def check_rows(n: int, max_rows: int | None, what: str) -> None:
    if max_rows is not None and n > max_rows:
        raise PipelineError(f"{what} asks for {n} rows in one call, over this Pipeline's limit of {max_rows}; "
                            f"split the request (or raise max_samples when loading)")


def check_texts(source, max_rows: int | None = None, max_length: int | None = None) -> list[str]:
    if isinstance(source, str):
        raise PipelineError("source must be a list of strings, got a single string; wrap it in a list")
    if not isinstance(source, (list, tuple)):
        raise PipelineError(f"this bundle translates text: pass a list of strings, got {type(source).__name__}")
    if not source:
        raise PipelineError("source is an empty list; pass at least one string")
    check_rows(len(source), max_rows, "source")
    for i, text in enumerate(source):
        if not isinstance(text, str):
            raise PipelineError(f"source[{i}] is a {type(text).__name__}, not a string")
        if max_length is not None and len(text) > max_length:
            raise PipelineError(f"source[{i}] has {len(text)} characters, over the limit of {max_length}; "
                                f"shorten it (the encoder reads only its first tokens anyway)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise PipelineError(f"source[{i}] is not valid text: {text[e.start]!r} at position {e.start} is a lone "
                                f"surrogate (an undecodable byte?); pass UTF-8 text") from None
        if not text.strip():
            raise PipelineError(f"source[{i}] is empty or whitespace; every text needs some words")
    return list(source)


def check_images(x, hwc: tuple[int, int, int], what: str, max_rows: int | None = None) -> np.ndarray:
    h, w, c = hwc
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        got = f"dtype {x.dtype}" if isinstance(x, np.ndarray) else f"a {type(x).__name__}"
        hint = "; convert with np.clip(np.rint(x), 0, 255).astype(np.uint8) from 0..255 values" \
            if isinstance(x, np.ndarray) and x.dtype.kind in "fiu" else ""
        raise PipelineError(f"{what} must be a uint8 array (N, {h}, {w}, {c}), got {got}{hint}")
    if x.ndim == 3 and x.shape == (h, w, c):
        raise PipelineError(f"{what} must have shape (N, {h}, {w}, {c}), got one image {x.shape}; add a batch "
                            f"axis (x[None])")
    if x.ndim == 3 and x.shape[1:] == (h, w):
        raise PipelineError(f"{what} have no channel axis (shape {x.shape}: grayscale?); this bundle needs "
                            f"{c}-channel images (N, {h}, {w}, {c})")
    if x.ndim != 4 or x.shape[0] == 0:
        raise PipelineError(f"{what} must have shape (N, {h}, {w}, {c}) with N >= 1, got {x.shape}")
    check_rows(len(x), max_rows, what)
    if x.shape[3] != c:
        raise PipelineError(f"{what} must have {c} channels, got {x.shape[3]} (shape {x.shape})")
    if x.shape[1:3] != (h, w):
        raise PipelineError(f"{what} must be {h}x{w} pixels, got {x.shape[1]}x{x.shape[2]}; resize them first")
    return x


def check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise PipelineError(f"num_samples must be an integer >= 1, got {n!r}")
    return int(n)


def check_temperature(t) -> float:
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not np.isfinite(t) or t <= 0:
        raise PipelineError(f"temperature must be a finite number > 0, got {t!r}")
    return float(t)


def seeded_rng(seed) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise PipelineError(f"seed must be None or an integer >= 0, got {seed!r}")
    return np.random.default_rng(seed)
