"""SUPERB QbE: QUESST 2014 preparation, per-layer matching, and the recipe end to end.

Preparation runs in process on copies of the mini QUESST 2014 (the real layout) with
one thing broken each time. Matching is checked against s3prl's steps done pair by pair
(numpy statistics, scipy's cdist, dtw-python). The recipe runs as a user starts it (a
subprocess, the embedded encoder, only ``--output_root`` given) and is checked for its
outputs, a kill and resume, and its bad-query rules.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from dtw import dtw
from scipy.spatial.distance import cdist

from recipe_runs import REPO, printed, results_of
from test_user_errors import assert_one_line_error

from rewire_lobes.data.manifests import read_manifest
from rewire_lobes.data.quesst14 import read_groundtruth
from rewire_lobes.downstream.frame_cache import FrameFeatures
from rewire_lobes.downstream.qbe import (
    SKIP_LONG,
    SKIP_SHORT,
    FeatureStats,
    InMemoryFrames,
    LayerFrames,
    MatchSettings,
    match_split,
    normalise_scores,
)
from rewire_lobes.downstream.results import results_record
from rewire_lobes.errors import DataFileError, DataFolderError
from rewire_lobes.metrics.mtwv import read_stdlist, term_weighted_value

sys.path.insert(0, str(REPO / "recipes" / "QbE"))
from quesst14_prepare import prepare_quesst14  # noqa: E402

DATABASE = "quesst14Database"
SPLITS = ("dev", "eval")


# ---------------------------------------------------------------------- preparation
@pytest.fixture(scope="module")
def mini_quesst(mini_corpus):
    return Path(mini_corpus) / DATABASE


@pytest.fixture
def quesst_copy(mini_quesst, tmp_path):
    """A private copy of the mini QUESST 2014, to break."""
    return Path(shutil.copytree(mini_quesst, tmp_path / DATABASE))


def key_lines(root, name):
    return [line.split() for line in (root / "scoring" / name).read_text().splitlines() if line]


def test_prepare_keeps_english_and_every_groundtruth_trial(mini_quesst, tmp_path):
    folder = prepare_quesst14(mini_quesst, tmp_path / "manifests")
    keys = {"documents": "language_key_utterances.lst", "dev": "language_key_dev.lst",
            "eval": "language_key_eval.lst"}
    for name, key in keys.items():
        lines = key_lines(mini_quesst, key)
        english = [Path(path).stem for path, language in lines if language == "nnenglish"]
        assert any(language != "nnenglish" for _, language in lines)  # something to drop
        rows = read_manifest(folder / f"{name}.csv")
        assert [row["ID"] for row in rows] == english
        for row in rows:
            assert Path(row["wav"]).is_file() and Path(row["wav"]).stem == row["ID"]
            info = soundfile.info(row["wav"])
            assert float(row["duration"]) == pytest.approx(info.frames / info.samplerate, abs=1e-4)
    groundtruth = json.loads((folder / "groundtruth.json").read_text())
    for split in SPLITS:
        # The trial lists are the scorer's: every language, as the ground-truth files have.
        assert groundtruth[split]["queries"] == [
            Path(path).stem for path, _ in key_lines(mini_quesst, keys[split])]
        documents = key_lines(mini_quesst, keys["documents"])
        assert len(groundtruth[split]["documents"]) == len(documents)
    # Made once: a second call finds the manifests up to date and writes nothing.
    stamp = (folder / "dev.csv").stat().st_mtime_ns
    assert prepare_quesst14(mini_quesst, tmp_path / "manifests") == folder
    assert (folder / "dev.csv").stat().st_mtime_ns == stamp


def test_groundtruth_reads_rttm_occurrences(mini_quesst):
    folder = mini_quesst / "scoring" / "groundtruth_quesst14_dev"
    truth = read_groundtruth(folder)
    expected = {}
    for line in next(folder.glob("*.rttm")).read_text().splitlines():
        fields = line.split()
        if fields[5] != "NO_KEYWORD":
            expected.setdefault(fields[5], set()).add(fields[1])
    assert {q: set(d) for q, d in truth.occurrences.items()} == expected
    assert set(truth.occurrences) < set(truth.queries)  # some queries occur nowhere
    assert truth.unlisted == 0


def write_wav(path, seconds, rate=8000, channels=1):
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, (int(seconds * rate), channels))
    soundfile.write(str(path), samples if channels > 1 else samples[:, 0], rate)


def english_document(root):
    path = next(p for p, lang in key_lines(root, "language_key_utterances.lst")
                if lang == "nnenglish")
    return root / path.split("/", 1)[1]


@pytest.mark.parametrize("rate, channels, message", [
    (48000, 1, "48000 Hz, 1 channel;"),
    (8000, 2, "8000 Hz, 2 channels;"),
])
def test_prepare_refuses_audio_of_another_corpus(quesst_copy, tmp_path, rate, channels, message):
    wav = english_document(quesst_copy)
    write_wav(wav, 1.0, rate, channels)
    with pytest.raises(DataFileError, match=message) as err:
        prepare_quesst14(quesst_copy, tmp_path / "manifests")
    assert str(wav) in str(err.value)


def test_prepare_reads_16k_mono(quesst_copy, tmp_path):
    wav = english_document(quesst_copy)
    write_wav(wav, 1.5, 16000, 1)
    folder = prepare_quesst14(quesst_copy, tmp_path / "manifests")
    row = next(r for r in read_manifest(folder / "documents.csv") if r["ID"] == wav.stem)
    assert float(row["duration"]) == pytest.approx(1.5)


def test_prepare_refuses_empty_and_missing_audio(quesst_copy, tmp_path):
    wav = english_document(quesst_copy)
    soundfile.write(str(wav), np.zeros(0), 8000)
    with pytest.raises(DataFileError, match="no samples") as err:
        prepare_quesst14(quesst_copy, tmp_path / "a")
    assert str(wav) in str(err.value)
    wav.unlink()
    with pytest.raises(DataFileError, match="does not exist") as err:
        prepare_quesst14(quesst_copy, tmp_path / "b")
    assert "language_key_utterances.lst:" in str(err.value)


def test_prepare_refuses_bad_key_lines(quesst_copy, tmp_path):
    key = quesst_copy / "scoring" / "language_key_dev.lst"
    lines = key.read_text().splitlines()
    key.write_text("\n".join(lines[:2] + ["dev_queries_without_language.wav"] + lines[2:]) + "\n")
    with pytest.raises(DataFileError, match=r"language_key_dev.lst:3: expected"):
        prepare_quesst14(quesst_copy, tmp_path / "a")
    key.write_text("\n".join(lines + [lines[0]]) + "\n")
    with pytest.raises(DataFileError, match="listed twice"):
        prepare_quesst14(quesst_copy, tmp_path / "b")
    key.write_text("\n".join(line.replace("nnenglish", "english") for line in lines) + "\n")
    with pytest.raises(DataFileError, match="no line is tagged 'nnenglish'"):
        prepare_quesst14(quesst_copy, tmp_path / "c")


def test_prepare_refuses_items_the_groundtruth_lacks(quesst_copy, tmp_path):
    ecf = next((quesst_copy / "scoring" / "groundtruth_quesst14_eval").glob("*.ecf.xml"))
    doc = english_document(quesst_copy).stem
    ecf.write_text("\n".join(line for line in ecf.read_text().splitlines()
                             if f'"{doc}"' not in line) + "\n")
    with pytest.raises(DataFileError, match=f"lacks 1 documents item.*{doc}") as err:
        prepare_quesst14(quesst_copy, tmp_path / "manifests")
    assert str(ecf) in str(err.value)


def test_prepare_names_a_missing_or_doubled_groundtruth_file(quesst_copy, tmp_path):
    folder = quesst_copy / "scoring" / "groundtruth_quesst14_dev"
    rttm = next(folder.glob("*.rttm"))
    shutil.copy(rttm, folder / "copy.rttm")
    with pytest.raises(DataFolderError, match=r"2 \(copy.rttm, quesst14_dev.rttm\) \*.rttm"):
        prepare_quesst14(quesst_copy, tmp_path / "a")
    (folder / "copy.rttm").unlink()
    rttm.unlink()
    with pytest.raises(DataFolderError, match=r"no \*.rttm file"):
        prepare_quesst14(quesst_copy, tmp_path / "b")


def test_prepare_hints_at_the_database_folder(quesst_copy, tmp_path):
    with pytest.raises(DataFolderError, match=f"{quesst_copy}.*looks like one: pass that folder"):
        prepare_quesst14(quesst_copy.parent, tmp_path / "manifests")
    assert not (quesst_copy.parent / "Audio").exists()  # a user's folder is never written to


# ---------------------------------------------------------------------- matching
def random_items(rng, prefix, lengths, layers=2, dim=6):
    return {f"{prefix}{i}": rng.standard_normal((n, layers, dim)) for i, n in enumerate(lengths)}


def s3prl_scores(queries, documents, layer, min_frames=5, feature_normalization=True):
    """s3prl's steps for one layer and split, pair by pair, in float64."""
    frames = [v[:, layer] for v in list(queries.values()) + list(documents.values())]
    stacked = np.concatenate(frames)
    mean, std = stacked.mean(axis=0), np.maximum(stacked.std(axis=0, ddof=1), 1e-9)
    if not feature_normalization:
        mean, std = 0.0, 1.0
    raw = np.zeros((len(queries), len(documents)))
    for i, query in enumerate(queries.values()):
        if len(query) < min_frames:
            continue
        for j, doc in enumerate(documents.values()):
            dist = np.exp(cdist((query[:, layer] - mean) / std, (doc[:, layer] - mean) / std,
                                "cosine")) - 1
            low, high = dist.min(axis=1, keepdims=True), dist.max(axis=1, keepdims=True)
            dist = (dist - low) / np.maximum(high - low, 1e-9)
            raw[i, j] = -dtw(x=dist, step_pattern="asymmetric", open_begin=True, open_end=True,
                             distance_only=False, keep_internals=False).normalizedDistance
    std = np.maximum(raw.std(axis=1, keepdims=True), 1e-9)
    return (raw - raw.mean(axis=1, keepdims=True)) / std


