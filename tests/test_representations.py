"""Utterance representations of a training set: isotropy, class separation, t-SNE."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rewire_lobes.analysis.representations import (
    analyse_representations,
    class_separation,
    knn_accuracy,
    knn_predict,
    parse_layer,
    read_training_manifest,
    sample_rows,
    select_layer,
)
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.runs.cli import encoder_id

REPO = Path(__file__).resolve().parent.parent
RATE = 16000
COLUMNS = ["ID", "duration", "wav", "start", "stop", "random_crop", "spk", "label"]
RECORD_KEYS = ["schema", "kind", "task", "manifest", "manifest_sha256", "items", "max_items",
               "seed", "layer", "gain_db", "label_columns", "features_fingerprint", "encoder",
               "strategy", "provenance", "log10_isotropy", "class_separation", "tsne",
               "seconds", "device"]


def write_corpus(folder):
    """A KS-like train.csv: two tone 'words', and a _silence_ random-crop row."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        label, pitch = ("yes", 300.0) if i % 2 == 0 else ("no", 1200.0)
        seconds = 0.4 + 0.05 * i
        t = np.arange(int(seconds * RATE)) / RATE
        wav = folder / f"{label}_{i}.wav"
        sf.write(wav, 0.5 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.normal(size=t.size), RATE)
        rows.append({"ID": f"{label}_{i}", "duration": f"{seconds:.4f}", "wav": str(wav),
                     "start": "", "stop": "", "random_crop": "", "spk": f"s{i}", "label": label})
    noise = folder / "noise.wav"
    sf.write(noise, 0.1 * rng.normal(size=2 * RATE), RATE)
    rows.append({"ID": "noise_0", "duration": "2.0000", "wav": str(noise), "start": "",
                 "stop": "", "random_crop": str(RATE // 2), "spk": "", "label": "_silence_"})
    manifest = folder / "train.csv"
    write_csv(manifest, rows, COLUMNS)
    return manifest, rows


def write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    from rewire_lobes.upstream.encoder import save_random_encoder

    return str(save_random_encoder(tmp_path_factory.mktemp("enc") / "tiny", "tiny"))


@pytest.fixture(scope="module")
def first_run(corpus, encoder, tmp_path_factory):
    manifest, _ = corpus
    root = tmp_path_factory.mktemp("results")
    return root, analyse_representations(encoder, manifest, "KS", output_root=root,
                                         progressbar=False)


def test_record_schema(first_run, corpus, encoder):
    root, analysis = first_run
    manifest, rows = corpus
    assert not analysis.reused
    assert analysis.path == root / "analysis" / "KS" / encoder_id(encoder) / "representations.json"
    record = json.loads(analysis.path.read_text())
    assert record == analysis.record
    assert list(record) == RECORD_KEYS
    assert (record["schema"], record["kind"], record["task"]) == (1, "representations", "KS")
    assert record["manifest"] == str(manifest.resolve())
    assert record["manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert (record["items"], record["max_items"], record["seed"]) == (len(rows), 5000, 1986)
    assert (record["layer"], record["gain_db"], record["label_columns"]) == ("mean", -3.0,
                                                                            ["label"])
    assert record["encoder"]["source"] == encoder and len(record["encoder"]["content_hash"]) == 64
    assert (record["strategy"], record["provenance"]) == ("baseline", None)
    assert record["log10_isotropy"] <= 0
    separation = record["class_separation"]
    assert list(separation) == ["silhouette", "knn_accuracy", "knn_k", "chance", "classes"]
    assert separation["classes"] == 3 and separation["knn_k"] == 5
    assert separation["chance"] == pytest.approx(5 / 11)
    assert 0 <= separation["knn_accuracy"] <= 1 and -1 <= separation["silhouette"] <= 1
    tsne = record["tsne"]
    assert tsne["labels"] == [row["label"] for row in rows]  # manifest order
    assert len(tsne["points"]) == len(rows) and all(len(p) == 2 for p in tsne["points"])
    assert tsne["perplexity"] == pytest.approx(10 / 3) and tsne["seed"] == 1986
    assert record["seconds"] > 0 and record["device"].startswith("cpu")
    assert (root / "feature_cache").is_dir()


def test_rerun_reuses_and_changed_settings_recompute(corpus, encoder, tmp_path):
    root = tmp_path
    manifest, _ = corpus
    analysis = analyse_representations(encoder, manifest, "KS", output_root=root,
                                       progressbar=False)
    mtime = analysis.path.stat().st_mtime_ns
    again = analyse_representations(encoder, manifest, "KS", output_root=root, progressbar=False)
    assert again.reused and again.record == analysis.record
    assert analysis.path.stat().st_mtime_ns == mtime
    fewer = analyse_representations(encoder, manifest, "KS", max_items=6, output_root=root,
                                    progressbar=False)
    assert not fewer.reused and fewer.record["items"] == 6 and fewer.record["max_items"] == 6
    assert fewer.path == analysis.path and analysis.path.stat().st_mtime_ns != mtime
    last = analyse_representations(encoder, manifest, "KS", max_items=6, layer="last",
                                   output_root=root, progressbar=False)
    assert not last.reused and last.record["layer"] == "last"
    assert last.record["log10_isotropy"] != fewer.record["log10_isotropy"]


def test_changed_audio_is_not_reused(encoder, tmp_path):
    """The same manifest bytes over regenerated audio (the feature cache's rule: file sizes
    and times) is computed again, never read back from the old record."""
    manifest, rows = write_corpus(tmp_path)
    first = analyse_representations(encoder, manifest, "KS", output_root=tmp_path / "r",
                                    progressbar=False)
    wav = Path(rows[0]["wav"])
    signal, rate = sf.read(wav)
    sf.write(wav, np.random.default_rng(9).normal(size=signal.shape) * 0.5, rate)
    stat = wav.stat()
    os.utime(wav, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # whatever the clock
    again = analyse_representations(encoder, manifest, "KS", output_root=tmp_path / "r",
                                    progressbar=False)
    assert again.record["manifest_sha256"] == first.record["manifest_sha256"]
    assert not again.reused
    assert again.record["log10_isotropy"] != first.record["log10_isotropy"]
    assert analyse_representations(encoder, manifest, "KS", output_root=tmp_path / "r",
                                   progressbar=False).reused


def test_max_items_samples_deterministically(corpus, encoder, tmp_path):
    manifest, rows = corpus
    runs = [analyse_representations(encoder, manifest, "KS", max_items=6, seed=seed,
                                    output_root=tmp_path / f"r{i}", progressbar=False).record
            for i, seed in enumerate([7, 7, 8])]
    assert runs[0]["tsne"] == runs[1]["tsne"]
    assert runs[0]["log10_isotropy"] == runs[1]["log10_isotropy"]
    expected = [row["label"] for row in sample_rows(rows, 6, seed=7)]
    assert runs[0]["tsne"]["labels"] == expected
    assert runs[0]["log10_isotropy"] != runs[2]["log10_isotropy"]


def test_sample_rows_keeps_manifest_order():
    rows = list(range(100))
    sample = sample_rows(rows, 10, seed=3)
    assert sample == sorted(sample) and len(set(sample)) == 10
    assert sample == sample_rows(rows, 10, seed=3) != sample_rows(rows, 10, seed=4)
    assert sample_rows(rows, 100, seed=3) == rows


def test_without_labels_no_separation_nor_tsne(corpus, encoder, tmp_path):
    manifest, _ = corpus
    record = analyse_representations(encoder, manifest, "ASR", output_root=tmp_path,
                                     progressbar=False).record
    assert record["label_columns"] == [] and record["gain_db"] == 0.0
    assert record["class_separation"] is None and record["tsne"] is None
    assert np.isfinite(record["log10_isotropy"])


def test_strategy_and_provenance_come_from_the_rewiring_record(corpus, encoder, tmp_path):
    manifest, _ = corpus
    rewired = tmp_path / "upstream"
    shutil.copytree(encoder, rewired)
    (rewired / "rewiring.json").write_text(json.dumps({"strategy": "mixed", "updates": 3}))
    record = analyse_representations(str(rewired), manifest, "SD", output_root=tmp_path,
                                     progressbar=False).record
    assert record["strategy"] == "mixed" and record["provenance"]["updates"] == 3
    assert record["provenance"]["record_sha256"] == hashlib.sha256(
        (rewired / "rewiring.json").read_bytes()).hexdigest()


def test_joined_label_columns(corpus, encoder, tmp_path):
    manifest, rows = corpus
    record = analyse_representations(encoder, manifest, "IC", label_columns=["label", "spk"],
                                     output_root=tmp_path, progressbar=False).record
    assert record["tsne"]["labels"] == [f"{row['label']}|{row['spk']}" for row in rows]
    assert record["class_separation"]["classes"] == len(rows)
    assert record["class_separation"]["silhouette"] is None  # a class per row: undefined


def test_bad_manifests_are_named(corpus, tmp_path):
    manifest, rows = corpus
    with pytest.raises(DataFileError, match="train.csv: no column action"):
        read_training_manifest(manifest, ["action"])
    with pytest.raises(DataFolderError, match="missing.csv"):
        read_training_manifest(tmp_path / "missing.csv", [])
    empty = tmp_path / "empty.csv"
    write_csv(empty, [], COLUMNS)
    with pytest.raises(DataFileError, match="empty.csv: the training manifest has no rows"):
        read_training_manifest(empty, [])


def test_bad_layer_is_an_option_error():
    pooled = np.zeros((4, 3, 2))
    with pytest.raises(OptionError, match="hidden states 0..2"):
        select_layer(pooled, 3)
    with pytest.raises(OptionError, match="mean, last"):
        parse_layer("first")
    assert select_layer(np.arange(6.0).reshape(1, 3, 2), -3).tolist() == [[0.0, 1.0]]


def test_separated_clusters_are_found():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 16)) * 0.1 + np.r_[10.0, np.zeros(15)]
    b = rng.normal(size=(100, 16)) * 0.1 + np.r_[0.0, 10.0, np.zeros(14)]
    labels = ["a"] * 100 + ["b"] * 100
    scores = class_separation(np.vstack([a, b]), labels)
    assert scores["knn_accuracy"] == 1.0 and scores["silhouette"] > 0.9
    assert scores["chance"] == 0.5 and scores["classes"] == 2


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(2000, 16))
    labels = rng.choice(["x", "y"], size=2000).tolist()
    scores = class_separation(vectors, labels)
    assert abs(scores["knn_accuracy"] - 0.5) < 0.06
    assert abs(scores["silhouette"]) < 0.05


def test_knn_ties_go_to_the_nearest():
    # Row 0's two neighbours vote a (nearest, 5°) and b (10°); flipped labels flip it.
    angles = np.radians([0.0, 5.0, -10.0, 180.0, 185.0])
    points = np.c_[np.cos(angles), np.sin(angles)]
    assert knn_predict(points, ["a", "a", "b", "c", "c"], k=2)[0] == "a"
    assert knn_predict(points, ["a", "b", "a", "c", "c"], k=2)[0] == "b"
    assert knn_accuracy(points, ["a", "a", "b", "c", "c"], k=1) == 0.8  # row 2 -> a


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "utils" / "representations.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_command_line(first_run, corpus, encoder):
    root, analysis = first_run  # no other test rewrites this record
    manifest, _ = corpus
    done = run_tool("--upstream_source", encoder, "--manifest", str(manifest), "--task", "KS",
                    "--output_root", str(root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"reused {analysis.path}"
    assert f"log10_isotropy {analysis.record['log10_isotropy']:.6f}" in done.stdout
    wrong = run_tool("--upstream_source", encoder, "--manifest", str(manifest), "--task", "KS",
                     "--label_columns", "action", "--output_root", str(root))
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "train.csv: no column action" in wrong.stderr
