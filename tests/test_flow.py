"""The cINN core: exact invertibility, exact log-determinants, ActNorm init, checkpoints, sampling."""
import pytest
import torch
from torch.autograd.functional import jacobian

from train.core.common import load_tensors, save_tensors
from train.core.flow import ConditionalINN, FlowConfig, soft_clamp
from train.core.mlp import MLPConfig, MLPTranslator


def make_flow(fused=True, cond_shape=(5,), dim=7, blocks=4, seed=0, whiten=None, cond_affine="none"):
    torch.manual_seed(seed)
    flow = ConditionalINN(FlowConfig(target_dim=dim, cond_shape=cond_shape, num_blocks=blocks, hidden=32,
                                     embed_hidden=32, fused=fused, seed=seed, cond_whiten=whiten,
                                     cond_affine=cond_affine))
    flow.train()
    with torch.no_grad():                  # ActNorm init, then push every weight off its (identity) init
        flow.inverse(torch.randn(64, dim) * 2 + 1, torch.randn(64, *cond_shape))
        for p in flow.parameters():
            p.add_(0.05 * torch.randn_like(p))
        flow.set_standardization(torch.zeros(cond_shape), torch.ones(cond_shape) * 1.5,
                                 torch.randn(dim), torch.rand(dim) + 0.5)
        if whiten is not None:
            flow.fit_condition_whitening(torch.randn(400, *cond_shape) @ torch.randn(cond_shape[0], cond_shape[0]))
    return flow.eval()


@pytest.mark.parametrize("fused,cond_shape,whiten,cond_affine", [
    (True, (5,), None, "none"), (False, (5,), None, "none"), (True, (3, 16, 16), None, "none"),
    (False, (3, 16, 16), None, "none"), (True, (5,), 0.5, "none"), (True, (5,), None, "first"),
    (True, (3, 16, 16), None, "last")])
def test_invertible_both_ways(fused, cond_shape, whiten, cond_affine):
    flow = make_flow(fused, cond_shape, whiten=whiten, cond_affine=cond_affine)
    c = torch.randn(32, *cond_shape)
    z = torch.randn(32, 7) * 3
    with torch.no_grad():
        v, _ = flow.inverse(z, c)
        assert ((flow(v, c) - z).norm() / z.norm()) < 1e-5
        v2 = torch.randn(32, 7)
        z2 = flow(v2, c)
        assert ((flow.inverse(z2, c)[0] - v2).norm() / v2.norm()) < 1e-5


@pytest.mark.parametrize("fused,cond_affine", [(True, "none"), (False, "none"), (True, "first"), (True, "last")])
def test_logdet_matches_autograd_jacobian(fused, cond_affine):
    flow = make_flow(fused, cond_affine=cond_affine).double()
    c = torch.randn(3, 5, dtype=torch.float64)
    z = torch.randn(3, 7, dtype=torch.float64)
    _, logdet = flow.inverse(z, c)
    for i in range(3):
        jac = jacobian(lambda x: flow.inverse(x.unsqueeze(0), c[i:i + 1])[0].squeeze(0), z[i])
        ref = torch.linalg.slogdet(jac)[1]
        assert abs(logdet[i] - ref) / abs(ref).clamp_min(1.0) < 1e-4
    # the forward direction's log-det is the negative of the inverse one at the matching point
    ld_inv = flow.inverse(z, c)[1]
    v = flow.inverse(z, c)[0]
    jac_f = jacobian(lambda x: flow(x.unsqueeze(0), c[:1]).squeeze(0), v[0])
    assert torch.allclose(torch.linalg.slogdet(jac_f)[1], -ld_inv[0], rtol=1e-6, atol=1e-8)


def test_actnorm_initialises_once_and_never_after_loading(tmp_path):
    torch.manual_seed(0)
    flow = ConditionalINN(FlowConfig(target_dim=6, cond_shape=(3,), num_blocks=2, hidden=16))
    flow.train()
    z = torch.randn(500, 6) * 4 + 3
    v, _ = flow.inverse(z, torch.randn(500, 3))
    first = flow.blocks[0]
    assert bool(first.initialized)
    assert torch.allclose(v.mean(0), torch.zeros(6), atol=1e-4)
    bias = first.bias.detach().clone()
    flow.inverse(torch.randn(500, 6) * 10 - 7, torch.randn(500, 3))        # second batch: no re-init
    assert torch.equal(first.bias.detach(), bias)
    save_tensors(tmp_path / "c.safetensors", flow.state_dict())
    fresh = ConditionalINN(flow.cfg)
    fresh.load_state_dict(load_tensors(tmp_path / "c.safetensors"))
    fresh.train()
    fresh.inverse(torch.randn(100, 6) * 10 - 7, torch.randn(100, 3))      # loaded: flag says initialised
    assert torch.equal(fresh.blocks[0].bias.detach(), bias)