def test_match_split_follows_s3prl_pair_by_pair():
    rng = np.random.default_rng(0)
    queries = random_items(rng, "q", [7, 3, 12, 9])  # q1 is under 5 frames
    documents = random_items(rng, "d", [30, 14, 41, 8, 25])
    for layer in (0, 1):
        match = match_split(InMemoryFrames(queries), list(queries), InMemoryFrames(documents),
                            list(documents), layer, MatchSettings())
        np.testing.assert_allclose(match.scores, s3prl_scores(queries, documents, layer),
                                   rtol=1e-4, atol=1e-4)
        assert match.skipped == {SKIP_SHORT: ["q1"], SKIP_LONG: []}
        assert (match.scores[1] == 0).all()
    raw = match_split(InMemoryFrames(queries), list(queries), InMemoryFrames(documents),
                      list(documents), 1, MatchSettings(feature_normalization=False))
    np.testing.assert_allclose(raw.scores, s3prl_scores(queries, documents, 1,
                                                        feature_normalization=False),
                               rtol=1e-4, atol=1e-4)
    assert not np.allclose(raw.scores, match.scores, atol=1e-3)


def test_match_split_work_sizes_do_not_change_the_scores():
    rng = np.random.default_rng(1)
    queries = random_items(rng, "q", [6, 11, 8])
    documents = random_items(rng, "d", [20, 9, 33, 15, 27, 12, 40])
    args = (InMemoryFrames(queries), list(queries), InMemoryFrames(documents), list(documents), 1)
    whole = match_split(*args, MatchSettings())
    small = match_split(*args, MatchSettings(batch_elements=1, max_document_frames=30))
    np.testing.assert_allclose(small.scores, whole.scores, rtol=1e-5, atol=1e-6)
    # Documents given precomputed statistics: the same normalisation.
    stats = FeatureStats()
    for doc in documents.values():
        stats.add(doc[:, 1])
    shared = match_split(*args, MatchSettings(), document_stats=stats)
    np.testing.assert_allclose(shared.scores, whole.scores, rtol=1e-6, atol=1e-6)


