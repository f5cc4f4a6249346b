"""What bench/cases.py (onnxruntime / TensorRT backends) and bench/eager.py (PyTorch) share: the stage names,
a bundle's data and inputs, `Skip`, and where a bundle's training run is. Torch-free, so an onnxruntime
process never imports torch through it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.manifest import read_manifest, sha256_file, stage_name
from runtime.pipeline import images_from_model

STAGES = ("encode_source", "flow_forward", "flow_inverse", "encode_target", "decode_target", "translate")
ROLE = {"encode_source": "source_encoder", "flow_forward": "flow_forward", "flow_inverse": "flow_inverse",
        "encode_target": "target_encoder", "decode_target": "target_decoder"}
FLOW_STAGES = ("flow_forward", "flow_inverse", "translate")
BACKENDS = ("pytorch", "pytorch-compile", "ort-fp32", "ort-int8", "trt-fp32", "trt-fp16")
REPO = Path(__file__).resolve().parents[1]


class Skip(Exception):
    """A backend that cannot run on this bundle or machine; the message is the recorded reason."""


def discover(bundles: list[str] | None = None, task: str | None = None, root: str | Path = "engines") -> list[Path]:
    """Bundle folders: the given ones, else every folder under `root` with a manifest.json (engines/<task>/,
    also nested ones such as engines/demo-smoke/<task>/; hidden folders, e.g. an export in progress, are
    left out); `task` keeps one task's."""
    if bundles:
        dirs = [Path(b) for b in bundles]
    else:
        found = (p.parent for p in Path(root).rglob("manifest.json"))
        dirs = sorted(d for d in found if not any(part.startswith(".") for part in d.relative_to(root).parts))
    return [d for d in dirs if task is None or read_manifest(d)["task"] == task]


class BundleData:
    """A bundle's manifest, validation arrays, stage list, inputs per batch and graph files."""

    def __init__(self, bundle_dir: str | Path, runs: str | Path = "runs"):
        self.dir, self.runs = Path(bundle_dir), Path(runs)       # runs: where manifest source.run is found
        self.manifest = read_manifest(self.dir)
        self.kind = self.manifest["source_kind"]
        files = [Path(f) for f in self.manifest["validation"]["files"]]
        self.val = {f.stem: np.load(self.dir / f, allow_pickle=False) for f in files if f.suffix == ".npy"}
        texts = self.dir / "validation" / "texts.json"
        self.texts = json.loads(texts.read_text()) if self.kind == "text" and texts.is_file() else None
        roles = {st["role"] for st in self.manifest["stages"].values()}
        self.stages = [s for s in STAGES if s == "translate" or ROLE[s] in roles]
        self.has_int8 = any(st["precision"] == "int8" for st in self.manifest["stages"].values())
        self._seq: dict[int, int | None] = {}

    @property
    def name(self) -> str:
        """The task, plus the folder name where it differs (two bundles of one task stay apart)."""
        return f"{self.manifest['task']}:{self.dir.name}" if self.dir.name != self.manifest["task"] \
            else self.manifest["task"]

    def source(self, batch: int):
        """`batch` sources as the runtime takes them: condition rows, texts, or uint8 images."""
        if self.kind == "vector":
            return _rows(self.val["cond"], batch)
        if self.kind == "text":
            return [self.texts[i % len(self.texts)] for i in range(batch)]
        return images_from_model(_rows(self.val["source_images"], batch))

    def inputs(self, stage: str, batch: int) -> dict:
        """The arguments of one stage call at `batch`."""
        cond = _rows(self.val["cond"], batch)
        return {"encode_source": lambda: {"source": self.source(batch)},
                "flow_forward": lambda: {"v": _rows(self.val["fixed_v"], batch), "cond": cond},
                "flow_inverse": lambda: {"z": _rows(self.val["target"], batch), "cond": cond},
                "encode_target": lambda: {"images": images_from_model(_rows(self.val["encoder_input"], batch))},
                "decode_target": lambda: {"z": _rows(self.val["target"], batch)},
                "translate": lambda: {"source": self.source(batch)}}[stage]()

    def seq(self, batch: int) -> int | None:
        """Token count of the padded text batch (None for non-text sources)."""
        if self.kind != "text":
            return None
        if batch not in self._seq:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(self.dir / "tokenizer" / "tokenizer.json"))
            tok.enable_truncation(max_length=int(self.manifest["tokenizer"]["max_tokens"]))
            self._seq[batch] = max(len(e.ids) for e in tok.encode_batch(self.source(batch)))
        return self._seq[batch]

    def graphs(self, stage: str, precision: str) -> list[tuple[str, str]]:
        """(role, ONNX file) of each graph one call of `stage` runs, at `precision` where the bundle has it."""
        stages = self.manifest["stages"]
        present = {st["role"] for st in stages.values()}
        roles = [ROLE[stage]] if stage != "translate" else \
            [r for r in ("source_encoder", "flow_forward", "target_decoder") if r in present]
        return [(r, str(self.dir / stages.get(stage_name(r, precision), stages[r])["file"])) for r in roles]


def _rows(x: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(x[np.arange(batch) % len(x)])


def checkpoint_of(data: BundleData) -> Path:
    """The training run's checkpoint the bundle was exported from; Skip when it is gone or changed."""
    source = data.manifest.get("source") or {}
    run = source.get("run")
    if not run:
        raise Skip("the manifest names no training run (stand-in bundle), so there are no PyTorch weights")
    # source.run is the run's name under a runs folder (older bundles: a path)
    path = next((p for p in (data.runs / run, REPO / "runs" / run, Path(run), REPO / run)
                 if (p / "checkpoint.safetensors").is_file()), None)
    if path is None:
        raise Skip(f"the bundle's training run {run} (manifest source.run) is not under {data.runs} on this "
                   f"machine; pass --runs DIR")
    if source.get("checkpoint_sha256") and sha256_file(path / "checkpoint.safetensors") != source["checkpoint_sha256"]:
        raise Skip(f"{path}/checkpoint.safetensors changed since the export (SHA-256 differs from the manifest)")
    return path
