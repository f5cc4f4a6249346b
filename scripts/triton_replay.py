"""Replay a bundle's Triton sampling ensemble on onnxruntime and compare it with runtime.Pipeline.translate.

    python scripts/triton_replay.py --bundle engines/text2image [--captions 12] [--samples 2] [--seed 11]

Writes the repository (python -m export.triton's write_repository) into a temporary folder, chains its models in
the ensemble's step order (Triton's scheduler, without Triton) with client.json's recipe (one draw per call; a
request per text, then a request per row), and prints the largest pixel difference to Pipeline.translate for the
same seed, on captions in
training and in held-out phrasing (train/data/captions.py), plus how far each condition is from flipping the
projection. No GPU Triton here: this is the check a server would pass, on CPU onnxruntime. Imports no torch.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from export.triton import parse_configs, replay_ensemble, write_repository
from runtime import Pipeline
from runtime.condition_bank import ConditionBank
from runtime.inputs import images_from_model
from train.data import ATTRIBUTES, GROUPS
from train.data.captions import make_caption


def captions(n: int, split: str, rng: np.random.Generator) -> list[str]:
    """n captions of random sprites' attributes (one shape, one colour, the rest fair coins) in `split`'s phrasing."""
    out = []
    for _ in range(n):
        values = {name: int(rng.integers(2)) for name in ATTRIBUTES}
        for names in GROUPS.values():
            pick = rng.integers(len(names))
            values.update({name: int(i == pick) for i, name in enumerate(names)})
        out.append(make_caption(values, rng, split)[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, type=Path, help="a text bundle (engines/text2image)")
    ap.add_argument("--captions", type=int, default=12, help="captions per phrasing (training, held-out)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="triton-replay-") as tmp:
        compare(args, Path(tmp))


def compare(args, out: Path) -> None:
    names = write_repository(args.bundle, out)
    configs = parse_configs(out, names)
    task = json.loads((args.bundle / "manifest.json").read_text())["task"]
    info = json.loads((out / task / "client.json").read_text())
    print(f"{len(names)} models; best_of {info['best_of']}, cycles {info['cycles']}, temperature "
          f"{info['default_temperature']}; condition bank: {info.get('condition_bank', 'none')[:40]}")
    rng = np.random.default_rng(args.seed)
    texts = captions(args.captions, "train", rng) + captions(args.captions, "heldout", rng)
    tok = Tokenizer.from_file(str(out / task / "tokenizer.json"))
    tok.enable_truncation(max_length=info["tokenizer"]["max_tokens"])
    s, n, d = args.samples, info["best_of"], info["latent_dim"]
    v = np.random.default_rng(args.seed).standard_normal((len(texts) * s * n, d), dtype=np.float32) \
        * np.float32(info["default_temperature"])
    v = v.reshape((len(texts) * s, n, d) if n > 1 else (len(texts) * s, d))
    p = Pipeline.load(args.bundle)
    ref = p.translate(texts, num_samples=s, seed=args.seed)
    sessions = {}
    for rows in sorted({s, 1}, reverse=True):      # a request per text (one source-encoder batch), one per row
        served = []
        for i, text in enumerate(texts):
            e = tok.encode(text)
            for r in range(i * s, (i + 1) * s, rows):
                feeds = {"input_ids": np.array([e.ids] * rows, np.int64), "v": v[r:r + rows],
                         "attention_mask": np.array([e.attention_mask] * rows, np.int64)}
                served.append(images_from_model(replay_ensemble(out, configs[task], feeds, sessions)["image"]))
        diff = np.abs(np.concatenate(served).astype(int) - ref.astype(int)).reshape(len(ref), -1).max(1)
        print(f"{len(ref)} rows ({len(texts)} captions x {s}, seed {args.seed}), {rows} row(s) per request: "
              f"max |diff| {diff.max()} (0-255), rows differing {int((diff > 0).sum())}")
    exact = Pipeline.load(args.bundle, project=False)
    plain = exact.translate(texts, num_samples=s, seed=args.seed, best_of=1, cycles=0)
    print(f"for scale, the former ensemble (exact condition, one candidate, no cycle) vs translate: mean |diff| "
          f"{np.abs(plain.astype(int) - ref.astype(int)).mean():.1f}, rows differing "
          f"{int((plain != ref).reshape(len(ref), -1).any(1).sum())}")
    if "condition_bank" in p.manifest:
        cond, bank = exact.encode_source(texts), ConditionBank.load(args.bundle, p.manifest)
        sim = (cond / np.linalg.norm(cond, axis=1, keepdims=True)) @ bank.unit.T
        top = np.sort(sim, axis=1)[:, -2:]
        moved = top[:, 1] < bank.min_similarity
        graph = sessions[f"{task}_condition_projection"].run(None, {"cond": cond})[0]
        print(f"projection graph == runtime ConditionBank.project on all {len(cond)} conditions: "
              f"{np.array_equal(graph, bank.project(cond)[0])}")
        print(f"projection: {len(bank.rows)} rows, min_similarity {bank.min_similarity:.6f}; moved: training "
              f"phrasing {int(moved[:args.captions].sum())}/{args.captions}, held-out "
              f"{int(moved[args.captions:].sum())}/{args.captions}; smallest |best - min_similarity| "
              f"{np.abs(top[:, 1] - bank.min_similarity).min():.1e}, smallest best - second best "
              f"{(top[:, 1] - top[:, 0]).min():.1e}")


if __name__ == "__main__":
    main()