def test_query_longer_than_every_document_is_not_matched():
    rng = np.random.default_rng(2)
    queries = random_items(rng, "q", [6, 50])
    documents = random_items(rng, "d", [20, 30])
    match = match_split(InMemoryFrames(queries), list(queries), InMemoryFrames(documents),
                        list(documents), 0, MatchSettings())
    assert match.skipped == {SKIP_SHORT: [], SKIP_LONG: ["q1"]}
    assert (match.scores[1] == 0).all() and (match.scores[0] != 0).all()


def test_feature_stats_equal_torch_over_all_frames():
    rng = np.random.default_rng(3)
    parts = [torch.from_numpy(rng.normal(100.0, 0.01, (n, 4))) for n in (1, 7, 30, 2)]
    stats = FeatureStats()
    for part in parts:
        stats.add(part)
    stats.add(torch.zeros(0, 4))
    everything = torch.cat(parts)
    torch.testing.assert_close(stats.mean, everything.mean(dim=0), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.std(), everything.std(dim=0), rtol=1e-9, atol=0)
    constant = FeatureStats().add(torch.ones(5, 2))
    assert (constant.std() == 1e-9).all()


def test_normalise_scores_uses_the_population_std():
    scores = np.array([[1.0, 2.0, 6.0], [4.0, 4.0, 4.0]])
    z = normalise_scores(scores)
    np.testing.assert_allclose(z[0], (scores[0] - 3.0) / np.sqrt(14 / 3))
    assert (z[1] == 0).all()


