"""Data: MNIST-1D offline + cache, digits splits, synthetic generators, label noise, random streams."""

import math
import os
from pathlib import Path

import mnist1d.data
import numpy as np
import pytest
import torch

from implicitreg.config import DataConfig
from implicitreg.data import (corrupt_labels, load_dataset, load_digits, load_mnist1d, regression, separable,
                              teacher_student)
from implicitreg.data.mnist1d import cache_dir
from implicitreg.sampling import BatchOrders, DropoutMasks


@pytest.fixture
def no_download(monkeypatch):
    """MNIST-1D must be synthesized offline: ``get_dataset`` (which downloads) is forbidden."""
    def forbidden(*args, **kwargs):
        raise AssertionError("mnist1d.data.get_dataset downloads; implicitreg must not call it")
    monkeypatch.setattr(mnist1d.data, "get_dataset", forbidden)


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache for one test (the session cache would hide whether generation happens)."""
    monkeypatch.setenv("IMPLICITREG_CACHE", str(tmp_path))
    return tmp_path


def forbid_generation(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("make_dataset called although the data set is cached")
    monkeypatch.setattr(mnist1d.data, "make_dataset", forbidden)


# -- MNIST-1D ---------------------------------------------------------------------------------------

def test_cache_dir_follows_the_environment(data_cache):
    assert cache_dir() == data_cache  # the session fixture keeps tests away from ~/.cache


def test_mnist1d_default_shapes_classes_and_cache(no_download, data_cache, monkeypatch):
    data = load_mnist1d()
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.y_train.shape == (4000,) and data.y_test.shape == (1000,)
    assert data.x_train.dtype == np.float64 and data.y_train.dtype == np.int64
    assert data.n_classes == 10 and data.input_dim == 40
    assert set(np.unique(data.y_train)) == set(range(10)) and set(np.unique(data.y_test)) == set(range(10))
    # the generator balances classes: 500 per class over the 5000 samples
    counts = np.bincount(np.concatenate([data.y_train, data.y_test]), minlength=10)
    assert (counts == 500).all()
    # make_dataset standardizes the whole set (mean 0, std 1) before splitting
    everything = np.concatenate([data.x_train, data.x_test])
    assert abs(everything.mean()) < 1e-6 and abs(everything.std() - 1) < 1e-6
    assert len(list(data_cache.glob("mnist1d-*.npz"))) >= 1

    forbid_generation(monkeypatch)  # the second load can only come from the cache file
    again = load_mnist1d()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))


def test_mnist1d_generation_writes_one_cache_file_and_is_deterministic(no_download, fresh_cache, monkeypatch):
    first = load_mnist1d(n_train=200, n_test=100)
    files = list(fresh_cache.glob("*"))
    assert [f.suffix for f in files] == [".npz"], files  # no leftover temporary file
    os.remove(files[0])
    regenerated = load_mnist1d(n_train=200, n_test=100)  # generated again from scratch
    np.testing.assert_array_equal(regenerated.x_train, first.x_train)
    np.testing.assert_array_equal(regenerated.y_test, first.y_test)
    assert first.x_train.shape == (200, 40) and first.x_test.shape == (100, 40)

    forbid_generation(monkeypatch)
    cached = load_mnist1d(n_train=200, n_test=100)
    np.testing.assert_array_equal(cached.x_test, first.x_test)


def test_mnist1d_seed_changes_the_data(fresh_cache):
    a = load_mnist1d(n_train=100, n_test=100, seed=0)
    b = load_mnist1d(n_train=100, n_test=100, seed=1)
    assert not np.array_equal(a.x_train, b.x_train)
    assert len(list(fresh_cache.glob("*.npz"))) == 2  # the seed is part of the cache key


@pytest.fixture(scope="module")
def canonical() -> dict:
    """The paper's MNIST-1D: the generator's default arguments (seed 42), 4000 train / 1000 test."""
    from implicitreg.data.mnist1d import _generate

    return _generate(mnist1d.data.make_dataset, mnist1d.data.get_dataset_args())


def test_mnist1d_smaller_sizes_are_the_first_points_of_the_canonical_set(no_download, fresh_cache, canonical):
    assert canonical["x"].shape == (4000, 40) and canonical["x_test"].shape == (1000, 40)
    small = load_mnist1d(n_train=500, n_test=200)
    np.testing.assert_array_equal(small.x_train, canonical["x"][:500])
    np.testing.assert_array_equal(small.y_train, canonical["y"][:500])
    np.testing.assert_array_equal(small.x_test, canonical["x_test"][:200])
    np.testing.assert_array_equal(small.y_test, canonical["y_test"][:200])
    full = load_dataset(DataConfig(name="mnist1d", n_train=4000, n_test=1000, seed=42))
    np.testing.assert_array_equal(full.x_train, canonical["x"])
    np.testing.assert_array_equal(full.x_test, canonical["x_test"])
    assert len(list(fresh_cache.glob("*.npz"))) == 1  # both sizes come from one cached set


def test_mnist1d_seed_means_what_it_says(data_cache, canonical):
    zero = load_dataset(DataConfig(name="mnist1d", n_train=100, n_test=50, seed=0))
    assert not np.array_equal(zero.x_train, canonical["x"][:100])  # 0 is seed 0, not the default 42
    np.testing.assert_array_equal(zero.x_train, load_mnist1d(n_train=100, n_test=50, seed=0).x_train)
    forty_two = load_dataset(DataConfig(name="mnist1d", n_train=100, n_test=50, seed=42))
    np.testing.assert_array_equal(forty_two.x_train, canonical["x"][:100])


def test_mnist1d_beyond_the_canonical_set_is_a_larger_draw(data_cache):
    data = load_mnist1d(n_train=4500, n_test=600)
    assert data.x_train.shape == (4500, 40) and data.x_test.shape == (600, 40)
    assert set(np.unique(data.y_test)) == set(range(10))
    # train and test come from one draw, split by index: no point is in both
    train_rows = {row.tobytes() for row in data.x_train}
    assert not any(row.tobytes() in train_rows for row in data.x_test)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-arrays"])
def test_mnist1d_damaged_cache_file_is_regenerated(fresh_cache, monkeypatch, canonical, damage):
    calls = []

    def generator(args):  # the canonical set, instantly (the real generator takes seconds)
        calls.append(args.seed)
        return {name: canonical[name].copy() for name in ("x", "y", "x_test", "y_test")}

    monkeypatch.setattr(mnist1d.data, "make_dataset", generator)
    load_mnist1d(n_train=50, n_test=20)
    (path,) = fresh_cache.glob("*.npz")
    if damage == "garbage":
        path.write_bytes(b"not an npz at all" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        np.savez(path, x=np.zeros((3, 40)))
    again = load_mnist1d(n_train=50, n_test=20)
    assert calls == [42, 42]  # generated again rather than read
    np.testing.assert_array_equal(again.x_train, canonical["x"][:50])
    with np.load(path, allow_pickle=False) as archive:  # the cache file was replaced by a good one
        assert archive["x"].shape == (4000, 40)
    assert [p.name for p in fresh_cache.iterdir()] == [path.name]  # no temporary file left


def test_cache_variable_naming_a_file_is_one_clear_error(tmp_path, monkeypatch):
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("IMPLICITREG_CACHE", str(not_a_dir))
    with pytest.raises(ValueError, match=r"IMPLICITREG_CACHE: expected a directory .*a-file"):
        load_mnist1d(n_train=50, n_test=20)
    monkeypatch.setenv("IMPLICITREG_CACHE", str(not_a_dir / "below"))  # a path below a file cannot be made
    with pytest.raises(ValueError, match=r"IMPLICITREG_CACHE: cannot write the data cache in .*below"):
        load_mnist1d(n_train=50, n_test=20)


def test_cache_variable_naming_a_file_is_a_cli_error(tmp_path, monkeypatch):
    from conftest import TINY, assert_user_error, invoke_cli

    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    monkeypatch.setenv("IMPLICITREG_CACHE", str(not_a_dir))
    out = tmp_path / "out"
    # sizes no other test loads, so the in-process data set cache cannot answer first
    result = invoke_cli([*TINY, "--set", "data.n_train=203", "--set", "data.n_test=97", "--out", out])
    assert_user_error(result, ["IMPLICITREG_CACHE", "a-file", "not a directory"], out)


@pytest.mark.parametrize("n_train,n_test", [
    pytest.param(205, 100, id="total-not-multiple-of-10"),
    pytest.param(29, 71, id="float-split-truncates"),
])
def test_mnist1d_returns_exactly_the_requested_sizes(data_cache, n_train, n_test):
    data = load_mnist1d(n_train=n_train, n_test=n_test)
    assert (len(data.x_train), len(data.x_test)) == (n_train, n_test)


def test_load_dataset_dispatches_on_the_config_name():
    assert load_dataset(DataConfig(name="digits", n_train=50, n_test=20)).name == "digits"
    synthetic = load_dataset(DataConfig(name="regression", n_train=30, n_test=10, dim=7, noise=0.0, seed=4))
    assert synthetic.name == "regression" and synthetic.x_train.shape == (30, 7)
    np.testing.assert_array_equal(synthetic.x_train, regression(n_train=30, n_test=10, dim=7, seed=4).x_train)


# -- digits -----------------------------------------------------------------------------------------

def test_digits_default_split_covers_every_image_once():
    from sklearn.datasets import load_digits as sk_digits

    data = load_digits()
    assert data.x_train.shape == (1797 - 360, 64) and data.x_test.shape == (360, 64)
    assert data.n_classes == 10 and data.x_train.min() >= 0 and data.x_train.max() <= 1
    # train ∪ test is the full data set, each image exactly once (compare as sorted rows)
    full = sk_digits()
    ours = np.concatenate([np.column_stack([data.x_train * 16, data.y_train]),
                           np.column_stack([data.x_test * 16, data.y_test])])
    theirs = np.column_stack([full.data, full.target])
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])


def test_digits_sizes_and_determinism():
    a = load_digits(n_train=100, n_test=50, seed=3)
    b = load_digits(n_train=100, n_test=50, seed=3)
    c = load_digits(n_train=100, n_test=50, seed=4)
    assert a.x_train.shape == (100, 64) and a.x_test.shape == (50, 64)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    # a smaller train set is a prefix of the larger one with the same seed and test set
    bigger = load_digits(n_train=300, n_test=50, seed=3)
    np.testing.assert_array_equal(bigger.x_train[:100], a.x_train)


def test_digits_too_many_points_names_the_field():
    with pytest.raises(ValueError, match=r"data\.n_train.*1437"):
        load_digits(n_train=1500)


# -- synthetic --------------------------------------------------------------------------------------

def test_regression_without_noise_is_exactly_linear():
    data = regression(n_train=100, n_test=200, dim=20, noise=0.0, seed=1)
    assert data.n_classes == 0 and data.y_train.dtype == np.float64
    x = np.vstack([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    w, *_ = np.linalg.lstsq(x, y, rcond=None)  # 300 equations, 20 unknowns: overdetermined
    # float64 rounding of x·w* is ~1e-16 relative; 1e-10 leaves room for lstsq's conditioning
    assert np.abs(x @ w - y).max() < 1e-10
    # train and test come from the same w*, and w* ~ N(0, I/dim) has norm ≈ 1 (chi_20/sqrt(20))
    w_train, *_ = np.linalg.lstsq(data.x_train, data.y_train, rcond=None)
    np.testing.assert_allclose(w_train, w, atol=1e-10)
    assert 0.4 < np.linalg.norm(w) < 1.8


def test_regression_noise_has_the_requested_scale():
    clean = regression(n_train=2000, n_test=2000, dim=10, noise=0.0, seed=2)
    noisy = regression(n_train=2000, n_test=2000, dim=10, noise=0.5, seed=2)
    np.testing.assert_array_equal(clean.x_train, noisy.x_train)  # noise is drawn after x
    residual = noisy.y_train - clean.y_train
    # residual = 0.5·ε over 2000 draws: sample std within 0.5·(1 ± 0.1), ~6 standard errors
    assert abs(residual.std() - 0.5) < 0.05 and abs(residual.mean()) < 0.05


def test_regression_underdetermined_when_dim_exceeds_n():
    data = regression(n_train=10, n_test=5, dim=50, seed=0)
    assert data.x_train.shape == (10, 50) and np.linalg.matrix_rank(data.x_train) == 10


def max_margin(x: np.ndarray, y01: np.ndarray) -> tuple[float, float]:
    """Train accuracy and geometric margin min_i y_i(w·x_i+b)/|w| of a (near) hard-margin linear SVM."""
    from sklearn.svm import SVC

    svm = SVC(kernel="linear", C=1e8, tol=1e-8).fit(x, y01)
    w, b = svm.coef_[0], svm.intercept_[0]
    signed = 2 * y01 - 1
    return svm.score(x, y01), float(np.min(signed * (x @ w + b)) / np.linalg.norm(w))


def test_separable_is_separable_with_the_requested_margin():
    margin = 0.3
    data = separable(n_train=2000, n_test=100, dim=5, margin=margin, seed=3)
    assert data.n_classes == 2 and set(np.unique(data.y_train)) == {0, 1}
    assert 0.4 < data.y_train.mean() < 0.6  # labels are the sign of a random direction: balanced
    accuracy, found = max_margin(data.x_train, data.y_train)
    assert accuracy == 1.0
    # the generator's w* separates with margin >= 0.3, so the max margin is >= 0.3; the solver's
    # hyperplane is within 1e-3 of optimal. With 2000 points in 5-D the band edge is densely
    # populated, so the max margin is also not much above the requested one (units: unit-norm w*).
    assert margin * (1 - 1e-3) <= found <= margin * 1.05


def test_separable_test_set_is_separable_too_and_noise_flips_only_test_labels():
    clean = separable(n_train=300, n_test=2000, dim=4, margin=0.2, seed=5, noise=0.0)
    noisy = separable(n_train=300, n_test=2000, dim=4, margin=0.2, seed=5, noise=0.25)
    accuracy, found = max_margin(np.vstack([clean.x_train, clean.x_test]),
                                 np.concatenate([clean.y_train, clean.y_test]))
    assert accuracy == 1.0 and found >= 0.2 * (1 - 1e-3)
    np.testing.assert_array_equal(noisy.x_test, clean.x_test)
    np.testing.assert_array_equal(noisy.y_train, clean.y_train)
    flipped = (noisy.y_test != clean.y_test).mean()
    # Binomial(2000, 0.25)/2000 has std 0.0097; 0.05 is ~5 std
    assert abs(flipped - 0.25) < 0.05


def test_teacher_student_labels():
    data = teacher_student(n_train=500, n_test=300, dim=8, seed=0, classes=7)
    assert data.n_classes == 7 and data.y_train.dtype == np.int64
    for y in (data.y_train, data.y_test):
        assert y.min() >= 0 and y.max() < 7
    assert len(np.unique(data.y_train)) >= 3  # a random teacher uses several classes
    again = teacher_student(n_train=500, n_test=300, dim=8, seed=0, classes=7)
    np.testing.assert_array_equal(again.y_train, data.y_train)


def test_teacher_student_noise_corrupts_train_labels_only():
    clean = teacher_student(n_train=4000, n_test=500, dim=8, seed=1, noise=0.0)
    noisy = teacher_student(n_train=4000, n_test=500, dim=8, seed=1, noise=0.5)
    np.testing.assert_array_equal(noisy.x_train, clean.x_train)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    changed = (noisy.y_train != clean.y_train).mean()
    # each label is replaced w.p. 0.5 by a uniform class (same w.p. 1/10): expected 0.45,
    # Binomial std over 4000 labels is 0.0079; 0.04 is ~5 std
    assert abs(changed - 0.45) < 0.04


# -- label noise ------------------------------------------------------------------------------------

def labels(n=10_000, k=10, seed=0):
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))


def test_corrupt_labels_fraction_zero_is_unchanged_copy():
    y = labels()
    out = corrupt_labels(y, 0.0, 10, torch.Generator().manual_seed(1))
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 1.0])
def test_corrupt_labels_changes_the_expected_fraction(fraction):
    n, k = 10_000, 10
    y = labels(n, k)
    before = y.clone()
    out = corrupt_labels(y, fraction, k, torch.Generator().manual_seed(7))
    assert torch.equal(y, before)  # the input is not modified
    assert out.dtype == torch.int64 and out.min() >= 0 and out.max() < k
    changed = int((out != y).sum())
    chosen = round(fraction * n)
    # exactly `chosen` labels are redrawn uniformly; each differs from the old label w.p. 1-1/k,
    # so changed ~ Binomial(chosen, 0.9); allow 5 standard deviations
    mean, std = chosen * (1 - 1 / k), math.sqrt(chosen * (1 - 1 / k) / k)
    assert changed <= chosen
    assert abs(changed - mean) <= 5 * std, (changed, mean, std)


def test_corrupt_labels_is_fixed_by_the_generator_seed():
    y = labels()
    a = corrupt_labels(y, 0.3, 10, torch.Generator().manual_seed(11))
    b = corrupt_labels(y, 0.3, 10, torch.Generator().manual_seed(11))
    c = corrupt_labels(y, 0.3, 10, torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_corrupt_labels_rejects_fractions_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        corrupt_labels(labels(100), fraction, 10, torch.Generator().manual_seed(0))


# -- random streams: batch order and dropout masks -------------------------------------------------------

@pytest.mark.parametrize("n,batch", [(12, 4), (10, 3), (7, 7), (100, 1)])
def test_batch_orders_each_epoch_is_a_permutation_without_partial_batches(n, batch):
    orders = BatchOrders([5, 6], n=n, batch_size=batch)
    per_epoch = n // batch
    epochs = []
    for epoch in range(3):
        batches = [orders.batch(epoch * per_epoch + i) for i in range(per_epoch)]
        assert all(b.shape == (2, batch) and b.dtype == torch.int64 for b in batches)
        for member in range(2):
            seen = torch.cat([b[member] for b in batches])
            assert len(set(seen.tolist())) == len(seen) == per_epoch * batch  # no index twice in an epoch
            assert seen.min() >= 0 and seen.max() < n
            if per_epoch * batch == n:
                assert sorted(seen.tolist()) == list(range(n))  # every index exactly once
        epochs.append(torch.cat(batches, 1))
    if n > batch:
        assert not torch.equal(epochs[0], epochs[1])  # a fresh permutation each epoch
        assert not torch.equal(epochs[0][0], epochs[0][1])  # members have their own orders


def test_batch_orders_depend_on_the_member_and_step_alone():
    """A member's batches are the same alone, in any population, in any order of calls, after others leave."""
    alone = BatchOrders([3], 50, 8)
    steps = [0, 1, 7, 6, 30, 2]  # out of order, across epochs (6 batches per epoch)
    expected = {s: alone.batch(s)[0].clone() for s in range(31)}
    crowd = BatchOrders([9, 3, 4], 50, 8)
    for s in steps:
        assert torch.equal(crowd.batch(s)[1], expected[s])
    crowd.select(torch.tensor([1]))
    assert torch.equal(crowd.batch(30)[0], expected[30]) and torch.equal(crowd.batch(12)[0], expected[12])
    assert not torch.equal(BatchOrders([4], 50, 8).batch(0)[0], expected[0])


