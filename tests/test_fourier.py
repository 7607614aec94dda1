"""Fourier tools against analytic answers (docs/measures.md, "Fourier basis")."""

from __future__ import annotations

import math

import pytest
import torch

from grokscope.analysis import fourier as fr


@pytest.mark.parametrize("p", [3, 4, 7, 10, 12, 31, 113])
def test_basis_is_orthonormal_for_odd_and_even_p(p):
    F, names = fr.fourier_basis(p)
    assert F.shape == (p, p) and len(names) == p
    torch.testing.assert_close(F @ F.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    assert names[0] == "const" and names[1] == "cos 1" and names[2] == "sin 1"


@pytest.mark.parametrize("p", [7, 10])
def test_basis_rows_are_the_named_waves(p):
    F, names = fr.fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    torch.testing.assert_close(F[0], torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64))
    k = 2
    cos = torch.cos(2 * math.pi * k * x / p)
    sin = torch.sin(2 * math.pi * k * x / p)
    rows = fr.freq_rows(p, k)
    assert names[rows[0]] == f"cos {k}" and names[rows[1]] == f"sin {k}"
    torch.testing.assert_close(F[rows[0]], cos / cos.norm())
    torch.testing.assert_close(F[rows[1]], sin / sin.norm())


def test_even_p_has_the_nyquist_row():
    p = 10
    F, names = fr.fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    assert names[-1] == "cos 5" and fr.freq_rows(p, 5) == [p - 1]
    torch.testing.assert_close(F[-1], (-1.0) ** x / math.sqrt(p))
    assert fr.n_freqs(p) == 5 and fr.n_freqs(11) == 5
    assert fr.row_freq(p).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def test_2d_transform_of_a_product_wave_is_one_component():
    p, k = 11, 3
    F, _ = fr.fourier_basis(p)
    x = torch.arange(p, dtype=torch.float64)
    T = torch.cos(2 * math.pi * k * x / p)[:, None] * torch.sin(2 * math.pi * k * x / p)[None, :]
    T_hat = fr.fourier_2d(T, F)
    i, j = fr.freq_rows(p, k)
    expected = torch.zeros(p, p, dtype=torch.float64)
    expected[i, j] = T.norm()  # all of the energy in the (cos k, sin k) component
    torch.testing.assert_close(T_hat, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(fr.inverse_fourier_2d(T_hat, F), T)


def test_1d_transform_along_a_dimension():
    p = 9
    F, _ = fr.fourier_basis(p)
    X = torch.randn(4, p, 3, dtype=torch.float64)
    out = fr.fourier_1d(X, F, dim=1)
    torch.testing.assert_close(out[2, :, 1], F @ X[2, :, 1])


@pytest.mark.parametrize("p,ks", [(11, [1, 4]), (12, [2, 6]), (31, [3, 7, 12])])
def test_directions_orthonormal_projector_idempotent_and_orthogonal(p, ks):
    U = fr.sum_directions(p, ks)
    n_cols = sum(len(fr.freq_rows(p, k)) for k in ks)
    assert U.shape == (p * p, n_cols)
    torch.testing.assert_close(U.T @ U, torch.eye(n_cols, dtype=torch.float64), atol=1e-10, rtol=0)
    P = fr.projector(U)
    torch.testing.assert_close(P @ P, P, atol=1e-10, rtol=0)  # idempotent
    torch.testing.assert_close(P, P.T)  # symmetric: an orthogonal projector
    L = torch.randn(p * p, p, dtype=torch.float64)
    torch.testing.assert_close(fr.project(L, U), P @ L)
    resid = L - P @ L
    torch.testing.assert_close(U.T @ resid, torch.zeros(n_cols, p, dtype=torch.float64), atol=1e-10, rtol=0)


def test_projector_keeps_its_waves_and_removes_others():
    p = 13
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    U = fr.sum_directions(p, [2, 5])
    w = 2 * math.pi / p
    inside = 3 * torch.cos(w * 5 * (a + b)) - torch.sin(w * 2 * (a + b))
    torch.testing.assert_close(fr.project(inside, U), inside)
    for outside in (torch.cos(w * 3 * (a + b)), torch.cos(w * 2 * (a - b)), torch.cos(w * 5 * a)):
        assert fr.project(outside, U).abs().max() < 1e-10
    # the a - b directions are the sign=-1 variant
    Um = fr.sum_directions(p, [2], sign=-1)
    d = torch.cos(w * 2 * (a - b))
    torch.testing.assert_close(fr.project(d, Um), d)


@pytest.mark.parametrize("p", [11, 10])
def test_cos_abc_coefficients_match_least_squares_on_the_cube(p):
    ks = [1, 3]
    g = torch.Generator().manual_seed(0)
    T = {k: fr.cos_abc_term(p, k) for k in range(1, fr.n_freqs(p) + 1)}
    L = 2.5 * T[1] - 1.0 * T[3] + 0.7 * T[2] + 0.1 * torch.randn(p * p, p, generator=g, dtype=torch.float64)
    coefs = fr.cos_abc_coefficients(L, p, ks)
    X = torch.stack([T[k].flatten() for k in ks], dim=1)  # the cube, fine at this size
    ref = torch.linalg.lstsq(X, L.flatten()[:, None]).solution.flatten()
    torch.testing.assert_close(coefs, ref, atol=1e-10, rtol=0)
    assert abs(coefs[0] - 2.5) < 0.05 and abs(coefs[1] + 1.0) < 0.05
    fit = fr.cos_abc_fit(coefs, p, ks)
    torch.testing.assert_close(fit, (X @ ref).view(p * p, p))


def test_cos_abc_term_is_the_formula():
    p, k = 7, 2
    t = fr.cos_abc_term(p, k)
    a, b, c = 3, 5, 6
    assert t[a * p + b, c] == pytest.approx(math.cos(2 * math.pi * k * (a + b - c) / p))
    t_sub = fr.cos_abc_term(p, k, sign=-1)
    assert t_sub[a * p + b, c] == pytest.approx(math.cos(2 * math.pi * k * (a - b - c) / p))


def test_freq_norms_combine_cos_and_sin():
    p = 7
    rows = torch.tensor([9.0, 3.0, 4.0, 0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(fr.freq_norms(rows, p), torch.tensor([5.0, 0.0, 1.0], dtype=torch.float64))
