"""What the page computes, behind two calls that either `runtime.Pipeline` (in-process) or a running
`python -m runtime serve` (Triton, via tritonclient) answers:

    sample(task, sources, seeds, temperature)   one output per row: Λ(τ(v_r | Φ(source_r))) or zΘ,
                                                v_r = default_rng(seed_r).standard_normal(D) * temperature
    transfer(task, images, sources, new_sources) one image per row: Λ(τ(τ⁻¹(Θ(image_r) | Φ(source_r)) | Φ(new_r)))

Per-row seeds are Triton's contract (issue 16): a row's result is `Pipeline.translate([source_r],
num_samples=1, seed=seed_r, temperature=t)`, whatever else is in the batch, so both engines give the
same images for the same request and any sample can be reproduced alone from the CLI.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np

from runtime.manifest import PipelineError, read_manifest
from runtime.pipeline import Pipeline
from runtime.serve import find_bundles, residuals  # the per-row draw Triton serves, so both engines agree


def server_message(text: str) -> str:
    """The one line that matters in a Triton error: PyTriton wraps the model's exception in a traceback."""
    found = re.findall(r"(?:RequestError|PipelineError): ([^\n]+)", text)
    return found[-1].strip() if found else next((line for line in text.splitlines() if line.strip()), text)


class LocalEngine:
    """Bundles opened in this process with runtime.Pipeline (loaded on first use, then shared)."""

    name = "in-process runtime.Pipeline"

    def __init__(self, bundles: dict[str, Path], **load_kwargs):
        self.bundles, self.load_kwargs = bundles, load_kwargs
        self._pipes: dict[str, Pipeline] = {}
        self._lock = threading.Lock()

    def pipeline(self, task: str) -> Pipeline:
        with self._lock:                       # two first requests must not load the same bundle twice
            if task not in self._pipes:
                self._pipes[task] = Pipeline.load(self.bundles[task], **self.load_kwargs)
            return self._pipes[task]

    def describe_backend(self, task: str) -> str:
        p = self.pipeline(task)
        return f"{p.backend.name} ({', '.join(p.backend.providers)})"

    def sample(self, task: str, sources, seeds: list[int], temperature: float) -> np.ndarray:
        p = self.pipeline(task)
        cond = p.project(p.encode_source(sources))        # as translate: the bundle's condition bank, if any
        n = p.default_best_of                             # and its selection (runtime/sampling.py)
        v = residuals(p, np.asarray(seeds), np.full(len(seeds), temperature, np.float32), n)
        return p._generate_selected(v, np.repeat(cond, n, axis=0), n, p.default_cycles)

    def transfer(self, task: str, images: np.ndarray, sources, new_sources) -> np.ndarray:
        return self.pipeline(task).transfer(images, sources, new_sources)


class TritonEngine:
    """A running `python -m runtime serve`: model TASK (source, seed, temperature -> image | z) and
    TASK_edit (image, source, new_source -> image), over HTTP with tritonclient."""

    def __init__(self, url: str, manifests: dict[str, dict]):
        try:
            import tritonclient.http as http
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise PipelineError("--triton needs tritonclient: pip install 'tritonclient[http]'") from None
        self.http, self.error = http, InferenceServerException
        self.url = url.removeprefix("http://")
        self.name = f"Triton at {url}"
        self.manifests = manifests
        self._local = threading.local()
        try:
            live = self.client().is_server_live()
        except Exception as e:                  # refused connection, DNS, timeout: all one message
            raise PipelineError(f"cannot reach Triton at {url} ({e}); start it with "
                                f"python -m runtime serve ENGINES_DIR, or drop --triton") from None
        if not live:
            raise PipelineError(f"Triton at {url} answers but is not live")

    def client(self):
        """This thread's client: tritonclient.http runs on gevent, whose connections cannot change threads."""
        if not hasattr(self._local, "client"):
            self._local.client = self.http.InferenceServerClient(self.url, connection_timeout=10.0,
                                                                 network_timeout=300.0)
        return self._local.client

    def describe_backend(self, task: str) -> str:
        return self.name

    def _source(self, task: str, sources, name: str):
        kind = self.manifests[task]["source_kind"]
        if kind == "text":
            arr = np.array([[s.encode("utf-8")] for s in sources], dtype=np.object_)
            t = self.http.InferInput(name, list(arr.shape), "BYTES")
        elif kind == "vector":
            arr = np.asarray(sources, dtype=np.float32)
            t = self.http.InferInput(name, list(arr.shape), "FP32")
        else:
            raise PipelineError(f"{task}: image-source bundles are not served by runtime serve; run the page "
                                f"without --triton")
        t.set_data_from_numpy(arr)
        return t

    def _infer(self, model: str, inputs, output: str) -> np.ndarray:
        try:
            result = self.client().infer(model, inputs, outputs=[self.http.InferRequestedOutput(output)])
        except self.error as e:                # the server's PipelineError message travels in here
            raise PipelineError(f"Triton ({model}): {server_message(e.message() or str(e))}") from None
        return result.as_numpy(output)

    def sample(self, task: str, sources, seeds: list[int], temperature: float) -> np.ndarray:
        n = len(seeds)
        seed = self.http.InferInput("seed", [n, 1], "INT64")
        seed.set_data_from_numpy(np.asarray(seeds, np.int64).reshape(n, 1))
        temp = self.http.InferInput("temperature", [n, 1], "FP32")
        temp.set_data_from_numpy(np.full((n, 1), temperature, np.float32))
        out = "image" if "target_decoder" in self.manifests[task]["stages"] else "z"
        return self._infer(task, [self._source(task, sources, "source"), seed, temp], out)

    def transfer(self, task: str, images: np.ndarray, sources, new_sources) -> np.ndarray:
        image = self.http.InferInput("image", list(images.shape), "UINT8")
        image.set_data_from_numpy(np.ascontiguousarray(images))
        return self._infer(f"{task}_edit", [image, self._source(task, sources, "source"),
                                            self._source(task, new_sources, "new_source")], "image")


def open_engine(engines_dir: Path, triton: str | None, **load_kwargs):
    """(engine, {task: folder}, {task: manifest, or the PipelineError reading it}) for every bundle under
    engines_dir; task = the bundle's folder name."""
    bundles, manifests = find_bundles(engines_dir), {}
    for task, path in bundles.items():
        try:
            manifests[task] = read_manifest(path)
        except PipelineError as e:           # shown in the bundle's tab; the other bundles still work
            manifests[task] = e
    good = {t: m for t, m in manifests.items() if isinstance(m, dict)}
    engine = TritonEngine(triton, good) if triton else LocalEngine(bundles, **load_kwargs)
    return engine, bundles, manifests
