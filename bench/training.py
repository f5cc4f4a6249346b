"""Training throughput of our cINN against the peer a user would otherwise pick: FrEIA.

FrEIA model: `SequenceINN` of [ActNorm, GLOWCouplingBlock, PermuteRandom] x blocks, with the same
dims, subnetwork widths/depths (Tab. S3a; GLOW's subnet emits s and t together, like our fused one),
clamp 2, and the same condition embedder H run once per batch and fed as FrEIA's condition.
Both train with Adam on the Eq. 4 NLL on the same batches in the same process, one after the other.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn

from train.core.flow import ConditionalINN, FlowConfig, VectorEmbedder, mlp


def _freia_model(cfg: FlowConfig):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    def subnet(c_in, c_out):
        return mlp(c_in, c_out, cfg.hidden, cfg.depth, zero_last=True)

    inn = Ff.SequenceINN(cfg.target_dim)
    for i in range(cfg.num_blocks):
        inn.append(Fm.ActNorm)
        inn.append(Fm.GLOWCouplingBlock, cond=0, cond_shape=(cfg.embed_dim,), subnet_constructor=subnet,
                   clamp=cfg.clamp)
        inn.append(Fm.PermuteRandom, seed=i)

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedder, self.inn = VectorEmbedder(cfg), inn

        def nll(self, z, cond):
            v, logdet = self.inn(z, c=[self.embedder(cond)])
            return 0.5 * (v ** 2).sum(1) + 0.5 * z.shape[1] * math.log(2 * math.pi) - logdet

    return Wrapped()


def _samples_per_s(model: nn.Module, cond: torch.Tensor, z: torch.Tensor, batch: int, steps: int,
                   warmup: int = 5) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        idx = torch.randint(len(z), (batch,), generator=gen)
        loss = model.nll(z[idx], cond[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def compare_training(target_dim: int = 64, cond_dim: int = 13, num_blocks: int = 10, hidden: int = 256,
                     depth: int = 2, batch: int = 256, steps: int = 50, rounds: int = 3) -> dict:
    """Samples/s of both models, alternating rounds so drift in machine load hits both alike."""
    cfg = FlowConfig(target_dim, (cond_dim,), num_blocks=num_blocks, hidden=hidden, depth=depth)
    torch.manual_seed(0)
    cond, z = torch.randn(4096, cond_dim), torch.randn(4096, target_dim)
    ours, peer = ConditionalINN(cfg), _freia_model(cfg)
    with torch.no_grad():      # ActNorm data init for both
        ours.train().inverse(z[:512], cond[:512])
        peer.nll(z[:512], cond[:512])
    best = {"ours": 0.0, "freia": 0.0}
    for _ in range(rounds):
        best["ours"] = max(best["ours"], _samples_per_s(ours, cond, z, batch, steps))
        best["freia"] = max(best["freia"], _samples_per_s(peer, cond, z, batch, steps))
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("ours", ours), ("freia", peer))}
    return {"config": cfg.to_dict(), "batch": batch, "ours_samples_per_s": best["ours"],
            "freia_samples_per_s": best["freia"], "ratio": best["ours"] / best["freia"], "params": params}


if __name__ == "__main__":
    import json
    print(json.dumps(compare_training(), indent=2))