def test_batch_orders_full_batch_is_everything_in_order():
    orders = BatchOrders([0, 1], 9, 64)
    assert orders.full_batch
    for step in range(3):
        assert torch.equal(orders.batch(step), torch.arange(9).expand(2, 9))


def test_batch_orders_are_uniform_permutations():
    """All 6 orders of 3 items, over 6,000 member-epochs: chi-square against uniform (5 dof)."""
    orders = BatchOrders(range(6000), 3, 3 - 1)  # batch 2 of 3: the epoch's order shows in its first two
    first = orders.batch(0)
    counts = torch.bincount(first[:, 0] * 3 + first[:, 1], minlength=9).double()
    counts = counts[[1, 2, 3, 5, 6, 7]]  # the six ordered pairs of distinct items
    chi2 = float(((counts - 1000) ** 2 / 1000).sum())
    assert chi2 < 20.5  # the 0.999 quantile of chi-square with 5 dof


def test_dropout_masks_are_inverted_dropout_with_each_members_rate():
    rates = [0.3, 0.0, 0.6]
    masks = DropoutMasks([1, 2, 3], rates, hidden_shapes=[(500,), (4, 25)]).masks(0, batch=200, dtype=torch.float64)
    assert [m.shape for m in masks] == [(3, 200, 500), (3, 200, 4, 25)]
    for mask in masks:
        assert mask.dtype == torch.float64
        for member, rate in enumerate(rates):
            values = set(mask[member].unique().tolist())
            assert values == ({0.0, 1 / (1 - rate)} if rate else {1.0})
            # N = 100000 or 20000 Bernoulli draws: zero-fraction std <= 0.0035, mask-mean std
            # <= 0.0087 (rate 0.6); 0.04 is > 4.5 std for the smaller mask
            assert abs((mask[member] == 0).double().mean().item() - rate) < 0.02
            assert abs(mask[member].mean().item() - 1.0) < 0.04


def test_dropout_masks_depend_on_the_member_step_and_layer_alone():
    a = DropoutMasks([2], [0.5], [(10,), (10,)])
    crowd = DropoutMasks([7, 2], [0.1, 0.5], [(10,), (10,)])
    for step in (0, 5, 3):
        ma, mc = a.masks(step, 16, torch.float64), crowd.masks(step, 16, torch.float64)
        assert torch.equal(ma[0][0], mc[0][1]) and torch.equal(ma[1][0], mc[1][1])
    assert not torch.equal(ma[0], ma[1])  # layers differ
    assert not torch.equal(a.masks(0, 16, torch.float64)[0], a.masks(1, 16, torch.float64)[0])  # steps differ
    assert not torch.equal(DropoutMasks([3], [0.5], [(10,)]).masks(0, 16, torch.float64)[0], ma[0])
    assert DropoutMasks([2, 3], [0.0, 0.0], [(10,)]).masks(0, 16, torch.float64) is None
