"""The SD recipe end to end on the mini diarization corpus and a tiny random encoder.

The budget is tiny (tens of updates of a 32-unit LSTM), so the DERs sit near their
untrained values; the tests check what the run must hold whatever the scores: the
reported DER is the one of the RTTM it wrote, the decision was chosen on dev, and a
killed run resumes to the uninterrupted result.
"""

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recipe_runs import (
    assert_only_whole_checkpoints,
    REPO,
    assert_same_training,
    kill_during_second_checkpoint,
    printed,
    results_of,
    round_lines,
)
from test_user_errors import assert_one_line_error

from rewire_lobes.data.diarization import recording_frames
from rewire_lobes.metrics.diarization import diarization_error, read_rttm

BUDGET = ["--max_steps", "40", "--eval_every_steps", "20", "--rnn_dim", "32"]


def sd_command(encoder, output_root, shared, *extra, budget=BUDGET):
    return [
        sys.executable, "recipes/SD/train.py", "hparams/sd.yaml",
        "--upstream_source", str(encoder), "--output_root", str(output_root),
        "--frame_cache_folder", str(Path(shared) / "frame_cache"),
        "--manifest_root", str(Path(shared) / "manifests"),
        "--noprogressbar", *budget, *map(str, extra),
    ]


def run_sd(encoder, output_root, shared, *extra, ok=True, budget=BUDGET):
    done = subprocess.run(sd_command(encoder, output_root, shared, *extra, budget=budget), cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def sd_folder(output_root):
    (identity,) = Path(output_root).glob("SD/*/*/*/run_identity.json")
    return identity.parent


def manifest_file(shared, name):
    (path,) = (Path(shared) / "manifests").glob(f"*/{name}")
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("sd_shared")


@pytest.fixture(scope="module")
def sd_run(tiny_encoder, mini_corpus, shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    run_sd(tiny_encoder(), root, shared, "--fraction", "0.1")
    return sd_folder(root)


@pytest.mark.slow
def test_sd_smoke_reports_the_der_of_the_rttm_it_wrote(sd_run, shared):
    folder, results = sd_run, results_of(sd_run)
    assert results["task"] == "SD" and results["metric"] == "der" and results["unit"] == "%"
    assert results["dev_metric"] == "frame_der" and results["direction"] == "min"
    assert results["steps"] == 40 and [s for s, _ in results["dev_curve"]] == [20, 40]
    assert dict(results["dev_curve"])[results["best_step"]] == results["best_dev"]
    assert results["dev_rescored_matches_best"] is True
    # 10 % of the 32 training mixtures, whole recordings: ceil(3.2) = 4.
    assert results["train_recordings"] == 4 and results["frame_shift"] == 320

    # test DER = the DER of test_hyp.rttm against the reference, recomputed here.
    reference, _ = read_rttm(manifest_file(shared, "test.rttm"))
    hypothesis, _ = read_rttm(folder / "test_hyp.rttm")
    assert set(hypothesis) <= set(reference)
    recomputed = diarization_error(reference, hypothesis)
    assert results["test"] == pytest.approx(100 * recomputed["der"], abs=1e-6)
    assert results["test"] == results["test_scores"]["der"]

    # The decision is the dev grid's best, and it was applied to test.
    decision, grids = results["decision"], results["der_grid"]
    assert decision["chosen_on"] == "dev" and len(grids["dev"]) == len(grids["test"]) == 10
    assert decision["dev_der"] == min(entry["der"] for entry in grids["dev"])
    at_chosen = [entry["der"] for entry in grids["test"]
                 if (entry["threshold"], entry["median_width"])
                 == (decision["threshold"], decision["median_width"])]
    assert at_chosen == [results["test"]]
    # s3prl's figure, picked on test itself, can only be lower or equal.
    optimistic = results["test_scores"]["der_s3prl_protocol"]
    assert optimistic == min(entry["der"] for entry in grids["test"]) <= results["test"]

    # One posterior row per label frame of every dev recording.
    with open(manifest_file(shared, "dev.csv"), newline="") as fin:
        dev_rows = list(csv.DictReader(fin))
    posteriors = np.load(folder / "dev_posteriors.npz")
    assert sorted(posteriors.files) == sorted(row["ID"] for row in dev_rows)
    for row in dev_rows:
        assert posteriors[row["ID"]].shape == (recording_frames(row["duration"], 320), 2)
    assert set(read_rttm(folder / "dev_hyp.rttm")[0]) <= {row["ID"] for row in dev_rows}


@pytest.mark.slow
def test_a_dev_recording_without_reference_turns_is_scored(tiny_encoder, mini_corpus,
                                                           tmp_path):
    """Its detections count as false alarms; it must not stop the run at scoring."""
    import shutil

    data = tmp_path / "diarization"
    shutil.copytree(Path(mini_corpus) / "diarization", data, ignore=shutil.ignore_patterns("wav"))
    silent = (data / "dev" / "wav.scp").read_text().split()[0]
    rttm = data / "dev" / "rttm"
    rttm.write_text("".join(line + "\n" for line in rttm.read_text().splitlines()
                            if line.split()[1] != silent))
    done = run_sd(tiny_encoder(), tmp_path / "out", tmp_path / "shared",
                  "--data_folder", data,
                  budget=["--max_steps", "1", "--eval_every_steps", "1", "--rnn_dim", "32"])
    assert "have no turn" in printed(done)
    results = results_of(sd_folder(tmp_path / "out"))
    assert results["dev_recordings"] == 10 and results["test"] >= 0


@pytest.mark.slow
def test_sd_run_folder_refuses_other_settings(sd_run, tiny_encoder, shared):
    root = sd_run.parents[3]
    done = run_sd(tiny_encoder(), root, shared, "--fraction", "0.1", "--lr", "0.5", ok=False)
    assert_one_line_error(done, "lr")


@pytest.mark.slow
def test_sd_killed_run_resumes_to_the_uninterrupted_result(sd_run, tiny_encoder, shared,
                                                           tmp_path):
    reference = sd_run
    root = tmp_path / "killed"
    command = sd_command(tiny_encoder(), root, shared, "--fraction", "0.1")
    folder = root / reference.relative_to(reference.parents[3])
    status = kill_during_second_checkpoint(command, folder / "save", tmp_path / "killed.log")
    assert status == -signal.SIGKILL, "the run ended before it could be killed"
    assert_only_whole_checkpoints(folder, reference)
    assert not (folder / "results.json").exists()

    done = run_sd(tiny_encoder(), root, shared, "--fraction", "0.1")
    assert "resuming at update 20" in printed(done) or "resuming at update 40" in printed(done)
    expected, got = results_of(reference), results_of(folder)
    for key in ("dev_curve", "dev_scores", "best_step", "test_scores", "decision", "der_grid"):
        assert got[key] == expected[key], key
    assert list(dict.fromkeys(round_lines(folder))) == round_lines(reference)
    assert_same_training(folder, reference)
    assert (folder / "test_hyp.rttm").read_text() == (reference / "test_hyp.rttm").read_text()
