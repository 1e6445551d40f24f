"""The isotropy score (Mu & Viswanath 2018) and its command-line tool."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rewire_lobes.errors import UserError
from rewire_lobes.metrics.isotropy import log10_isotropy, log_isotropy

REPO = Path(__file__).resolve().parent.parent


def test_hand_computed_case():
    # V^T V = [[6, 4], [4, 6]]: eigenvectors u = (1, 1)/√2 and w = (1, -1)/√2.
    vectors = np.array([[1.0, 1.0], [1.0, -1.0], [2.0, 2.0]])
    r = math.sqrt(2.0)
    z = {
        "u": math.exp(r) + math.exp(0.0) + math.exp(2 * r),   # projections √2, 0, 2√2
        "-u": math.exp(-r) + math.exp(0.0) + math.exp(-2 * r),
        "w": math.exp(0.0) + math.exp(r) + math.exp(0.0),     # projections 0, √2, 0
        "-w": math.exp(0.0) + math.exp(-r) + math.exp(0.0),
    }
    expected = min(z.values()) / max(z.values())
    assert log_isotropy(vectors) == pytest.approx(math.log(expected), rel=1e-12)
    assert log10_isotropy(vectors) == pytest.approx(math.log10(expected), rel=1e-12)


def test_torch_input_matches_numpy():
    vectors = np.random.default_rng(3).normal(size=(50, 4)) + 0.5
    assert log_isotropy(torch.from_numpy(vectors).float()) == pytest.approx(
        log_isotropy(vectors.astype(np.float32)), rel=1e-9)


@pytest.fixture(scope="module")
def gaussian():
    return np.random.default_rng(1986).standard_normal((20000, 8))


def test_isotropic_gaussian_scores_near_one(gaussian):
    assert log10_isotropy(gaussian) > -0.1
    # One axis twice as wide is already clearly anisotropic: the bound above can fail.
    stretched = gaussian * np.array([2.0] + [1.0] * 7)
    assert log10_isotropy(stretched) < -0.3


def test_shift_from_the_origin_lowers_the_score(gaussian):
    shifted = gaussian + np.array([50.0] + [0.0] * 7)
    # Z(±e1) ≈ N exp(±50 + 1/2): the ratio is exp(-100).
    assert log10_isotropy(shifted) == pytest.approx(-100 / math.log(10), abs=0.5)
    assert log10_isotropy(gaussian) - log10_isotropy(shifted) > 40


def test_scores_beyond_float64_stay_finite():
    vectors = 1000.0 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    with np.errstate(over="ignore"):
        assert np.isinf(np.exp(vectors).sum(axis=0)).all()  # the plain formula overflows
    # V^T V = diag(2e6, 1e6): Z(-e2) = 2 + exp(-1000) is the least, Z(e2) = 2 + exp(1000)
    # the most (Z(±e1) = exp(1000) + 1 + exp(-1000)).
    assert log_isotropy(vectors) == pytest.approx(math.log(2.0) - 1000.0, rel=1e-12)


def test_both_signs_of_each_eigenvector_count():
    vectors = np.random.default_rng(0).normal(size=(200, 3)) + np.array([3.0, 0.0, -1.0])
    assert log_isotropy(-vectors) == pytest.approx(log_isotropy(vectors), rel=1e-12)
    assert log_isotropy(vectors) < -1


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 3)), "at least 2 rows"),
    (np.zeros(5), "expected an \\[N, D\\] matrix"),
    (np.zeros((2, 2, 2)), "expected an \\[N, D\\] matrix"),
    (np.array([[0.0, 1.0], [np.nan, 1.0]]), "non-finite"),
    (np.array([[0.0, np.inf], [1.0, 1.0]]), "non-finite"),
])
def test_refuses_what_it_cannot_score(bad, message):
    with pytest.raises(ValueError, match=message) as caught:
        log_isotropy(bad)
    assert isinstance(caught.value, UserError)


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "utils" / "isotropy.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_command_line_prints_log10_score(tmp_path):
    vectors = np.random.default_rng(5).normal(size=(100, 6)) + 2.0
    np.save(tmp_path / "v.npy", vectors)
    done = run_tool("--npy", str(tmp_path / "v.npy"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    assert float(lines[0]) == pytest.approx(log10_isotropy(vectors), abs=1e-6)


def test_command_line_refuses_a_missing_file(tmp_path):
    done = run_tool("--npy", str(tmp_path / "none.npy"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "none.npy" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("isotropy_tool", REPO / "utils" / "isotropy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, write", [
    ("junk.npy", lambda path: path.write_text("not numpy")),
    ("flat.npy", lambda path: np.save(path, np.zeros(7))),
    ("one_row.npy", lambda path: np.save(path, np.zeros((1, 4)))),
    ("text.npy", lambda path: np.save(path, np.array([["a", "b"], ["c", "d"]]))),
])
def test_command_line_refuses_unusable_files(tmp_path, capsys, name, write):
    write(tmp_path / name)
    with pytest.raises(SystemExit) as caught:
        load_tool().main(["--npy", str(tmp_path / name)])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and name in err and len(err.strip().splitlines()) == 1
