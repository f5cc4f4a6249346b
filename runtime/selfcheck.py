"""`Pipeline.check`: the bundle's self-test on its own validation data, on any machine and backend.

Each stage against the PyTorch outputs stored at export, tokenizer ids, the flow round trip, NLL drift, batch
dependence, fused graphs against the chained stages, and median latency at batch 1. A mixin of Pipeline (it
calls the pipeline's own stage methods), kept apart so pipeline.py stays about the calls themselves.
"""
from __future__ import annotations

import time

import numpy as np

from runtime.inputs import images_from_model
from runtime.manifest import FUSED_ROLES, batch_dependence, fused_feeds, l2_rel, max_rel, nll_per_dim
from runtime.validation import validation_arrays, validation_texts

# what `check` accepts, by stage precision: max |a-b| / max |b| against the PyTorch outputs (None:
# reported, not judged), flow round trip ‖τ(τ⁻¹(z)) - z‖ / ‖z‖, |NLL drift| in nats/dim (absolute), and
# batch dependence (max |Δv| of a row alone vs in batches of 8 and 64; fp16 engines may pick kernels by
# batch size, so there it is reported, not judged)
CHECK_TOLERANCES = {"fp32": (1e-4, 1e-5, 1e-3, 1e-5), "fp16": (5e-2, 1e-3, 5e-2, None),
                    "int8": (None, 1e-4, 3e-3, 1e-5)}
# fused graph vs the chained stages (max |a-b| / max |b|): int8 may flip a rounding step at a stage boundary
FUSED_TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2, "int8": 1e-2}


class SelfCheck:
    def check(self, repeats: int = 20) -> dict:
        """Self-test on the bundle's validation data (any machine, any backend): each stage against the
        PyTorch outputs stored at export, tokenizer ids, flow round trip, NLL, and median latency per
        stage and end to end at batch 1. `ok` is False when a tolerance (CHECK_TOLERANCES) is missed."""
        files = list(self.manifest["validation"]["files"])
        val = validation_arrays(self)
        cond, z = val["cond"], val["target"]
        v, logdet = self.flow_inverse(z, cond)
        parity = {"flow_inverse": max(max_rel(v, val["v"]), max_rel(logdet, val["logdet"])),
                  "flow_forward": max_rel(self.flow_forward(val["fixed_v"], cond), val["forward_z"])}
        one = {"flow_inverse": {"z": z[:1], "cond": cond[:1]}, "flow_forward": {"v": v[:1], "cond": cond[:1]}}
        report = {"bundle": str(self.bundle_dir), "backend": self.backend.name, "providers": self.backend.providers,
                  "precisions": self.precisions, "files_verified": len(files), "validation_pairs": len(z)}
        if self.source_kind == "text":
            texts = validation_texts(self, len(val["input_ids"]))
            ids, _ = self._tokenize(texts)
            report["tokenizer_match"] = bool(ids.shape == val["input_ids"].shape and (ids == val["input_ids"]).all())
            one["source_encoder"] = {"input_ids": val["input_ids"], "attention_mask": val["attention_mask"]}
        elif self.source_kind == "image":
            one["source_encoder"] = {"image": val["source_images"]}
        if "source_encoder" in one:
            parity["source_encoder"] = max_rel(self._chunked("source_encoder", one["source_encoder"])["embedding"],
                                                val["embedding"])
            one["source_encoder"] = {k: x[:1] for k, x in one["source_encoder"].items()}
        if self.has_decoder:
            one["target_decoder"] = {"z": z[:len(val["decoded"])]}
            parity["target_decoder"] = max_rel(self._chunked("target_decoder", one["target_decoder"])["image"],
                                                val["decoded"])
        if self.has_target_encoder:
            one["target_encoder"] = {"image": val["encoder_input"]}
            parity["target_encoder"] = max_rel(self._chunked("target_encoder", one["target_encoder"])["z"],
                                                val["encoded"])
        nll, nll_ref = float(nll_per_dim(v, logdet).mean()), float(nll_per_dim(val["v"], val["logdet"]).mean())
        sizes = tuple(n for n in (8, 64) if n <= self.max_batch) or (self.max_batch,)   # a TensorRT profile's limit
        dependence = batch_dependence(lambda f: self.backend.run("flow_inverse", f)["v"], {"z": z, "cond": cond},
                                      sizes=sizes)
        report.update(parity_max_rel=parity, roundtrip_rel=l2_rel(self.flow_forward(v, cond), z),
                      nll_nats_per_dim=nll, nll_pytorch=nll_ref, nll_drift_nats_per_dim=nll - nll_ref,
                      v_batch_dependence_max_abs=dependence,
                      fused_parity_max_rel=self._fused_parity({"cond": cond, **val}))
        latency = {role: _median_ms(lambda r=role, f=feeds: self.backend.run(r, {k: x[:1] for k, x in f.items()}),
                                    repeats) for role, feeds in one.items()}
        source = {"text": lambda: texts[:1], "vector": lambda: cond[:1],
                  "image": lambda: images_from_model(val["source_images"][:1])}[self.source_kind]()
        latency["translate_end_to_end"] = _median_ms(lambda: self.translate(source, seed=0), repeats)
        if "translate" in self.stages:            # the same call chained, for comparison
            latency["translate_chained_end_to_end"] = _median_ms(
                lambda: self._translate(source, 1, 0, 1.0, fused=False), repeats)
        report["latency_batch1_ms"] = latency
        fails = [f"{role} parity {err:.2e}" for role, err in parity.items()
                 if CHECK_TOLERANCES[self.precisions[role]][0] is not None
                 and err > CHECK_TOLERANCES[self.precisions[role]][0]]
        flow_tol = CHECK_TOLERANCES[self.precisions["flow_inverse"]]
        fails += [f"round trip {report['roundtrip_rel']:.2e}"] if report["roundtrip_rel"] > flow_tol[1] else []
        fails += [f"NLL drift {nll - nll_ref:+.4f} nats/dim"] if abs(nll - nll_ref) > flow_tol[2] else []
        fails += [f"batch dependence {dependence:.1e}"] if flow_tol[3] is not None and dependence > flow_tol[3] else []
        fails += [f"fused {role} vs chained {err:.2e}" for role, err in report["fused_parity_max_rel"].items()
                  if err > FUSED_TOLERANCES[self.precisions[role]]]
        fails += ["tokenizer ids differ from export"] if report.get("tokenizer_match") is False else []
        report.update(ok=not fails, failures=fails)
        return report

    def _fused_parity(self, val: dict[str, np.ndarray]) -> dict[str, float]:
        """max rel error of each fused graph in use against the same chain of this pipeline's stages."""
        report = {}
        for role in FUSED_ROLES:
            feeds = fused_feeds(role, self.source_kind, val) if role in self.stages else None
            if feeds is None:
                continue
            got = self._chunked(role, feeds)
            if role == "transfer":
                zt = self._chunked("target_encoder", {"image": feeds["target_image"]})["z"]
                v, cond = self._chunked("flow_inverse", {"z": zt, "cond": feeds["cond"]})["v"], feeds["new_cond"]
            else:
                v, src = feeds["v"], {("image" if k == "source_image" else k): x for k, x in feeds.items() if k != "v"}
                cond = src["cond"] if "cond" in src else self._chunked("source_encoder", src)["embedding"]
            ref = self._chunked("flow_forward", {"v": v, "cond": cond})
            ref = self._chunked("target_decoder", ref) if self.has_decoder else ref
            report[role] = max_rel(next(iter(got.values())), next(iter(ref.values())))
        return report


def _median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)
