"""`--data FILE.npz` is untrusted: members that are not numpy arrays, pickles, zip bombs, headers that
claim more than the file holds, and problems too large to solve are refused with one line, before
any array is allocated."""

import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, invoke_cli
from implicitreg.data import npz

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def no_array_read(monkeypatch):
    """Refusals must come from the zip directory and the .npy headers: reading an array is an error."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an array was read although the file should have been refused first")
    monkeypatch.setattr(np.lib.format, "read_array", forbidden)


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return path


def header_only(shape, dtype="<f8") -> bytes:
    """An .npy header claiming ``shape`` followed by no data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def refused(path, message_parts):
    with pytest.raises(ValueError) as err:
        npz.read_regression(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    for part in message_parts:
        assert part in message, (part, message)


def test_a_member_that_is_not_npy_is_refused(tmp_path):
    path = write_zip(tmp_path / "text.npz", {"X.txt": b"1 2\n3 4\n", "y.npy": npy_bytes(np.zeros(2))})
    refused(path, ["member X.txt is not a .npy array"])


def test_garbage_npy_member_is_refused(tmp_path, no_array_read):
    path = write_zip(tmp_path / "garbage.npz", {"X.npy": b"\x93NUMPY garbage" * 20, "y.npy": npy_bytes(np.zeros(2))})
    refused(path, ["array X is not a readable .npy array"])


def test_pickled_object_array_is_refused_without_unpickling(tmp_path, no_array_read):
    marker = tmp_path / "ran"

    class RunsACommand:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    objects = np.array([RunsACommand(), 1], dtype=object)
    path = write_zip(tmp_path / "objects.npz", {"X.npy": npy_bytes(objects), "y.npy": npy_bytes(np.zeros(2))})
    refused(path, ["array X must be numeric", "object"])
    assert not marker.exists()


def test_header_claiming_80_gb_is_refused_before_allocating(tmp_path, no_array_read):
    path = write_zip(tmp_path / "huge.npz", {"X.npy": header_only((10**5, 10**5)), "y.npy": npy_bytes(np.zeros(10**5))})
    refused(path, ["array X claims shape (100000, 100000)", "74.5 GiB", "2 GiB limit"])


def test_header_claiming_more_than_the_member_holds_is_refused(tmp_path, no_array_read):
    path = write_zip(tmp_path / "short.npz", {"X.npy": header_only((10, 3)) + bytes(8), "y.npy": npy_bytes(np.zeros(10))})
    refused(path, ["array X claims shape (10, 3)", "240 bytes", "holds 8 bytes", "truncated"])


def test_zip_bomb_is_refused_from_the_zip_directory(tmp_path, monkeypatch, no_array_read):
    """A small file whose arrays inflate beyond the limit (the limit lowered so the test stays small;
    the real one is 2 GiB)."""
    monkeypatch.setattr(npz, "MAX_NPZ_BYTES", 1 << 20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, X=np.zeros((1024, 1024)), y=np.zeros(1024))  # 8 MiB of zeros
    assert path.stat().st_size < 50_000
    refused(path, ["array X claims shape (1024, 1024)", "limit on a --data file"])
    # members each under the limit, together over it
    np.savez_compressed(path, X=np.zeros((512, 200)), y=np.zeros(512))
    monkeypatch.setattr(npz, "MAX_NPZ_BYTES", 512 * 200 * 8 + 100)
    refused(path, ["the arrays inflate to", "limit on a --data file"])


def test_a_ten_million_wide_problem_is_refused_with_the_memory_it_needs(tmp_path, no_array_read):
    """X of 30×10⁷ is 300 MB as uint8 and passes the file limits, but min-norm's reference forms a d×d
    matrix: ~728 TiB."""
    path = tmp_path / "wide.npz"
    np.savez_compressed(path, X=np.zeros((30, 10**7), dtype=np.uint8), y=np.zeros(30))
    out = tmp_path / "out"
    result = invoke_cli(["run", "min-norm", "--quick", "--data", path, "--out", out])
    assert_user_error(result, ["wide.npz", "X of shape (30, 10000000)", "too large to solve", "needs about 728 TiB",
                               "half of this machine's memory"], out)


def test_matrix_completion_is_bounded_by_its_solve_too(tmp_path, monkeypatch, no_array_read):
    monkeypatch.setattr(npz, "solve_memory_limit", lambda: 1 << 20)
    path = tmp_path / "matrix.npz"
    np.savez(path, observed=np.zeros((100, 100)), mask=np.zeros((100, 100), bool))
    with pytest.raises(ValueError, match=r"observed of shape \(100, 100\) is too large to solve exactly: it needs "
                                         r"about 1\.53 MiB of memory, more than the limit of 1 MiB"):
        npz.read_matrix_completion(path)


def test_a_valid_file_still_reads_exactly(tmp_path):
    x, y = np.arange(12.0).reshape(4, 3), np.array([1, 0, 1, 0])
    np.savez_compressed(tmp_path / "ok.npz", X=x, y=y)
    got_x, got_y = npz.read_classification(tmp_path / "ok.npz")
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, [1.0, -1.0, 1.0, -1.0])


def test_every_np_load_in_the_package_refuses_pickles():
    calls = [(path, line) for path in SRC.rglob("*.py") for line in path.read_text(encoding="utf-8").splitlines()
             if re.search(r"\bnp\.load\(", line)]
    assert calls, "the scan found no np.load call: has the source moved?"
    assert all("allow_pickle=False" in line for _, line in calls), [c for c in calls if "allow_pickle=False" not in c[1]]