def test_checkpoint_roundtrip_identical_outputs(tmp_path):
    flow = make_flow()
    save_tensors(tmp_path / "c.safetensors", flow.state_dict())
    twin = ConditionalINN(flow.cfg)
    twin.load_state_dict(load_tensors(tmp_path / "c.safetensors"))
    twin.eval()
    c, z = torch.randn(10, 5), torch.randn(10, 7)
    with torch.no_grad():
        assert torch.equal(flow.inverse(z, c)[0], twin.inverse(z, c)[0])
        assert torch.equal(flow.inverse(z, c)[1], twin.inverse(z, c)[1])


def test_condition_whitening_decorrelates_and_shrinks(tmp_path):
    """cond_whiten = λ: H sees W(zΦ - mean) / std with W = U (Λ + λ·mean Λ)^-1/2 Uᵀ. λ = 0 makes the
    condition's covariance the identity, so a low-variance direction counts as much as a high-variance one;
    λ > 0 keeps directions far below the mean variance small. Saved and restored with the checkpoint."""
    torch.manual_seed(0)
    scales = torch.tensor([10.0, 3.0, 1.0, 0.1, 0.01])
    mix = torch.linalg.qr(torch.randn(5, 5))[0]
    c = (torch.randn(20000, 5) * scales) @ mix.T + 4.0
    seen = {}
    for lam in (0.0, 1.0):
        flow = make_flow(whiten=lam)
        flow.set_standardization(c.mean(0), c.std(0), torch.zeros(7), torch.ones(7))
        flow.fit_condition_whitening(c)
        x = (c - flow.cond_mean) @ flow.cond_whitening / flow.cond_std
        seen[lam] = torch.linalg.eigvalsh(torch.cov(x.T))
        assert torch.allclose(x.std(0), torch.ones(5), atol=1e-3)
    assert torch.allclose(seen[0.0], torch.ones(5), atol=1e-3)               # fully white
    assert seen[1.0][0] < 0.01 and seen[1.0][-1] > 1.5                          # the 0.01 direction stays small
    # per-dim standardisation alone would leave the 0.01-scale direction at ~1e-6 of the total variance
    save_tensors(tmp_path / "w.safetensors", flow.state_dict())
    twin = ConditionalINN(FlowConfig.from_dict(flow.cfg.to_dict()))
    twin.load_state_dict(load_tensors(tmp_path / "w.safetensors"))
    assert torch.equal(twin.embed(c[:8]), flow.embed(c[:8]))
    old = {k: v for k, v in flow.cfg.to_dict().items() if k != "cond_whiten"}   # configs before the option
    assert ConditionalINN(FlowConfig.from_dict(old)).cond_whitening is None
    with pytest.raises(ValueError, match="vector conditions"):
        ConditionalINN(FlowConfig(target_dim=4, cond_shape=(3, 8, 8), cond_whiten=1.0))


def test_permutations_are_seeded_and_differ_per_block():
    a, b = make_flow(seed=3), make_flow(seed=3)
    perms = [m.perm for m in a.blocks if hasattr(m, "perm")]
    assert all(torch.equal(p, q.perm) for p, q in zip(perms, [m for m in b.blocks if hasattr(m, "perm")]))
    assert not all(torch.equal(perms[0], p) for p in perms[1:])


def test_sampling_is_seeded_and_shaped():
    flow = make_flow()
    c = torch.randn(3, 5)
    s1 = flow.sample(c, num_samples=4, generator=torch.Generator().manual_seed(1))
    s2 = flow.sample(c, num_samples=4, generator=torch.Generator().manual_seed(1))
    s3 = flow.sample(c, num_samples=4, generator=torch.Generator().manual_seed(2))
    assert s1.shape == (12, 7) and torch.equal(s1, s2) and not torch.equal(s1, s3)
    # temperature 0 collapses every sample of a condition onto τ(0 | c)
    t0 = flow.sample(c, num_samples=2, temperature=0.0)
    assert torch.allclose(t0[0], t0[1])