def test_layer_frames_read_one_state_of_a_frame_cache(tmp_path):
    rng = np.random.default_rng(4)
    blocks = {"a": rng.standard_normal((5, 3, 4)), "b": rng.standard_normal((2, 3, 4)),
              "c": np.zeros((0, 3, 4))}
    data = np.concatenate(list(blocks.values())).astype(np.float16)
    data.tofile(tmp_path / "frames-test.bin")
    lengths = [len(b) for b in blocks.values()]
    index = {"dtype": "float16", "num_states": 3, "hidden_size": 4,
             "data_file": "frames-test.bin", "ids": list(blocks),
             "offsets": [0, 5, 7], "num_frames": lengths, "sources": ["", "", ""]}
    features = FrameFeatures(tmp_path, index)
    frames = LayerFrames(features)
    for item, length in zip(blocks, lengths):
        for layer in range(3):
            read = frames.frames(item, layer)
            assert read.dtype == torch.float32 and read.shape == (length, 4)
            assert torch.equal(read, features.frames(item)[:, layer])


# ---------------------------------------------------------------------- results record
def test_zero_shot_record_has_no_training_fields():
    common = dict(task="QbE", encoder={}, metric="mtwv", dev_metric="mtwv",
                  test_scores={"mtwv": 0.4}, dev_curve=[], best_dev=0.5, strategy="baseline",
                  profile="paper")
    empty = dict(best_step=None, steps=None, max_steps=None, eval_every_steps=None,
                 fraction=None, seed=None)
    record = results_record(**common, **empty, zero_shot=True)
    assert record["zero_shot"] is True and record["test"] == 0.4 and record["unit"] == ""
    assert all(record[key] is None for key in (*empty, "paper_max_steps",
                                               "best_step_resolution"))
    with pytest.raises(ValueError, match=r"trains nothing.*'steps'"):
        results_record(**common, **{**empty, "steps": 0}, zero_shot=True)
    trained = results_record(**common, best_step=10, steps=20, max_steps=20,
                             eval_every_steps=10, fraction=0.01, seed=1)
    assert trained["zero_shot"] is False and trained["fraction"] == 0.01


# ---------------------------------------------------------------------- the recipe
def recipe_command(output_root, *extra):
    return [sys.executable, "recipes/QbE/evaluate.py", "hparams/qbe.yaml",
            "--output_root", str(output_root), "--noprogressbar", *map(str, extra)]


