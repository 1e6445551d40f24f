"""KS and IC: data preparation on the real layouts, bad audio, and the recipes end to end."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ruamel.yaml
import soundfile
import torch

from rewire_lobes.data.audio import AudioError
from rewire_lobes.data.manifests import read_manifest

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "recipes" / "KS"), str(REPO / "recipes" / "IC")]

from fluent_commands_prepare import prepare_fluent_commands  # noqa: E402
from speech_commands_prepare import (  # noqa: E402
    TEST_FOLDER,
    TRAIN_FOLDER,
    prepare_speech_commands,
    which_split,
)

SAMPLE = Path("/work/shared/data/speech_commands_v0.01_sample")


def write_wav(path, seconds=0.25, rate=16000, channels=1, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((int(seconds * rate), channels)) * 0.1).astype("float32")
    soundfile.write(path, data if channels > 1 else data[:, 0], rate)
    return path


def speakers_by_split():
    """Speaker ids that the hash rule sends to each split."""
    found = {"train": [], "dev": [], "hash_test": []}
    i = 0
    while min(len(v) for v in found.values()) < 2:
        name = f"{i:08x}"
        found[which_split(f"{name}_nohash_0.wav")].append(name)
        i += 1
    return found


def build_speech_commands(root, words=("yes", "no", "bed"), test=True, noise=True):
    """A tiny Speech Commands v0.01 tree in the real layout."""
    speakers = speakers_by_split()
    train_root = root / TRAIN_FOLDER
    for w, word in enumerate(words):
        for split, names in speakers.items():
            for name in names:
                write_wav(train_root / word / f"{name}_nohash_0.wav", seed=w)
    if noise:
        write_wav(train_root / "_background_noise_" / "long_noise.wav", seconds=3.0)
        write_wav(train_root / "_background_noise_" / "short_noise.wav", seconds=0.5)
    if test:
        for folder in ("yes", "no", "_unknown_", "_silence_"):
            for k in range(2):
                write_wav(root / TEST_FOLDER / folder / f"abc{k}_nohash_0.wav", seed=k)
    return speakers


def labels_of(path):
    return [row["label"] for row in read_manifest(path)]


# ---------------------------------------------------------------------- KS preparation
def test_ks_prepare_real_layout(tmp_path):
    speakers = build_speech_commands(tmp_path / "data")
    out = prepare_speech_commands(tmp_path / "data", tmp_path / "manifests", keywords=["yes", "no"])

    labels = json.loads((out / "labels.json").read_text())
    assert labels["label"] == ["yes", "no", "_unknown_", "_silence_"]
    train, dev = read_manifest(out / "train.csv"), read_manifest(out / "dev.csv")
    assert {r["label"] for r in train} == {"yes", "no", "_unknown_", "_silence_"}
    # the hash split: dev speakers in dev, "testing" speakers nowhere
    assert {r["spk"] for r in dev if r["spk"]} == set(speakers["dev"])
    assert {r["spk"] for r in train if r["spk"]} == set(speakers["train"])
    # _silence_: one random-crop item per noise file and split (tests/test_ks_silence.py)
    for rows in (train, dev):
        silence = [r for r in rows if r["label"] == "_silence_"]
        assert sorted(Path(r["wav"]).name for r in silence) == ["long_noise.wav", "short_noise.wav"]
        assert {r["random_crop"] for r in silence} == {"16000"}
        assert {r["random_crop"] for r in rows if r["label"] != "_silence_"} == {""}
    assert sorted(set(labels_of(out / "test.csv"))) == ["_silence_", "_unknown_", "no", "yes"]


def test_ks_keywords_covering_every_word(tmp_path):
    build_speech_commands(tmp_path / "data")
    out = prepare_speech_commands(tmp_path / "data", tmp_path / "manifests",
                                  keywords=["yes", "no", "bed"])
    assert "_unknown_" not in labels_of(out / "train.csv")  # empty class, kept in the output
    assert json.loads((out / "labels.json").read_text())["label"][-2:] == ["_unknown_", "_silence_"]


def test_ks_reprepares_only_when_options_change(tmp_path):
    build_speech_commands(tmp_path / "data")
    root = tmp_path / "manifests"
    out = prepare_speech_commands(tmp_path / "data", root, keywords=["yes"])
    stamp = (out / "train.csv").stat().st_mtime_ns
    assert prepare_speech_commands(tmp_path / "data", root, keywords=["yes"]) == out
    assert (out / "train.csv").stat().st_mtime_ns == stamp
    other = prepare_speech_commands(tmp_path / "data", root, keywords=["yes", "no"])
    assert other != out and "no" in labels_of(other / "train.csv")
    assert (out / "train.csv").stat().st_mtime_ns == stamp  # each option set keeps its own


def test_ks_missing_test_set(tmp_path):
    build_speech_commands(tmp_path / "data", test=False, noise=False)
    with pytest.raises(FileNotFoundError, match="--missing_test_set hash_split"):
        prepare_speech_commands(tmp_path / "data", tmp_path / "m1")
    out = prepare_speech_commands(tmp_path / "data", tmp_path / "m2",
                                  missing_test_set="hash_split")
    test_rows = read_manifest(out / "test.csv")
    speakers = speakers_by_split()
    assert {r["spk"] for r in test_rows} == set(speakers["hash_test"])
    assert "hash split" in json.loads((out / "labels.json").read_text())["test_set"]


def test_ks_data_folder_may_be_the_train_folder_itself(tmp_path):
    """As the shared sample is laid out: the word folders directly under --data_folder."""
    build_speech_commands(tmp_path / "data")
    (tmp_path / "data" / TRAIN_FOLDER / "validation_list.txt").write_text("")
    out = prepare_speech_commands(tmp_path / "data" / TRAIN_FOLDER, tmp_path / "m")
    assert len(read_manifest(out / "test.csv")) == 8


def test_ks_wrong_data_folder_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="speech_commands_v0.01"):
        prepare_speech_commands(tmp_path, tmp_path / "m")


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="shared Speech Commands sample not present")
def test_hash_split_reproduces_the_official_lists():
    listed = {}
    for name, split in (("validation_list.txt", "dev"), ("testing_list.txt", "hash_test")):
        for line in (SAMPLE / name).read_text().split():
            listed[line] = split
    checked = 0
    for wav in SAMPLE.glob("*/*.wav"):
        relative = f"{wav.parent.name}/{wav.name}"
        assert which_split(wav.name) == listed.get(relative, "train"), relative
        checked += 1
    assert checked >= 100


# ---------------------------------------------------------------------- bad audio
@pytest.mark.parametrize(
    "kind,message",
    [("empty", "holds no samples"), ("garbage", "cannot read audio header")],
)
def test_bad_audio_fails_at_preparation_naming_the_file(tmp_path, kind, message):
    build_speech_commands(tmp_path / "data")
    bad = tmp_path / "data" / TRAIN_FOLDER / "yes" / "deadbeef_nohash_0.wav"
    if kind == "empty":
        soundfile.write(bad, np.zeros(0, dtype="float32"), 16000)
    else:
        bad.write_bytes(os.urandom(1000))
    with pytest.raises(AudioError, match=message) as err:
        prepare_speech_commands(tmp_path / "data", tmp_path / "m")
    assert str(bad) in str(err.value)


def test_stereo_and_8khz_are_fixed_on_reading(tmp_path):
    from rewire_lobes.downstream.dataio import audio_pipeline

    build_speech_commands(tmp_path / "data")
    stereo = write_wav(tmp_path / "data" / TRAIN_FOLDER / "yes" / "cafe0001_nohash_0.wav",
                       seconds=0.5, channels=2)
    narrow = write_wav(tmp_path / "data" / TRAIN_FOLDER / "no" / "cafe0002_nohash_0.wav",
                       seconds=0.5, rate=8000)
    out = prepare_speech_commands(tmp_path / "data", tmp_path / "m", keywords=["yes", "no"])
    rows = {Path(r["wav"]).name: r for r in read_manifest(out / "train.csv")
            + read_manifest(out / "dev.csv")}
    assert float(rows[stereo.name]["duration"]) == pytest.approx(0.5)
    assert float(rows[narrow.name]["duration"]) == pytest.approx(0.5)

    read = audio_pipeline(gain_db=0.0)
    sig = read(str(stereo), "", "")
    expected = torch.from_numpy(soundfile.read(stereo, dtype="float32")[0].mean(axis=1))
    assert sig.dim() == 1 and torch.allclose(sig, expected)
    assert read(str(narrow), "", "").shape == (8000,)  # 0.5 s at 16 kHz
    quieter = audio_pipeline(gain_db=-3.0)(str(stereo), "", "")
    assert torch.allclose(quieter, sig * 10 ** (-3 / 20))


# ---------------------------------------------------------------------- IC preparation
def build_fluent(root, valid_object="lights"):
    """A tiny Fluent Speech Commands tree in the real layout."""
    base = root / "fluent_speech_commands_dataset"
    rows = {
        "train": [("activate", "music", "none"), ("increase", "heat", "kitchen"),
                  ("activate", "lights", "kitchen"), ("decrease", "heat", "none")],
        "valid": [("activate", valid_object, "none")],
        "test": [("increase", "heat", "kitchen")],
    }
    for split, intents in rows.items():
        (base / "data").mkdir(parents=True, exist_ok=True)
        with open(base / "data" / f"{split}_data.csv", "w", newline="") as fout:
            writer = csv.writer(fout)
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object",
                             "location"])
            for i, (action, obj, location) in enumerate(intents):
                path = f"wavs/speakers/spk{split}/{split}{i}.wav"
                write_wav(base / path, seconds=0.3 + 0.1 * i, seed=i)
                writer.writerow([i, path, f"spk{split}", "words", action, obj, location])
    return base


def test_ic_prepare_real_layout(tmp_path):
    build_fluent(tmp_path / "data")
    out = prepare_fluent_commands(tmp_path / "data", tmp_path / "m")
    labels = json.loads((out / "labels.json").read_text())
    assert labels == {
        "action": ["activate", "increase", "decrease"],
        "object": ["music", "heat", "lights"],
        "location": ["none", "kitchen"],
    }
    train = read_manifest(out / "train.csv")
    assert train[1]["intent"] == "increase|heat|kitchen"
    assert train[0]["ID"] == "wavs/speakers/spktrain/train0"
    assert len(read_manifest(out / "dev.csv")) == 1


def test_ic_unseen_dev_value_is_a_clear_error(tmp_path):
    build_fluent(tmp_path / "data", valid_object="shoes")
    with pytest.raises(ValueError, match="object 'shoes' never occurs in train_data.csv"):
        prepare_fluent_commands(tmp_path / "data", tmp_path / "m")


def test_ic_missing_csvs(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_data.csv"):
        prepare_fluent_commands(tmp_path, tmp_path / "m")


# ---------------------------------------------------------------------- mini corpus
def test_prepare_on_mini_corpus(mini_corpus, tmp_path):
    ks = prepare_speech_commands(mini_corpus, tmp_path / "ks")
    classes = json.loads((ks / "labels.json").read_text())["label"]
    assert len(classes) == 12
    assert set(labels_of(ks / "train.csv")) == set(classes)
    assert set(labels_of(ks / "test.csv")) == set(classes)
    ic = prepare_fluent_commands(mini_corpus, tmp_path / "ic")
    labels = json.loads((ic / "labels.json").read_text())
    assert [len(labels[s]) for s in ("action", "object", "location")] == [6, 14, 4]


# ---------------------------------------------------------------------- yaml hygiene
SHARED_KEYS = {
    "task", "seed", "fraction", "strategy", "upstream_source", "encoder_id", "output_root",
    "output_folder", "data_folder", "skip_prep", "max_steps", "eval_every_steps", "lr",
    "batch_size", "max_grad_norm", "cache_features", "use_tensorboard", "layer_norm",
    "gain_db", "metric", "dev_metric", "num_workers", "run_profile", "embedded_profile",
    "run_identity_keys", "manifest_root",
}


def test_yamls_share_overridable_keys_and_avoid_run_option_prefixes():
    from speechbrain.core import RunOptions

    options = [o for o in RunOptions().as_dict() if o != "overridden_args"]
    for name in ("ks.yaml", "ic.yaml", "asr.yaml", "sf.yaml"):
        keys = set(ruamel.yaml.YAML().load((REPO / "hparams" / name).read_text()))
        assert SHARED_KEYS <= keys, (name, SHARED_KEYS - keys)
        clashes = [(k, o) for k in keys for o in options if o != k and o.startswith(k)]
        assert not clashes, (name, clashes)


# ---------------------------------------------------------------------- recipes end to end
RESULT_KEYS = {
    "schema", "task", "encoder", "strategy", "fraction", "seed", "metric", "dev_metric",
    "direction", "unit", "best_dev", "test", "test_scores", "best_step", "steps", "max_steps",
    "eval_every_steps", "paper_max_steps", "dev_curve", "wall_seconds", "device",
    "feature_mode", "train_items", "dev_items", "test_items",
}


def run_recipe(task, yaml, encoder, output_root, data_folder, *extra):
    command = [
        sys.executable, f"recipes/{task}/train.py", f"hparams/{yaml}",
        "--upstream_source", encoder, "--output_root", str(output_root),
        "--data_folder", str(data_folder), "--max_steps", "6", "--eval_every_steps", "3",
        "--noprogressbar", *extra,
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = sorted(Path(output_root).glob(f"{task}/*/*/*/results.json"))
    assert len(results) >= 1, done.stderr[-3000:]
    return results


def check_results(path, task, fraction):
    results = json.loads(path.read_text())
    assert RESULT_KEYS <= set(results), RESULT_KEYS - set(results)
    assert results["task"] == task and results["fraction"] == fraction
    assert results["steps"] == 6 and [s for s, _ in results["dev_curve"]] == [3, 6]
    assert results["best_step"] in (3, 6) and results["direction"] == "max"
    assert len(results["encoder"]["content_hash"]) == 64
    assert 0.0 <= results["test"] <= 100.0
    assert path.parent.name == f"fraction{fraction}_seed1986"
    return results


@pytest.mark.slow
def test_ks_recipe_custom_keywords(mini_corpus, tiny_encoder, tmp_path):
    """Every mini word is a keyword, so _unknown_ has no training example."""
    words = sorted(p.name for p in (mini_corpus / TRAIN_FOLDER).iterdir()
                   if p.is_dir() and not p.name.startswith("_"))
    keywords = "[" + ", ".join(words) + "]"
    (path,) = run_recipe("KS", "ks.yaml", tiny_encoder(), tmp_path, mini_corpus,
                         "--fraction", "0.5", "--keywords", keywords)
    results = check_results(path, "KS", 0.5)
    assert results["feature_mode"] == "cached"
    assert "_unknown_" not in results["train_label_counts"]
    assert results["test_set"].startswith("speech_commands_test_set_v0.01")
    assert results["dev_metric"] == "balanced_accuracy"
    # _silence_ crops are encoded in the batch: a crop of its own for every training draw.
    crops = results["on_the_fly_crops"]
    assert 0 < crops["train_encoded"] == crops["train_draws"]
    noise_files = len(list((mini_corpus / TRAIN_FOLDER / "_background_noise_").glob("*.wav")))
    assert crops["dev_draws"] == crops["dev_encoded"] == 2 * noise_files  # 2 evaluations
    # The report's layer-weight figure and the grid's analysis cells read these two.
    import yaml

    (best_folder,) = [meta.parent for meta in (path.parent / "save").glob("CKPT+*/CKPT.yaml")
                      if yaml.safe_load(meta.read_text())["step"] == results["best_step"]]
    best = torch.load(best_folder / "featurizer.ckpt")["weights"]
    assert results["layer_weights"] == pytest.approx(torch.softmax(best, 0).tolist(), abs=1e-6)
    assert (Path(results["manifest_folder"]) / "train.csv").is_file()


@pytest.mark.slow
def test_ks_recipe_on_the_fly_with_loader_workers(mini_corpus, tiny_encoder, tmp_path):
    """Each training draw's position reaches the workers' copies of the dataset."""
    (path,) = run_recipe("KS", "ks.yaml", tiny_encoder(), tmp_path, mini_corpus,
                         "--cache_features", "False", "--num_workers", "2")
    results = check_results(path, "KS", 0.01)
    assert results["feature_mode"] == "on_the_fly" and "on_the_fly_crops" not in results
    assert results["train_label_counts"]["_silence_"] == 1


@pytest.mark.slow
def test_ic_recipe_on_the_fly_then_resume(mini_corpus, tiny_encoder, tmp_path):
    (path,) = run_recipe("IC", "ic.yaml", tiny_encoder(), tmp_path, mini_corpus,
                         "--cache_features", "False")
    first = check_results(path, "IC", 0.01)
    assert first["feature_mode"] == "on_the_fly"
    assert {"action_accuracy", "object_accuracy", "location_accuracy"} <= set(first["test_scores"])
    # Same configuration: resumes the finished run (no new updates, same numbers).
    (again,) = run_recipe("IC", "ic.yaml", tiny_encoder(), tmp_path, mini_corpus,
                          "--cache_features", "False")
    second = json.loads(again.read_text())
    assert (second["dev_curve"], second["test"], second["steps"]) == \
        (first["dev_curve"], first["test"], first["steps"])


# ---------------------------------------------------------------------- the Brain in process
def ks_brain_in_process(brain_class, encoder, data_folder, output_root, **overrides):
    """A KS Brain built as recipes/KS/train.py builds it (yaml, prepare, head), untrained.

    Returns ``(brain, hparams, datasets)``; the datasets' inputs are not chosen yet.
    """
    from hyperpyyaml import load_hyperpyyaml

    from rewire_lobes.downstream.dataio import dataio_prepare
    from rewire_lobes.downstream.utterance import add_head

    overrides = {
        "upstream_source": encoder, "encoder_id": "tiny", "output_root": str(output_root),
        "data_folder": str(data_folder), "keywords": ["yes", "no"], "run_profile": "paper",
        "strategy": "baseline", **overrides,
    }
    with open(REPO / "hparams" / "ks.yaml") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams["manifest_folder"] = prepare_speech_commands(
        hparams["data_folder"], hparams["manifest_root"], keywords=hparams["keywords"])
    datasets = dataio_prepare(hparams)
    add_head(hparams)
    brain = brain_class(modules=hparams["modules"], opt_class=hparams["opt_class"],
                        hparams=hparams, run_opts={"noprogressbar": True},
                        checkpointer=hparams["checkpointer"])
    return brain, hparams, datasets


def test_brain_in_process(tiny_encoder, tmp_path):
    """Frozen encoder in eval mode while training, not checkpointed; results.json schema."""
    from rewire_lobes.downstream.dataio import describe_datasets
    from rewire_lobes.downstream.utterance import UtteranceBrain

    class Probe(UtteranceBrain):
        batches = 0

        def on_fit_batch_start(self, batch, should_step):
            assert not self.hparams.upstream.model.training
            assert not any(p.requires_grad for p in self.hparams.upstream.parameters())
            Probe.batches += 1

    build_speech_commands(tmp_path / "data")
    brain, hparams, datasets = ks_brain_in_process(
        Probe, tiny_encoder(), tmp_path / "data", tmp_path, fraction=0.5, max_steps=5,
        eval_every_steps=2, batch_size=4)
    brain.run_info.update(describe_datasets(hparams, datasets))
    brain.use_cached_features(datasets)
    brain.fit(hparams["epoch_counter"], datasets["train"], datasets["dev"],
              train_loader_kwargs=hparams["train_dataloader_opts"],
              valid_loader_kwargs=hparams["valid_dataloader_opts"])
    brain.evaluate(datasets["test"], test_loader_kwargs=hparams["test_dataloader_opts"])

    assert Probe.batches == 5  # rounds of 2, 2 and 1 updates
    results = json.loads(Path(hparams["results_file"]).read_text())
    assert RESULT_KEYS <= set(results)
    assert [s for s, _ in results["dev_curve"]] == [2, 4, 5] and results["steps"] == 5
    best = max(results["dev_curve"], key=lambda p: (p[1], -p[0]))
    assert (results["best_step"], results["best_dev"]) == (best[0], best[1])
    assert results["train_label_counts"]["_silence_"] == 1  # one of the two noise files
    assert results["on_the_fly_crops"]["train_draws"] > 0
    checkpoints = list(Path(hparams["save_folder"]).glob("CKPT+*"))
    assert 1 <= len(checkpoints) <= 2  # the best and the latest
    for ckpt in checkpoints:
        names = {f.name for f in ckpt.iterdir()}
        assert "upstream.ckpt" not in names and {"head.ckpt", "featurizer.ckpt"} <= names