def test_soft_clamp_bounds_the_scale():
    s = torch.linspace(-100, 100, 1001)
    out = soft_clamp(s, 2.0)
    assert out.abs().max() <= 2.0 and torch.isfinite(torch.exp(out.half())).all()
    assert torch.allclose(soft_clamp(torch.tensor([1e-3]), 2.0), torch.tensor([1e-3]), atol=1e-8)


def test_fused_and_unfused_share_the_math():
    torch.manual_seed(0)
    fused = make_flow(fused=True)
    unfused = ConditionalINN(FlowConfig(**{**fused.cfg.to_dict(), "fused": False}))
    state = {k: v for k, v in fused.state_dict().items() if ".st." not in k}
    for name, val in fused.state_dict().items():    # split each fused last layer into the s and t nets
        if ".st." in name:
            base, rest = name.split(".st.")
            layer, param = rest.split(".")
            n_out = val.shape[0] // 2 if layer == str(len(fused.blocks[1].first.st) - 1) else None
            state[f"{base}.s.{rest}"] = val[:n_out] if n_out else val
            state[f"{base}.t.{rest}"] = val[n_out:] if n_out else val
    unfused.load_state_dict(state)
    unfused.eval()
    c, z = torch.randn(8, 5), torch.randn(8, 7)
    with torch.no_grad():
        assert torch.allclose(fused.inverse(z, c)[0], unfused.inverse(z, c)[0], atol=1e-5)


def test_mlp_baseline_is_deterministic():
    mlp = MLPTranslator(MLPConfig(target_dim=7, cond_shape=(5,)))
    out = mlp.sample(torch.randn(2, 5), num_samples=3)
    assert out.shape == (6, 7) and torch.equal(out[0], out[2])


def test_dropout_regularises_training_only_and_keeps_old_weight_names():
    """Dropout in the coupling subnetworks acts in train mode only: eval-mode τ is deterministic and exactly
    invertible, and without dropout the state-dict names (old checkpoints) are unchanged."""
    kw = dict(target_dim=6, cond_shape=(3,), num_blocks=2, hidden=32, embed_hidden=32)
    torch.manual_seed(0)
    flow = ConditionalINN(FlowConfig(**kw, dropout=0.3))
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    z, c = torch.randn(16, 6), torch.randn(16, 3)
    flow.train()
    assert not torch.equal(flow.inverse(z, c)[0], flow.inverse(z, c)[0])
    flow.eval()
    v, _ = flow.inverse(z, c)
    assert torch.equal(v, flow.inverse(z, c)[0]) and torch.allclose(flow(v, c), z, atol=1e-5)
    plain = set(ConditionalINN(FlowConfig(**kw)).state_dict())
    assert "blocks.1.first.st.2.weight" in plain and "blocks.1.first.st.3.weight" in flow.state_dict()


def test_conditional_affine_starts_as_identity_and_old_configs_load_without_it(tmp_path):
    """cond_affine: zero-initialised (τ⁻¹ unchanged at init, wherever it sits), its own clamp bounds s, and a
    config written before the option existed loads as a flow without it, with the same parameter names."""
    torch.manual_seed(0)
    base = ConditionalINN(FlowConfig(target_dim=6, cond_shape=(3,), num_blocks=2, hidden=16, embed_hidden=16)).eval()
    z, c = torch.randn(8, 6), torch.randn(8, 3)
    for place in ("first", "last"):
        torch.manual_seed(0)
        flow = ConditionalINN(FlowConfig(target_dim=6, cond_shape=(3,), num_blocks=2, hidden=16, embed_hidden=16,
                                         cond_affine=place)).eval()
        flow.load_state_dict(base.state_dict(), strict=False)
        with torch.no_grad():
            assert all(torch.allclose(a, b) for a, b in zip(flow.inverse(z, c), base.inverse(z, c)))
            flow.cond_affine.net[-1].bias.fill_(100.0)               # ŝ = 100 -> s = α·tanh(100/α) ≈ α
            _, logdet = flow.inverse(z, c)
            _, logdet0 = base.inverse(z, c)
        assert torch.allclose(logdet0 - logdet, torch.full((8,), 6 * flow.cfg.cond_affine_clamp), atol=1e-3)
    old = base.cfg.to_dict()
    del old["cond_affine"], old["cond_affine_clamp"]
    loaded = ConditionalINN(FlowConfig.from_dict(old))
    assert loaded.cond_affine is None and loaded.state_dict().keys() == base.state_dict().keys()
    with pytest.raises(ValueError, match="cond_affine must be one of"):
        ConditionalINN(FlowConfig(target_dim=6, cond_shape=(3,), cond_affine="middle"))
