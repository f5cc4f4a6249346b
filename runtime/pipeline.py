"""runtime.Pipeline: a bundle's stages behind numpy-in, numpy-out calls. No torch anywhere.

    p = Pipeline.load("engines/text2image")                        # manifest + every file's SHA-256 checked
    images = p.translate(["a small red circle"], num_samples=4, seed=0)       # uint8 (4, H, W, 3)
    v = p.residual(images[:1], ["a small red circle"])             # τ⁻¹(Θ(x) | Φ(source))
    edited = p.transfer(images[:1], ["a small red circle"], ["a small blue circle"])

Sources: a list of strings (text bundles), an array (N, *cond_shape) of conditions (vector bundles:
attributes, labels, features), or uint8 images (N, H, W, 3) (image-source bundles). Targets of
`residual`/`transfer`: uint8 images (needs a target encoder Θ) or latents zΘ (N, D).

Sampling: v = np.random.default_rng(seed).standard_normal((N*S, D), dtype=np.float32) * temperature,
drawn once per call (row i*S + k is sample k of source i), so results do not depend on how batches
are split; PyTorch reproduces them from the same array (`torch.from_numpy(v)`). temperature=None (the
default) is the bundle's `default_temperature`, the one export recorded in the manifest (`sampling.temperature`,
chosen per task by measurement: docs/results.md); bundles exported before that field existed use 1.
best_of=n draws n such v per sample (row (i*S + k)*n + j of one (N*S*n, D) draw is candidate j of sample k of
source i) and keeps the z = τ(v | c) with the highest log p(z | c) = log N(τ⁻¹(z | c)) + log|det ∂v/∂z| (the
density τ was trained for, at T = 1; train/core/selection.py is the PyTorch side); best_of=None: the bundle's
`default_best_of` (manifest `sampling.best_of`, 1 if absent). cycles=k then replaces the kept z by Θ(Λ(z)) k
times before the last decode (bundles with Θ and Λ; manifest `sampling.cycles`, 0 if absent).
Images are uint8 NHWC at the API; graphs see float NCHW in [-1, 1]: x / 127.5 - 1 going in,
clip(rint((y + 1) * 127.5), 0, 255) coming out.

Condition projection: a bundle with a `condition_bank` (text2image) replaces, before τ samples, every
condition less similar to all training conditions than they are to each other by its nearest training one
(runtime/condition_bank.py; held-out phrasing's samples stop blending values, measured in docs/results.md).
`translate` then chains (the projection sits between Φ and τ); `residual` / `transfer` keep the exact
condition (τ⁻¹ must explain the given target); `Pipeline.load(..., project=False)` turns it off.

Fused graphs: where the bundle has a `translate` / `transfer` graph at the precision asked for (export.fuse),
`translate` (one sample per source) and `transfer` (image targets) run it as one call; otherwise, or with
`Pipeline.load(..., fused=False)`, the stages are chained. Both give the same results (checked at export
and by `check`); translate with num_samples > 1 chains, so Φ runs once per source, not once per sample.

Batches: split at `max_batch` (the TensorRT profile's max, or the `max_batch` given for
onnxruntime); chained stages (Θ -> τ⁻¹, τ -> Λ) pass device values, so on a GPU the intermediates
never leave it. Threads: one Pipeline may be shared; see runtime.backends for the locking. Every
input problem raises `PipelineError` (a ValueError) with one clear message.

Limits (checked before anything is allocated; `Pipeline.load(max_samples=..., max_text_length=...)`):
one call makes at most `max_samples` rows (sources x num_samples; default MAX_SAMPLES) and takes texts
of at most `max_text_length` characters (default MAX_TEXT_LENGTH). docs/failure-behaviour.md lists
everything that is refused.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

from runtime.backends import OrtBackend, TrtBackend
from runtime.condition_bank import ConditionBank
from runtime.inputs import (  # noqa: F401  (images_*: re-exported, callers import them from here)
    as_float_batch,
    check_count,
    check_images,
    check_rows,
    check_temperature,
    check_texts,
    images_from_model,
    images_to_model,
    seeded_rng,
)
from runtime.manifest import (
    FUSED_ROLES,
    PipelineError,
    default_temperature,
    read_manifest,
    select_stages,
    verify_files,
)
from runtime.sampling import check_best_of, check_cycles, default_best_of, default_cycles, most_likely
from runtime.selfcheck import SelfCheck

BACKENDS = ("auto", "onnxruntime", "tensorrt")
# one call's work: 1024 rows of 256x256 RGB are 200 MB of output, a few seconds of GPU; raise per Pipeline
MAX_SAMPLES = 1024
MAX_TEXT_LENGTH = 2000            # characters; the encoder reads at most max_tokens (16-512) tokens anyway
class Pipeline(SelfCheck):
    """Load with `Pipeline.load`; see the module docstring for the calls and conventions."""

    def __init__(self, bundle_dir: Path, manifest: dict, backend, stages: dict[str, str], max_batch: int,
                 max_samples: int = MAX_SAMPLES, max_text_length: int = MAX_TEXT_LENGTH, project: bool = True):
        self.bundle_dir, self.manifest, self.backend, self.stages = bundle_dir, manifest, backend, stages
        self.precisions = {role: manifest["stages"][name]["precision"] for role, name in stages.items()}
        self.max_batch, self.max_samples, self.max_text_length = max_batch, max_samples, max_text_length
        self.source_kind = manifest["source_kind"]
        self.latent_dim = int(manifest["latent_dim"])
        self.cond_shape = tuple(manifest["cond_shape"])
        self.attribute_names = manifest.get("attribute_names")
        self.default_temperature = default_temperature(manifest)
        self.default_best_of, self.default_cycles = default_best_of(manifest), default_cycles(manifest, stages)
        self._warned, self._warn_lock = False, threading.Lock()
        self._tokenizer = self._load_tokenizer() if self.source_kind == "text" else None
        self.condition_bank = ConditionBank.load(bundle_dir, manifest) if project and "condition_bank" in manifest \
            else None

    @classmethod
    def load(cls, bundle_dir: str | Path, backend: str = "auto", device: int = 0, providers=None,
             precision: str = "fp32", max_batch: int = 64, threads: int = 1, fused: bool = True,
             max_samples: int = MAX_SAMPLES, max_text_length: int = MAX_TEXT_LENGTH,
             project: bool = True) -> "Pipeline":
        """Read and validate the manifest, verify every file's SHA-256, open the stages.

        backend: "auto" (TensorRT plans when they exist and match this machine's TensorRT version and
        GPU, else onnxruntime), "onnxruntime" or "tensorrt". precision: "fp32", "int8" (flow stages)
        or "fp16". max_batch: split size for onnxruntime (TensorRT uses its profile's max).
        threads: onnxruntime intra-op threads (1 by default: lowest batch-1 latency on a busy CPU).
        fused: use the bundle's fused translate/transfer graphs where it has them (False: always chain).

        max_samples: most rows one call may make or take (sources x num_samples); max_text_length:
        most characters per text. Both are checked before anything is allocated.
        project: sample from conditions projected onto the bundle's condition bank, where it has one."""
        if backend not in BACKENDS:
            raise PipelineError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
        for name, value in (("max_batch", max_batch), ("threads", threads), ("max_samples", max_samples),
                            ("max_text_length", max_text_length)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PipelineError(f"{name} must be a positive integer, got {value!r}")
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir)
        verify_files(bundle_dir, manifest)
        stages = select_stages(manifest, precision)
        if not fused:
            stages = {r: n for r, n in stages.items() if r not in FUSED_ROLES}
        engine = None
        if backend == "tensorrt" or (backend == "auto" and "tensorrt" in manifest):
            plans = manifest.get("tensorrt", {}).get("plans", {})
            try:                                  # fused graphs are optional: chain where they have no engine
                stages = {r: n for r, n in stages.items() if r not in FUSED_ROLES or n in plans}
                engine = TrtBackend(bundle_dir, manifest, stages, device)
            except PipelineError as e:
                if backend == "tensorrt":
                    raise
                warnings.warn(f"TensorRT engines not used ({e}); running on onnxruntime", stacklevel=2)
        if engine is None:
            engine = OrtBackend(bundle_dir, {r: manifest["stages"][n] for r, n in stages.items()}, providers,
                                device, threads, buffer_rows=max_batch)
        return cls(bundle_dir, manifest, engine, stages, min(max_batch, engine.max_batch or max_batch),
                   max_samples=max_samples, max_text_length=max_text_length, project=project)

    # ---- properties of the bundle -------------------------------------------------------------
    @property
    def has_target_encoder(self) -> bool:
        return "target_encoder" in self.stages

    @property
    def has_decoder(self) -> bool:
        return "target_decoder" in self.stages

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        """(H, W, C) of target images, None when the bundle has no image stages."""
        img = self.manifest.get("image")
        return (*img["size"], img["channels"]) if img else None

    # ---- high-level calls ----------------------------------------------------------------------
    def translate(self, source, num_samples: int = 1, seed: int | None = None, temperature: float | None = None,
                  best_of: int | None = None, cycles: int | None = None):
        """Samples of the target for each source: images uint8 (N*S, H, W, C) when the bundle has a
        decoder, else latents (N*S, D); row i*S + k is sample k of source i. v ~ N(0, temperature² I);
        temperature None: the bundle's `default_temperature` (temperature=1 samples the trained density).
        Each sample is the most likely of `best_of` draws (None: the bundle's `default_best_of`; 1: plain), then
        its latent is sent `cycles` times through the autoencoder, z -> Θ(Λ(z)) (None: the bundle's default)."""
        return self._translate(source, num_samples, seed, temperature, fused=True, best_of=best_of, cycles=cycles)

    def temperature(self, temperature: float | None = None) -> float:
        """`temperature` checked, or the bundle's default when None."""
        return self.default_temperature if temperature is None else check_temperature(temperature)

    def _translate(self, source, num_samples, seed, temperature, fused: bool, best_of: int | None = None,
                   cycles: int | None = None):
        s, t = check_count(num_samples), self.temperature(temperature)
        n = self.default_best_of if best_of is None else check_best_of(best_of)
        k = self.default_cycles if cycles is None else check_cycles(cycles, self.stages)
        check_rows(s, self.max_samples, "num_samples")
        rng = seeded_rng(seed)
        # the text encoder runs one row per call (see encode_source), so a fused graph only for a single text
        if fused and s == 1 and n == 1 and k == 0 and "translate" in self.stages and self.condition_bank is None and (
                self.source_kind != "text" or len(check_texts(source, self.max_samples, self.max_text_length)) == 1):
            return self._translate_fused(source, lambda n: rng.standard_normal((n, self.latent_dim),
                                                                               dtype=np.float32) * np.float32(t))
        cond = self.project(self.encode_source(source))
        check_rows(len(cond) * s, self.max_samples, f"{len(cond)} source(s) x {s} samples")
        cond = np.repeat(cond, s * n, axis=0)
        v = rng.standard_normal((len(cond), self.latent_dim), dtype=np.float32) * np.float32(t)
        return self._generate_selected(v, cond, n, k)

    def _generate_selected(self, v: np.ndarray, cond: np.ndarray, n: int, cycles: int) -> np.ndarray:
        """Of each n consecutive candidates the z = τ(v | c) with the highest log p(z | c), sent `cycles` times
        through the autoencoder (float images between Λ and Θ, as in PyTorch), decoded. Serving and the page
        call it with their per-row draws (n per row), so they sample as translate does."""
        if n == 1 and cycles == 0:
            return self._generate(v, cond)
        z = self._chunked("flow_forward", {"v": v, "cond": cond})["z"]
        if n > 1:
            out = self._chunked("flow_inverse", {"z": z, "cond": cond})
            z = most_likely(z, out["v"], out["logdet"], n)
        for _ in range(cycles):
            z = self._chunked("target_encoder", {"image": self._chunked("target_decoder", {"z": z})["image"]})["z"]
        return self.decode_target(z) if self.has_decoder else z

    def _translate_fused(self, source, draw) -> np.ndarray:
        """Φ -> τ -> Λ as one graph call per chunk; `draw(n)` gives v for n sources (as the chained path)."""
        if self.source_kind == "text":
            texts = check_texts(source, self.max_samples, self.max_text_length)
            v, out = draw(len(texts)), []
            for sl in self._chunks(len(texts)):
                ids, mask = self._tokenize(texts[sl])
                out.append(self.backend.run("translate", {"input_ids": ids, "attention_mask": mask, "v": v[sl]}))
            return self._output({k: np.concatenate([o[k] for o in out]) for k in out[0]})
        if self.source_kind == "image":
            img = self.manifest["source_image"]
            feeds = {"source_image": images_to_model(check_images(source, (*img["size"], img["channels"]), "source",
                                                                   self.max_samples))}
        else:
            feeds = {"cond": as_float_batch(source, self.cond_shape, "source", self.max_samples)}
        n = len(next(iter(feeds.values())))
        return self._output(self._chunked("translate", {**feeds, "v": draw(n)}))

    def residual(self, target, source) -> np.ndarray:
        """v = τ⁻¹(Θ(target) | Φ(source)); target is uint8 images or latents zΘ (N, D)."""
        cond = self.encode_source(source)
        images, z = self._target(target)
        n = len(images if images is not None else z)
        if n != len(cond):
            raise PipelineError(f"target has {n} rows but source has {len(cond)}; pass one source per target")
        out = []
        for sl in self._chunks(n):
            with self.backend.exclusive():
                zs = z[sl] if z is not None else \
                    self.backend.run("target_encoder", {"image": images_to_model(images[sl])}, host=False)["z"]
                out.append(self.backend.run("flow_inverse", {"z": zs, "cond": cond[sl]})["v"])
        return np.concatenate(out)

    def transfer(self, target, source, new_source):
        """Λ(τ(τ⁻¹(Θ(target) | Φ(source)) | Φ(new_source))): keep what the source does not explain,
        change what it does. Returns images (or latents without a decoder)."""
        if "transfer" in self.stages and isinstance(target, np.ndarray) and target.dtype == np.uint8 \
                and target.ndim == 4:
            images, _ = self._target(target)
            cond, new = self.encode_source(source), self.encode_source(new_source)
            for what, c in (("source", cond), ("new_source", new)):
                if len(c) != len(images):
                    raise PipelineError(f"{what} has {len(c)} rows but target has {len(images)}")
            return self._output(self._chunked("transfer", {"target_image": images_to_model(images), "cond": cond,
                                                           "new_cond": new}))
        v = self.residual(target, source)
        cond = self.encode_source(new_source)
        if len(cond) != len(v):
            raise PipelineError(f"new_source has {len(cond)} rows but target has {len(v)}")
        return self._generate(v, cond)

    # ---- stage-level access ----------------------------------------------------------------------
    def encode_source(self, source) -> np.ndarray:
        """zΦ for a source: Φ(texts) or Φ(images), or the validated condition array itself."""
        if self.source_kind == "vector":
            return as_float_batch(source, self.cond_shape, "source", self.max_samples)
        if self.source_kind == "image":
            img = self.manifest["source_image"]
            images = check_images(source, (*img["size"], img["channels"]), "source", self.max_samples)
            return self._chunked("source_encoder", {"image": images_to_model(images)})["embedding"]
        # one text per call: batched attention rounds differently with the batch's shape (measured 2e-8 on
        # MiniLM), which would make a row's result depend on the other rows of its batch
        texts = check_texts(source, self.max_samples, self.max_text_length)
        out = []
        for text in texts:
            ids, mask = self._tokenize([text])
            out.append(self.backend.run("source_encoder", {"input_ids": ids, "attention_mask": mask})["embedding"])
        return np.concatenate(out)

    def project(self, cond: np.ndarray) -> np.ndarray:
        """zΦ as τ samples from it: off-support rows replaced by their nearest training condition (the bundle's
        condition bank; unchanged without one or with `Pipeline.load(..., project=False)`)."""
        return cond if self.condition_bank is None else self.condition_bank.project(cond)[0]

    def flow_forward(self, v, cond) -> np.ndarray:
        """τ: zΘ = τ(v | zΦ); cond is the raw zΦ (N, *cond_shape)."""
        v, cond = self._pair(v, "v", cond)
        return self._chunked("flow_forward", {"v": v, "cond": cond})["z"]

    def flow_inverse(self, z, cond) -> tuple[np.ndarray, np.ndarray]:
        """τ⁻¹: (v, log|det ∂v/∂zΘ|) for zΘ (N, D) given zΦ."""
        z, cond = self._pair(z, "z", cond)
        out = self._chunked("flow_inverse", {"z": z, "cond": cond})
        return out["v"], out["logdet"]

    def encode_target(self, images) -> np.ndarray:
        """Θ: uint8 images (N, H, W, C) -> zΘ (N, D), the encoder's mean."""
        self._need("target_encoder", "encode_target")
        images = check_images(images, self.image_shape, "images", self.max_samples)
        return self._chunked("target_encoder", {"image": images_to_model(images)})["z"]

    def decode_target(self, z) -> np.ndarray:
        """Λ: zΘ (N, D) -> uint8 images (N, H, W, C)."""
        self._need("target_decoder", "decode_target")
        z = as_float_batch(z, (self.latent_dim,), "z", self.max_samples)
        return images_from_model(self._chunked("target_decoder", {"z": z})["image"])

    # ---- internals -------------------------------------------------------------------------------
    @staticmethod
    def _output(out: dict[str, np.ndarray]) -> np.ndarray:
        """A fused graph's result as the chained calls return it: uint8 images, or latents."""
        return images_from_model(out["image"]) if "image" in out else out["z"]

    def _generate(self, v: np.ndarray, cond: np.ndarray) -> np.ndarray:
        out = []
        for sl in self._chunks(len(v)):
            with self.backend.exclusive():
                z = self.backend.run("flow_forward", {"v": v[sl], "cond": cond[sl]}, host=not self.has_decoder)["z"]
                out.append(images_from_model(self.backend.run("target_decoder", {"z": z})["image"])
                           if self.has_decoder else z)
        return np.concatenate(out)

    def _chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.max_batch, n)) for i in range(0, n, self.max_batch)]

    def _chunked(self, role: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [self.backend.run(role, {k: x[sl] for k, x in feeds.items()})
                 for sl in self._chunks(len(next(iter(feeds.values()))))]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _pair(self, x, name: str, cond) -> tuple[np.ndarray, np.ndarray]:
        x = as_float_batch(x, (self.latent_dim,), name, self.max_samples)
        cond = as_float_batch(cond, self.cond_shape, "cond", self.max_samples)
        if len(x) != len(cond):
            raise PipelineError(f"{name} has {len(x)} rows but cond has {len(cond)}")
        return x, cond

    def _need(self, role: str, call: str) -> None:
        if role not in self.stages:
            what = {"target_encoder": "target encoder (Θ)", "target_decoder": "decoder (Λ)"}[role]
            raise PipelineError(f"{call}: this bundle ({self.manifest['task']}) has no {what}")

    def _target(self, target) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Images (uint8, or anything with 3+ axes: told what is wrong with it as an image) or latents."""
        if isinstance(target, np.ndarray) and (target.dtype == np.uint8 or target.ndim >= 3):
            if not self.has_target_encoder:
                raise PipelineError(f"this bundle ({self.manifest['task']}) has no target encoder (Θ), so it "
                                    f"cannot edit images; pass latents zΘ of shape (N, {self.latent_dim}) instead")
            return check_images(target, self.image_shape, "target images", self.max_samples), None
        return None, as_float_batch(target, (self.latent_dim,), "target latents", self.max_samples)

    def _load_tokenizer(self):
        from tokenizers import Tokenizer
        spec = self.manifest["tokenizer"]
        try:
            tok = Tokenizer.from_file(str(self.bundle_dir / "tokenizer" / "tokenizer.json"))
        except Exception as e:          # the tokenizers library raises a bare Exception for a bad file
            raise PipelineError(f"tokenizer/tokenizer.json is not a tokenizers file ({str(e)[:200]}); "
                                f"re-export the bundle") from None
        if spec.get("pad_id", 0) >= tok.get_vocab_size():
            raise PipelineError(f"manifest.json: 'tokenizer.pad_id' {spec['pad_id']} is outside the tokenizer's "
                                f"{tok.get_vocab_size()} ids; re-export the bundle")
        tok.enable_truncation(max_length=int(spec["max_tokens"]))
        tok.enable_padding(pad_id=int(spec.get("pad_id", 0)), pad_token=spec.get("pad_token", "[PAD]"))
        return tok

    def _tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask, padded to the longest text, truncated at max_tokens (warns once)."""
        enc = self._tokenizer.encode_batch(texts)
        cut = [i for i, e in enumerate(enc) if e.overflowing]
        if cut:
            with self._warn_lock:
                first, self._warned = not self._warned, True
            if first:
                warnings.warn(f"text longer than the encoder's {self.manifest['tokenizer']['max_tokens']} tokens "
                              f"was truncated ({len(cut)} text(s) in this batch)", stacklevel=4)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        return ids, np.array([e.attention_mask for e in enc], dtype=np.int64)