def run_recipe(output_root, *extra, ok=True):
    done = subprocess.run(recipe_command(output_root, *extra), cwd=REPO, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert done.returncode == 0, printed(done)[-4000:]
    return done


def run_folder(output_root):
    (folder,) = (Path(output_root) / "QbE").glob("*/*")
    return folder


def without_timings(record):
    """results.json less what measures time (a resumed run redoes part of the work)."""
    record = json.loads(json.dumps(record))
    for key in ("wall_seconds", "feature_seconds", "stdlists"):
        record.pop(key)
    for layer in record["layers"]:
        layer.pop("match_seconds")
    return record


@pytest.fixture(scope="module")
def embedded_run(mini_corpus, tmp_path_factory):
    """The default command: embedded encoder and mini corpus, only --output_root given."""
    output_root = tmp_path_factory.mktemp("qbe")
    done = run_recipe(output_root)
    return output_root, run_folder(output_root), done


@pytest.mark.slow
def test_embedded_run_writes_every_layer_and_the_chosen_one(embedded_run, mini_quesst):
    output_root, folder, _ = embedded_run
    results = results_of(folder)
    assert results["task"] == "QbE" and results["zero_shot"] is True
    assert results["fraction"] is None and results["steps"] is None
    assert (results["metric"], results["unit"], results["direction"]) == ("mtwv", "", "max")
    states = results["encoder"]["num_states"]
    assert [entry["layer"] for entry in results["layers"]] == list(range(states))
    assert folder.relative_to(output_root).parts[0] == "QbE"
    assert folder.name == results["strategy"]  # <root>/QbE/<encoder_id>/<strategy>

    (manifests,) = (output_root / "manifests" / "QbE").glob("*")
    english = {name: [row["ID"] for row in read_manifest(manifests / f"{name}.csv")]
               for name in ("documents", *SPLITS)}
    truth = {s: read_groundtruth(mini_quesst / "scoring" / f"groundtruth_quesst14_{s}")
             for s in SPLITS}
    for entry in results["layers"]:
        for split in SPLITS:
            stdlist = read_stdlist(folder / "layers" / str(entry["layer"]) / split
                                   / "benchmark.stdlist.xml")
            # Every English query against every English document, nothing else.
            assert list(stdlist) == english[split]
            assert all(list(row) == english["documents"] for row in stdlist.values())
            # The MTWVs recorded are those of the files, against the ground-truth files.
            gt, en = (term_weighted_value(stdlist, truth[split].occurrences, queries, docs)
                      for queries, docs in (
                          (truth[split].queries, truth[split].documents),
                          (english[split], english["documents"])))
            assert entry[f"{split}_mtwv_groundtruth"] == pytest.approx(gt.mtwv, abs=1e-12)
            assert entry[f"{split}_mtwv_english"] == pytest.approx(en.mtwv, abs=1e-12)
            assert entry[f"{split}_mtwv"] == entry[f"{split}_mtwv_groundtruth"]
    # The mini corpus' Czech query and documents are trials in the ground truth only.
    assert any(e["dev_mtwv_english"] != e["dev_mtwv_groundtruth"] for e in results["layers"])

    chosen = results["chosen_layer"]
    dev = {e["layer"]: e["dev_mtwv"] for e in results["layers"]}
    assert dev[chosen] == max(dev.values())
    assert chosen == min(layer for layer in dev if dev[layer] == dev[chosen])  # ties: lowest
    entry = results["layers"][chosen]
    assert results["best_dev"] == entry["dev_mtwv"]
    assert results["test"] == entry["eval_mtwv"] and 0 <= results["test"] <= 1
    for split in SPLITS:
        assert ((folder / split / "benchmark.stdlist.xml").read_bytes()
                == (folder / "layers" / str(chosen) / split / "benchmark.stdlist.xml").read_bytes())
    # The scores point the right way: the queries' true documents score above the rest.
    stdlist = read_stdlist(folder / "eval" / "benchmark.stdlist.xml")
    true, false = [], []
    for query, row in stdlist.items():
        holders = set(truth["eval"].occurrences.get(query, ()))
        for doc, (score, _) in row.items():
            (true if doc in holders else false).append(score)
    assert np.mean(true) > np.mean(false) + 1.0
    assert results["skipped_queries"] == {s: {SKIP_SHORT: 0, SKIP_LONG: 0} for s in SPLITS}
    assert results["items"]["documents"] == len(english["documents"])


@pytest.mark.slow
def test_rerun_and_resume_give_the_same_results(embedded_run):
    output_root, folder, _ = embedded_run
    first = (folder / "results.json").read_bytes()
    layers = folder / "layers"
    stamps = {p: p.stat().st_mtime_ns for p in layers.glob("*/*/benchmark.stdlist.xml")}
    done = run_recipe(output_root)
    assert (folder / "results.json").read_bytes() == first  # nothing redone, same record
    assert "already matched" in printed(done)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A run killed as soon as one split of one state is done resumes to the same scores.
    killed_root = output_root.parent / f"{output_root.name}-killed"
    shutil.copytree(output_root / "frame_cache", killed_root / "frame_cache")
    process = subprocess.Popen(recipe_command(killed_root), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 600
    try:
        while not list((killed_root / "QbE").glob("*/*/layers/*/dev/match.json")):
            assert process.poll() is None and time.time() < deadline
            time.sleep(0.001)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    killed = run_folder(killed_root)
    assert not (killed / "results.json").exists()
    done = run_recipe(killed_root)
    assert "already matched" in printed(done)
    assert without_timings(results_of(killed)) == without_timings(json.loads(first))


@pytest.mark.slow
def test_short_and_overlong_queries_are_counted_not_matched(quesst_copy, tmp_path):
    dev = [path.split("/", 1)[1] for path, lang in key_lines(quesst_copy, "language_key_dev.lst")
           if lang == "nnenglish"]
    short, long = quesst_copy / dev[0], quesst_copy / dev[1]
    write_wav(short, 0.05)  # 2 encoder frames
    longest = max(soundfile.info(str(p)).duration for p in (quesst_copy / "Audio").glob("*.wav"))
    write_wav(long, longest + 2.0)
    done = run_recipe(tmp_path / "out", "--data_folder", quesst_copy, "--layers", "[0]")
    results = results_of(run_folder(tmp_path / "out"))
    assert results["skipped_queries"]["dev"] == {SKIP_SHORT: 1, SKIP_LONG: 1}
    assert results["skipped_query_ids"]["dev"] == {SKIP_SHORT: [short.stem], SKIP_LONG: [long.stem]}
    assert results["skipped_queries"]["eval"] == {SKIP_SHORT: 0, SKIP_LONG: 0}
    stdlist = read_stdlist(run_folder(tmp_path / "out") / "dev" / "benchmark.stdlist.xml")
    for query in (short.stem, long.stem):
        assert {score for score, _ in stdlist[query].values()} == {0.0}
    assert "queries not matched" in printed(done)


@pytest.mark.slow
def test_a_rerun_on_changed_audio_matches_again(quesst_copy, tmp_path):
    """The frame caches are keyed by the audio; a layer's stdlist made from the old frames
    must not be reused by the rerun (its match.json key names the caches)."""
    run_recipe(tmp_path / "out", "--data_folder", quesst_copy, "--layers", "[0]")
    dev = [path.split("/", 1)[1] for path, lang in key_lines(quesst_copy, "language_key_dev.lst")
           if lang == "nnenglish"]
    first, second = quesst_copy / dev[0], quesst_copy / dev[1]
    audio = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(audio)
    done = run_recipe(tmp_path / "out", "--data_folder", quesst_copy, "--layers", "[0]")
    assert "matching again" in printed(done)
    run_recipe(tmp_path / "fresh", "--data_folder", quesst_copy, "--layers", "[0]")
    rerun = without_timings(results_of(run_folder(tmp_path / "out")))
    fresh = without_timings(results_of(run_folder(tmp_path / "fresh")))
    assert rerun["layers"] == fresh["layers"] and rerun["test"] == fresh["test"]


@pytest.mark.slow
def test_recipe_option_and_data_errors_are_one_line(tmp_path, quesst_copy):
    done = run_recipe(tmp_path / "a", "--mtwv_trials", "all", ok=False)
    assert_one_line_error(done, "--mtwv_trials 'all': use one of groundtruth, english")
    write_wav(english_document(quesst_copy), 1.0, 48000, 1)
    done = run_recipe(tmp_path / "b", "--data_folder", quesst_copy, ok=False)
    assert_one_line_error(done, "48000 Hz, 1 channel")
    done = run_recipe(tmp_path / "c", "--layers", "[7]", ok=False)
    assert_one_line_error(done, "--layers [7]: give 'all' or hidden-state indices from 0 to 4")
