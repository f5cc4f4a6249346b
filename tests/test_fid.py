"""Oracle FID: the Fréchet distance against closed forms, and the oracle's feature layer."""
import numpy as np
import pytest

from train.eval.fid import frechet_distance, frechet_from_statistics, oracle_features, reference_renders


def test_diagonal_gaussians_match_the_closed_form():
    # N(μ₁, diag s₁) vs N(μ₂, diag s₂): d² = ‖Δμ‖² + Σ (√s₁ − √s₂)²
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_from_statistics(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(want, rel=1e-9)


def test_non_commuting_covariances_match_the_symmetric_root():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    w, u = np.linalg.eigh(s1)
    r1 = u @ np.diag(np.sqrt(w)) @ u.T                       # tr (Σ₁Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½
    inner = np.linalg.eigvalsh(r1 @ s2 @ r1)
    want = np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum()
    assert frechet_from_statistics(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(want, rel=1e-7)


def test_feature_sets_identical_shifted_and_singular():
    x = np.random.default_rng(1).normal(size=(2000, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.arange(8) * 0.5
    assert frechet_distance(x, x + shift) == pytest.approx((shift ** 2).sum(), rel=1e-6)
    dead = np.concatenate([x, np.zeros((2000, 3))], 1)        # dead ReLU units: singular Σ, still finite
    assert frechet_distance(dead, dead + 1) == pytest.approx(11.0, rel=1e-4)
    with pytest.raises(ValueError):
        frechet_distance(x, x[:, :4])


def test_oracle_features_are_the_penultimate_layer(oracle_run):
    from train.experts.classifier import load_oracle
    oracle = load_oracle(oracle_run)
    images = reference_renders(16, oracle.size)
    f = oracle_features(oracle, images)
    assert f.shape == (16, oracle.model.head.in_features)
    logits = oracle.model.head(__import__("torch").from_numpy(f).float())
    assert np.allclose(oracle.probabilities(images), logits.sigmoid().numpy(), atol=1e-5)
    assert frechet_distance(f, f) < 1e-6


def test_scored_images_may_not_reach_the_reference(oracle_run):
    from train.core.common import UserError
    from train.eval.fid import REFERENCE_OFFSET, OracleFID
    from train.experts.classifier import load_oracle
    with pytest.raises(UserError, match="--num-images"):
        OracleFID(load_oracle(oracle_run), 4, 64, scored=REFERENCE_OFFSET + 1)
    with pytest.raises(UserError, match="at least 2"):
        OracleFID(load_oracle(oracle_run), 1, 64)
