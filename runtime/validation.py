"""The validation data inside a bundle (validation/*.npy, texts.json), read for `Pipeline.check`.

These files come from the bundle, so they are checked like input: plain numeric arrays (never
unpickled) of the shapes the manifest implies, texts a JSON list of strings; anything else is a
PipelineError naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.manifest import PipelineError


def validation_arrays(p) -> dict[str, np.ndarray]:
    """validation/*.npy, each a plain numeric array (never unpickled) of the shape the manifest implies."""
    d, n = p.latent_dim, p.manifest["validation"]["count"]
    rows = {"cond": p.cond_shape, "target": (d,), "v": (d,), "fixed_v": (d,), "forward_z": (d,), "logdet": ()}
    if p.source_kind == "text":
        rows.update(input_ids=None, attention_mask=None, embedding=p.cond_shape)
    elif p.source_kind == "image":
        img = p.manifest["source_image"]
        rows.update(source_images=(img["channels"], *img["size"]), embedding=p.cond_shape)
    if p.has_decoder:
        rows["decoded"] = (p.image_shape[2], *p.image_shape[:2])
    if p.has_target_encoder:
        rows.update(encoder_input=(p.image_shape[2], *p.image_shape[:2]), encoded=(d,))
    listed = {Path(f).stem: f for f in p.manifest["validation"]["files"] if f.endswith(".npy")}
    val = {}
    for key, tail in rows.items():
        if key not in listed:
            raise PipelineError(f"manifest.json: 'validation.files' lacks validation/{key}.npy; re-export the bundle")
        try:
            arr = np.load(p.bundle_dir / listed[key], allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:        # pickled (object) arrays land here too
            raise PipelineError(f"{listed[key]} is not a plain numeric .npy file ({e}); re-export the bundle") \
                from None
        count = n if key in ("cond", "target", "v", "logdet") else None
        if arr.dtype.kind not in "fiu" or arr.ndim == 0 or len(arr) == 0 or count and len(arr) != count or \
                tail is not None and arr.shape[1:] != tail:
            want = f"({count or 'N'}{''.join(f', {t}' for t in tail) if tail is not None else ', ...'})"
            raise PipelineError(f"{listed[key]} holds {arr.dtype} {arr.shape}, but the manifest implies a numeric "
                                f"{want}; re-export the bundle")
        val[key] = arr
    return val

def validation_texts(p, count: int) -> list[str]:
    path = "validation/texts.json"
    if path not in p.manifest["validation"]["files"]:
        raise PipelineError(f"manifest.json: 'validation.files' lacks {path}; re-export the bundle")
    try:
        texts = json.loads((p.bundle_dir / path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as e:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise PipelineError(f"{path} is not readable JSON ({e}); re-export the bundle") from None
    if not isinstance(texts, list) or len(texts) != count or not all(isinstance(t, str) for t in texts):
        raise PipelineError(f"{path} must be a list of {count} strings (one per validation/input_ids.npy row); "
                            f"re-export the bundle")
    return texts
