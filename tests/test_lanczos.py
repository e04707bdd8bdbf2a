"""Reference tests of the batched Lanczos (measures/lanczos.py) on dense symmetric float64 matrices
with known spectra, against ``torch.linalg.eigvalsh``: a batch of members with different spectra
(separated, clustered, negative, indefinite), the residual-based stop and its flags, the matvec
count, Ritz vectors, breakdown and restarts, the plain recurrence, and Gauss quadrature (SLQ)."""

from __future__ import annotations

import math

import pytest
import torch

from implicitreg.measures.lanczos import LanczosResult, lanczos, start_vector

D = torch.float64
N = 120


pytestmark = pytest.mark.usefixtures("one_thread")


def with_spectrum(eigs, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Qᵀ for a random orthogonal Q: a dense symmetric [n, n] with exactly these eigenvalues."""
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=D))
    return q @ torch.diag(torch.as_tensor(eigs, dtype=D)) @ q.T


def spectra(n: int = N) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    bulk = lambda lo, hi, size: (lo + (hi - lo) * torch.rand(size, generator=g, dtype=D)).tolist()
    return [
        torch.tensor([10.0, 8.0, 7.0, 6.5] + bulk(0.0, 5.0, n - 4)),  # separated top
        torch.tensor([4.0, 4.0 - 1e-3, 4.0 - 2e-3, 4.0 - 3e-3] + bulk(0.0, 2.0, n - 4)),  # a clustered top
        torch.tensor([3.0, 2.0, 1.0, 0.5] + bulk(-6.0, 0.0, n - 5) + [-60.0]),  # λ_min dominates in magnitude
        torch.tensor([-1.0, -1.5, -2.0, -2.2] + bulk(-9.0, -3.0, n - 4)),  # all negative
    ]


def batch(eig_list) -> tuple[torch.Tensor, callable, torch.Tensor]:
    """Members with these spectra: H [P, n, n], matvec [P, n] → [P, n], and a shared start vector [P, n]."""
    H = torch.stack([with_spectrum(e, seed=i) for i, e in enumerate(eig_list)])
    matvec = lambda v: torch.bmm(H, v.unsqueeze(2)).squeeze(2)
    v0 = start_vector(torch.Generator().manual_seed(0), H.shape[-1], H).expand(H.shape[0], -1)
    return H, matvec, v0


def true_relative_residuals(H: torch.Tensor, values: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """‖H y − θ y‖ / |θ| [P, k] for Ritz pairs (θ [P, k], y [P, k, n]), by explicit products."""
    Hy = torch.einsum("pij,pkj->pki", H, vectors)
    return (Hy - values[..., None] * vectors).norm(dim=-1) / values.abs()


# ---------------------------------------------------------------------------- eigenvalues


def test_top_k_of_a_batch_with_different_spectra_matches_eigvalsh():
    H, matvec, v0 = batch(spectra())
    exact = torch.linalg.eigvalsh(H).flip(-1)[:, :4]
    r = lanczos(matvec, v0, k=4, tol=1e-12, max_iter=N)
    assert isinstance(r, LanczosResult) and r.vectors is None
    assert r.values.shape == r.converged.shape == r.residuals.shape == (4, 4) and r.n_matvec.shape == (4,)
    assert bool(r.converged.all()) and bool((r.residuals < 1e-12).all())
    torch.testing.assert_close(r.values, exact, rtol=1e-10, atol=0)
    # the residual stop ended every member before the Krylov space filled up (where values are exact
    # regardless), each after its own number of products
    assert int(r.n_matvec.max()) < N and len(set(r.n_matvec.tolist())) > 1


def test_smallest_eigenvalues():
    H, matvec, v0 = batch(spectra())
    exact = torch.linalg.eigvalsh(H)[:, :3]
    r = lanczos(matvec, v0, k=3, tol=1e-12, max_iter=N, which="smallest")
    assert bool(r.converged.all())
    torch.testing.assert_close(r.values, exact, rtol=1e-10, atol=0)


def test_a_population_equals_a_loop_over_its_members():
    H, matvec, v0 = batch(spectra())
    together = lanczos(matvec, v0, k=2, tol=1e-10, max_iter=N)
    for p in range(H.shape[0]):
        alone = lanczos(lambda v, p=p: v @ H[p], v0[p : p + 1], k=2, tol=1e-10, max_iter=N)
        torch.testing.assert_close(together.values[p], alone.values[0], rtol=1e-13, atol=0)
        assert int(together.n_matvec[p]) == int(alone.n_matvec[0])
        assert torch.equal(together.converged[p], alone.converged[0])


# ---------------------------------------------------------------------------- the stop and its count


def test_a_budget_too_small_reports_not_converged_and_its_residuals_are_true():
    H, matvec, v0 = batch(spectra()[1:2])  # the clustered top: 6 products cannot separate it
    r = lanczos(matvec, v0, k=3, tol=1e-8, max_iter=6, return_vectors=True)
    assert int(r.n_matvec[0]) == 6 and not bool(r.converged.any())
    assert bool((r.residuals >= 1e-8).all())
    # the reported bound |β_m s_m| / |θ| is the true residual of the Ritz pair it describes
    torch.testing.assert_close(r.residuals, true_relative_residuals(H, r.values, r.vectors), rtol=1e-8, atol=1e-14)
    exact = torch.linalg.eigvalsh(H[0]).flip(0)[:3]
    assert bool((r.values[0] <= exact + 1e-12).all())  # Ritz values never exceed the eigenvalues


def test_a_member_can_converge_while_another_runs_out():
    easy = [5.0, 4.0] + [1.0] * (N - 2)  # three distinct eigenvalues: exact after 3 products
    H, matvec, v0 = batch([easy, spectra()[1].tolist()])
    r = lanczos(matvec, v0, k=1, tol=1e-10, max_iter=8)
    assert r.converged[:, 0].tolist() == [True, False]
    assert r.n_matvec.tolist() == [3, 8]
    assert float(r.values[0, 0]) == pytest.approx(5.0, rel=1e-12)


def test_the_matvec_count_is_the_products_made():
    H, matvec, v0 = batch(spectra())
    calls = []

    def counting(matvec):
        def counted(v):
            calls.append(v.shape[0])
            return matvec(v)
        return counted

    r = lanczos(counting(matvec), v0, k=2, tol=1e-10, max_iter=N)
    # the batch runs as long as its slowest member; each member's count stops where it did
    assert len(calls) == int(r.n_matvec.max())
    for p in range(H.shape[0]):
        calls.clear()
        alone = lanczos(counting(lambda v, p=p: v @ H[p]), v0[p : p + 1], k=2, tol=1e-10, max_iter=N)
        assert len(calls) == int(alone.n_matvec[0]) == int(r.n_matvec[p])


def test_a_subset_operator_multiplies_only_the_members_still_running():
    # members that converge at very different speeds: three distinct eigenvalues (exact after 3
    # products), a separated top, a clustered one (many products); with ``subset`` the converged
    # ones stop being multiplied, and every member's result is still the one it has alone
    eigs = spectra()
    easy = [5.0, 4.0] + [1.0] * (N - 2)
    H, matvec, v0 = batch([easy, eigs[0], easy, easy, eigs[1], eigs[3]])
    P = H.shape[0]
    rows = []  # member-products computed, one entry per product call

    def rows_of(members: torch.Tensor):
        def product(v):
            assert v.shape == (len(members), N)
            rows.append(len(members))
            return torch.bmm(H[members], v.unsqueeze(2)).squeeze(2)
        return product

    full = lanczos(matvec, v0, k=2, tol=1e-10, max_iter=N)
    r = lanczos(rows_of(torch.arange(P)), v0, k=2, tol=1e-10, max_iter=N, subset=rows_of)
    slowest, spent = int(r.n_matvec.max()), sum(rows)
    assert len(rows) == slowest
    assert int(r.n_matvec.min()) < slowest // 2  # the case in point: very different speeds
    # fewer member-products than P per step, never fewer than the members' own counts, and — a new
    # operator once at most half are left — at most twice those
    assert int(r.n_matvec.sum()) <= spent <= 2 * int(r.n_matvec.sum()) and spent < P * slowest
    torch.testing.assert_close(r.values, full.values, rtol=1e-13, atol=0)
    assert torch.equal(r.n_matvec, full.n_matvec) and torch.equal(r.converged, full.converged)
    for p in range(P):
        alone = lanczos(lambda v, p=p: v @ H[p], v0[p : p + 1], k=2, tol=1e-10, max_iter=N)
        torch.testing.assert_close(r.values[p], alone.values[0], rtol=1e-13, atol=0)
        assert int(r.n_matvec[p]) == int(alone.n_matvec[0])
    torch.testing.assert_close(r.values, torch.linalg.eigvalsh(H).flip(-1)[:, :2], rtol=1e-9, atol=0)


def test_a_free_subset_is_taken_at_every_finish_and_wastes_no_product():
    """subset_fraction = 1 (an operator whose restriction costs nothing): a new operator whenever a
    member finishes, so the member-products computed are exactly the ones the members used; the
    results are the same."""
    eigs = spectra()
    easy = [5.0, 4.0] + [1.0] * (N - 2)
    H, matvec, v0 = batch([easy, eigs[0], easy, eigs[1], eigs[3]])
    spent, restricted = [], []

    def rows_of(members: torch.Tensor):
        restricted.append(len(members))
        def product(v):
            spent.append(len(members))
            return torch.bmm(H[members], v.unsqueeze(2)).squeeze(2)
        return product

    full = lanczos(matvec, v0, k=2, tol=1e-10, max_iter=N)
    r = lanczos(rows_of(torch.arange(len(H))), v0, k=2, tol=1e-10, max_iter=N, subset=rows_of, subset_fraction=1.0)
    assert sum(spent) == int(r.n_matvec.sum())
    assert restricted[1:] == sorted(restricted[1:], reverse=True) and len(restricted) > 2
    torch.testing.assert_close(r.values, full.values, rtol=1e-13, atol=0)
    assert torch.equal(r.n_matvec, full.n_matvec)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="subset_fraction: expected a number in"):
            lanczos(matvec, v0, k=2, subset=rows_of, subset_fraction=bad)


def test_a_subset_operator_keeps_vectors_and_the_plain_recurrence():
    H, matvec, v0 = batch(spectra())
    subset = lambda members: (lambda v: torch.bmm(H[members], v.unsqueeze(2)).squeeze(2))  # noqa: E731
    for kwargs in ({"return_vectors": True}, {"reorthogonalize": False}):
        a = lanczos(matvec, v0, k=2, tol=1e-8, max_iter=N, **kwargs)
        b = lanczos(matvec, v0, k=2, tol=1e-8, max_iter=N, subset=subset, **kwargs)
        torch.testing.assert_close(b.values, a.values, rtol=1e-13, atol=0)
        torch.testing.assert_close(b.alpha, a.alpha, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(b.beta, a.beta, rtol=1e-13, atol=1e-15)
        assert torch.equal(a.n_matvec, b.n_matvec)
        if a.vectors is not None:
            torch.testing.assert_close(b.vectors, a.vectors, rtol=1e-10, atol=1e-12)


def test_sparse_checks_cost_at_most_an_eighth_more_products():
    H, matvec, v0 = batch(spectra())
    every = lanczos(matvec, v0, k=1, tol=1e-10, max_iter=N)
    sparse = lanczos(matvec, v0, k=1, tol=1e-10, max_iter=N, check_ratio=1 / 8)
    assert bool(sparse.converged.all())
    assert bool((sparse.n_matvec >= every.n_matvec).all())
    assert bool((sparse.n_matvec <= every.n_matvec + every.n_matvec // 8 + 1).all())
    torch.testing.assert_close(sparse.values, torch.linalg.eigvalsh(H).flip(-1)[:, :1], rtol=1e-10, atol=0)


def test_run_to_full_dimension_is_exact_and_tol_zero_never_converges():
    eigs = torch.linspace(-1.0, 2.0, 60).tolist()
    H, matvec, v0 = batch([eigs])
    r = lanczos(matvec, v0, k=5, tol=0.0, max_iter=500)  # the basis grows past its first allocation
    assert int(r.n_matvec[0]) == 60 and not bool(r.converged.any())
    assert bool((r.residuals == 0).all())  # the Krylov space is everything: nothing is left over
    torch.testing.assert_close(r.values[0], torch.tensor(eigs, dtype=D).flip(0)[:5], rtol=1e-10, atol=1e-12)


def test_record_sees_every_check():
    H, matvec, v0 = batch(spectra()[:2])
    seen = []
    r = lanczos(matvec, v0, k=2, tol=1e-10, max_iter=N, record=lambda m, theta, rel: seen.append(
        (m, tuple(theta.shape), tuple(rel.shape))))
    assert [m for m, _, _ in seen] == list(range(1, int(r.n_matvec.max()) + 1))
    assert seen[0][1:] == ((2, 1), (2, 1)) and seen[-1][1:] == ((2, 2), (2, 2))


# ---------------------------------------------------------------------------- vectors, breakdown, plain recurrence


def test_ritz_vectors_are_orthonormal_eigenvectors():
    H, matvec, v0 = batch(spectra())
    r = lanczos(matvec, v0, k=3, tol=1e-12, max_iter=N, return_vectors=True)
    assert r.vectors.shape == (4, 3, N)
    gram = torch.einsum("pkn,pln->pkl", r.vectors, r.vectors)
    torch.testing.assert_close(gram, torch.eye(3, dtype=D).expand(4, 3, 3), rtol=0, atol=1e-12)
    assert bool((true_relative_residuals(H, r.values, r.vectors) < 1e-11).all())
    _, exact = torch.linalg.eigh(H)
    for p in (0, 2, 3):  # separated eigenvalues: the eigenvector itself, up to sign
        overlap = torch.einsum("pkn,pnk->pk", r.vectors[p : p + 1], exact[p : p + 1].flip(-1)[..., :3]).abs()
        torch.testing.assert_close(overlap, torch.ones_like(overlap), rtol=0, atol=1e-9)


def test_breakdown_restarts_and_finds_repeated_eigenvalues():
    # three distinct eigenvalues: the Krylov space is 3-dimensional and Lanczos breaks down at
    # step 3; only a restart can find the second copy of the repeated eigenvalue 1
    H, matvec, v0 = batch([[5.0, 4.0] + [1.0] * 18])
    r = lanczos(matvec, v0, k=4, tol=1e-10, max_iter=50)
    assert bool(r.converged.all())
    torch.testing.assert_close(r.values[0], torch.tensor([5.0, 4.0, 1.0, 1.0], dtype=D))


def test_plain_recurrence_without_reorthogonalization():
    H, matvec, v0 = batch(spectra())
    r = lanczos(matvec, v0, k=1, tol=1e-10, max_iter=N, reorthogonalize=False)
    assert bool(r.converged.all())
    torch.testing.assert_close(r.values, torch.linalg.eigvalsh(H).flip(-1)[:, :1], rtol=1e-10, atol=0)
    # it cannot restart: at a breakdown the member stops, exact for what its Krylov space holds
    _, matvec, v0 = batch([[5.0, 4.0] + [1.0] * 18])
    b = lanczos(matvec, v0, k=4, tol=1e-10, max_iter=50, reorthogonalize=False)
    assert int(b.n_matvec[0]) == 3 and b.converged[0].tolist() == [True, True, True, False]
    torch.testing.assert_close(b.values[0, :3], torch.tensor([5.0, 4.0, 1.0], dtype=D))
    assert math.isnan(float(b.values[0, 3]))


# ---------------------------------------------------------------------------- quadrature (SLQ)


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_gauss_quadrature_reproduces_the_moments(reorthogonalize):
    # members of different lengths: the 3-eigenvalue member stops early (zero-padded T)
    easy = [5.0, 4.0] + [1.0] * (N - 2)
    H, matvec, v0 = batch([spectra()[2].tolist(), easy])
    m = 8
    r = lanczos(matvec, v0, k=1, tol=0.0, max_iter=m, reorthogonalize=reorthogonalize)
    assert r.alpha.shape == (2, m) and r.beta.shape == (2, m - 1) and r.tridiagonal().shape == (2, m, m)
    nodes, weights = r.quadrature()
    torch.testing.assert_close(weights.sum(1), torch.ones(2, dtype=D), rtol=1e-12, atol=0)
    u = v0 / v0.norm(dim=1, keepdim=True)
    scale = torch.linalg.eigvalsh(H).abs().amax(-1)
    for j in range(2 * m):  # Gauss quadrature with m nodes is exact to degree 2m − 1
        Hu = u
        for _ in range(j):
            Hu = matvec(Hu)
        moment = (u * Hu).sum(1)
        torch.testing.assert_close((weights * nodes**j).sum(1) / scale**j, moment / scale**j, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------- errors


def test_bad_arguments_say_what_was_expected():
    _, matvec, v0 = batch(spectra()[:1])
    with pytest.raises(ValueError, match=r"v0: expected .*\[P, n\]"):
        lanczos(matvec, v0[0])
    with pytest.raises(ValueError, match="v0: expected a nonzero"):
        lanczos(matvec, torch.zeros_like(v0))
    with pytest.raises(ValueError, match="k: expected"):
        lanczos(matvec, v0, k=0)
    with pytest.raises(ValueError, match="k: expected"):
        lanczos(matvec, v0, k=N + 1)
    with pytest.raises(ValueError, match="max_iter"):
        lanczos(matvec, v0, k=3, max_iter=2)
    with pytest.raises(ValueError, match="which"):
        lanczos(matvec, v0, which="magnitude")
    with pytest.raises(ValueError, match="tol"):
        lanczos(matvec, v0, tol=-1.0)
    with pytest.raises(ValueError, match="check_ratio"):
        lanczos(matvec, v0, check_ratio=-0.5)
