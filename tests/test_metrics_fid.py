"""Fréchet distance closed forms, FID of identical sets, the low-rank path, ArtFID (spec osasis §8 42)."""

import math

import pytest
import torch

from styleforge.errors import InputError
from styleforge.metrics import fid as F
from styleforge.metrics.lpips import LPIPS
from styleforge.metrics.nets.inception import InceptionV3


def test_frechet_of_identical_gaussians_is_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    sigma = a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)
    mu = torch.randn(6, generator=g, dtype=torch.float64)
    assert F.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_one_dimensional_closed_form():
    mu1, s1, mu2, s2 = 1.5, 2.0, -0.5, 0.5  # standard deviations
    expected = (mu1 - mu2) ** 2 + s1 ** 2 + s2 ** 2 - 2 * s1 * s2
    assert F.frechet_distance([mu1], [[s1 ** 2]], [mu2], [[s2 ** 2]]) == pytest.approx(expected, rel=1e-12)


def test_frechet_of_a_pure_mean_shift_is_the_squared_shift():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    sigma = a @ a.T
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert F.frechet_distance(torch.zeros(5), sigma, shift, sigma) == pytest.approx(float(shift.pow(2).sum()), rel=1e-9)


def test_frechet_of_known_diagonal_gaussians():
    # commuting (diagonal) covariances: Tr((Σ1Σ2)^½) = Σ sqrt(σ1_i σ2_i)
    v1, v2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 0.25])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = float((mu1 - mu2).pow(2).sum() + v1.sum() + v2.sum() - 2 * (v1 * v2).sqrt().sum())
    assert F.frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_identical_feature_sets_is_zero_and_symmetric():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 64, generator=g, dtype=torch.float64)
    y = torch.randn(12, 64, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert F.fid_from_features(x, x, warn=False) < 1e-9
    assert F.fid_from_features(x, y, warn=False) == pytest.approx(F.fid_from_features(y, x, warn=False), rel=1e-9)


def test_low_rank_path_equals_the_full_eigendecomposition():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 40, generator=g, dtype=torch.float64)
    y = torch.randn(9, 40, generator=g, dtype=torch.float64) + 0.5
    full = F.frechet_distance(*F.feature_statistics(x), *F.feature_statistics(y))
    # the D x D path takes square roots of ~1e-15 round-off eigenvalues of the singular product: ~1e-8 relative
    assert F._frechet_low_rank(x, y) == pytest.approx(full, rel=1e-7)
    assert F.fid_from_features(x, y, warn=False) == F._frechet_low_rank(x, y)


def test_fid_from_many_samples_uses_the_full_path_and_matches_statistics():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    y = torch.randn(60, 8, generator=g, dtype=torch.float64) * 2
    assert F.fid_from_features(x, y, warn=False) == pytest.approx(
        F.frechet_distance(*F.feature_statistics(x), *F.feature_statistics(y)), rel=1e-12)


def test_small_sets_warn_and_single_images_are_refused():
    x = torch.randn(3, 16)
    with pytest.warns(UserWarning, match="biased"):
        F.fid_from_features(x, x + 1)
    with pytest.raises(InputError, match="at least 2"):
        F.fid_from_features(x[:1], x)


@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    return InceptionV3().eval(), LPIPS.build("alex")


def test_fid_on_images_with_a_random_inception(tiny_nets):
    inception, _ = tiny_nets
    imgs = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with pytest.warns(UserWarning):
        assert F.fid(imgs, imgs.clone(), net=inception) < 1e-6
    feats = F.inception_features(inception, imgs, resize=80, batch_size=2)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float64


def test_art_fid_of_a_set_with_itself_is_one_and_grows_with_each_factor(tiny_nets):
    inception, lp = tiny_nets
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 3, 40, 40, generator=g) * 2 - 1
    same = F.art_fid(x, x, x, inception=inception, lpips=lp, resize=80)
    assert same["art_fid"] == pytest.approx(1.0, abs=1e-6) and same["n"] == 3
    other = torch.rand(3, 3, 40, 40, generator=g) * 2 - 1
    worse_content = F.art_fid(x, x, other, inception=inception, lpips=lp, resize=80)
    assert worse_content["fid"] == pytest.approx(0.0, abs=1e-6) and worse_content["art_fid"] > 1.0
    both = F.art_fid(x, other, other, inception=inception, lpips=lp, resize=80)
    assert both["art_fid"] == pytest.approx((1 + both["content_lpips"]) * (1 + both["fid"]), rel=1e-12)
    assert both["art_fid"] > worse_content["art_fid"]
    assert math.isfinite(both["art_fid"])
