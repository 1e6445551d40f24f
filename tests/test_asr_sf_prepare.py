"""ASR (LibriSpeech) and SF (Audio SNIPS) prepare steps, the shared LibriSpeech reader and
the rewiring subset an ASR run leaves out.

Tiny corpora are written here in the real layouts; one test reads the embedded mini
corpus (generated under data/mini if absent: LibriSpeech and SNIPS only, seconds).
"""

import csv
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_user_errors import assert_one_line_error

from rewire_lobes.data.librispeech import read_librispeech_split, rewiring_exclusions
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError
from rewire_lobes.runs.provenance import RECORD_FILE

REPO = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


asr = _load("asr_librispeech_prepare", "recipes/ASR/librispeech_prepare.py")
sf = _load("sf_snips_prepare", "recipes/SF/snips_prepare.py")
rewire = _load("asr_test_rewire_prepare", "recipes/rewire/librispeech_prepare.py")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        return reader.fieldnames, list(reader)


def noise(seconds, rate=16000, channels=1, seed=0):
    shape = (int(seconds * rate), channels) if channels > 1 else int(seconds * rate)
    return 0.1 * np.random.default_rng(seed).standard_normal(shape)


# ------------------------------------------------------------------------------ LibriSpeech

LIBRI_SPEAKERS = {"train-clean-100": ("19", "27"), "dev-clean": ("84",), "test-clean": ("61",)}
UTTERANCES_PER_SPEAKER = 3


def make_librispeech(root):
    """train-clean-100 (2 speakers), dev-clean and test-clean (1 each), 3 utterances each,
    plus one flac no transcript lists."""
    root = Path(root)
    for split, speakers in LIBRI_SPEAKERS.items():
        for speaker in speakers:
            chapter = root / split / speaker / "198"
            chapter.mkdir(parents=True)
            lines = []
            for n in range(UTTERANCES_PER_SPEAKER):
                utt = f"{speaker}-198-{n:04d}"
                soundfile.write(chapter / f"{utt}.flac", noise(0.3 + 0.1 * n, seed=n), 16000)
                lines.append(f"{utt} IT'S  A {split.upper()} LINE {n}")
            (chapter / f"{speaker}-198.trans.txt").write_text("\n".join(lines) + "\n")
    soundfile.write(root / "train-clean-100" / "19" / "198" / "19-198-0099.flac", noise(0.2),
                    16000)
    return root


def test_asr_manifests_columns_counts_and_order(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    folder = asr.prepare_librispeech_asr(data, tmp_path / "manifests")
    assert folder.parent == tmp_path / "manifests"
    for name, split in (("train", "train-clean-100"), ("dev", "dev-clean"), ("test", "test-clean")):
        columns, rows = read_csv(folder / f"{name}.csv")
        assert columns == ["ID", "duration", "wav", "start", "stop", "spk", "wrd"]
        assert len(rows) == UTTERANCES_PER_SPEAKER * len(LIBRI_SPEAKERS[split])
        assert [row["ID"] for row in rows] == sorted(row["ID"] for row in rows)
        assert {row["spk"] for row in rows} == set(LIBRI_SPEAKERS[split])
        assert all(row["start"] == row["stop"] == "" for row in rows)
        for row in rows:
            assert Path(row["wav"]).is_file() and Path(row["wav"]).stem == row["ID"]
            assert float(row["duration"]) == pytest.approx(soundfile.info(row["wav"]).duration,
                                                           abs=1e-4)
    _, train = read_csv(folder / "train.csv")
    assert "19-198-0099" not in {row["ID"] for row in train}, "no transcript: not used"
    assert {row["wrd"] for row in train} == {f"IT'S A TRAIN-CLEAN-100 LINE {n}" for n in range(3)}


def test_asr_rerun_reuses_the_folder_and_other_splits_get_their_own(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    folder = asr.prepare_librispeech_asr(data, tmp_path / "m")
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert asr.prepare_librispeech_asr(data, tmp_path / "m") == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps

    both = asr.prepare_librispeech_asr(data, tmp_path / "m",
                                       test_splits=["test-clean", "dev-clean"])
    assert both != folder
    assert len(read_csv(both / "test.csv")[1]) == 2 * UTTERANCES_PER_SPEAKER
    skipped = asr.prepare_librispeech_asr("/nonexistent", tmp_path / "skip", skip_prep=True)
    assert not skipped.exists()


def _missing_audio(data):
    path = data / "dev-clean" / "84" / "198" / "84-198-0001.flac"
    path.unlink()
    return path


def _empty_audio(data):
    path = data / "test-clean" / "61" / "198" / "61-198-0002.flac"
    path.write_bytes(b"")
    return path


def _unreadable_audio(data):
    path = data / "train-clean-100" / "27" / "198" / "27-198-0000.flac"
    path.write_bytes(b"not a flac file at all" * 10)
    return path


def _eight_khz(data):
    path = data / "train-clean-100" / "19" / "198" / "19-198-0001.flac"
    soundfile.write(path, noise(0.3, rate=8000), 8000)
    return path


def _stereo(data):
    path = data / "dev-clean" / "84" / "198" / "84-198-0000.flac"
    soundfile.write(path, noise(0.3, channels=2), 16000)
    return path


def _no_transcript(data):
    chapter = data / "test-clean" / "61" / "198"
    (chapter / "61-198.trans.txt").unlink()
    return chapter


@pytest.mark.parametrize("spoil, message", [
    (_missing_audio, "listed in"),
    (_empty_audio, "cannot read audio header"),
    (_unreadable_audio, "cannot read"),
    (_eight_khz, "8000 Hz, 1 channel"),
    (_stereo, "16000 Hz, 2 channels"),
    (_no_transcript, "no <speaker>-<chapter>.trans.txt"),
])
def test_asr_refuses_bad_input_naming_the_file(tmp_path, spoil, message):
    data = make_librispeech(tmp_path / "LibriSpeech")
    bad = spoil(data)
    with pytest.raises(DataFileError, match=message) as error:
        asr.prepare_librispeech_asr(data, tmp_path / "m")
    assert str(error.value).startswith(str(bad.resolve()))
    assert not list((tmp_path / "m").glob("*/prepare_options.json")), "nothing marked prepared"


@pytest.mark.parametrize("spoil", [_missing_audio, _empty_audio, _unreadable_audio, _no_transcript])
def test_the_rewiring_reader_skips_what_asr_refuses(tmp_path, spoil, caplog):
    data = make_librispeech(tmp_path / "LibriSpeech")
    split = data / spoil(data).relative_to(data).parts[0]
    lost = UTTERANCES_PER_SPEAKER if spoil is _no_transcript else 1
    with caplog.at_level("WARNING"):
        rows = read_librispeech_split(split)
    assert len(rows) == UTTERANCES_PER_SPEAKER * len(LIBRI_SPEAKERS[split.name]) - lost
    assert "skipped" in caplog.text
    # 8 kHz is fine for rewiring: counted in 16 kHz samples, resampled when read
    eight = _eight_khz(data)
    row = {r["ID"]: r for r in read_librispeech_split(data / "train-clean-100")}[eight.stem]
    assert row["samples"] == round(soundfile.info(eight).frames * 2)


def test_the_rewiring_prepare_step_keeps_skipping(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    _unreadable_audio(data)
    csv_path = rewire.prepare_librispeech_rewire(data, tmp_path / "rewire")
    columns, rows = read_csv(csv_path)
    assert columns == ["ID", "duration", "wav", "spk_id", "wrd"]
    assert len(rows) == 2 * UTTERANCES_PER_SPEAKER - 1
    assert {row["spk_id"] for row in rows} == {"19", "27"}


def test_asr_missing_folder_or_split_names_the_expected_layout(tmp_path):
    with pytest.raises(DataFolderError, match="no such LibriSpeech folder"):
        asr.prepare_librispeech_asr(tmp_path / "nowhere", tmp_path / "m")
    data = make_librispeech(tmp_path / "LibriSpeech")
    shutil.rmtree(data / "dev-clean")
    with pytest.raises(DataFolderError, match="dev-clean: missing LibriSpeech split folder "
                                              r"\(expected .*trans.txt"):
        asr.prepare_librispeech_asr(data, tmp_path / "m")
    (data / "dev-clean").mkdir()
    with pytest.raises(DataFolderError, match="dev-clean: no transcribed utterance"):
        asr.prepare_librispeech_asr(data, tmp_path / "m")
    with pytest.raises(OptionError, match="--train_splits is empty"):
        asr.prepare_librispeech_asr(data, tmp_path / "m", train_splits=[])


def test_asr_command_line_error_is_one_line(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    bad = _stereo(data)
    done = subprocess.run(
        [sys.executable, str(REPO / "recipes/ASR/librispeech_prepare.py"), "--data_folder",
         str(data), "--manifest_root", str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin",
                                                          "OMP_NUM_THREADS": "1"})
    assert_one_line_error(done, f"{bad.resolve()}: 16000 Hz, 2 channels")


# ------------------------------------------------------------------------------ rewiring subset

def exported_encoder(tmp_path, data):
    """An encoder dir holding the rewiring subset and its record, as the rewiring recipe
    exports them (``recipes/rewire/train.py: export_record``)."""
    csv_path = rewire.prepare_librispeech_rewire(data, tmp_path / "rewire", max_utterances=4)
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    subset = encoder / rewire.SUBSET_NAME
    shutil.copyfile(csv_path.parent / rewire.SUBSET_NAME, subset)
    record = {"strategy": "twin", "data": {"subset_file": rewire.SUBSET_NAME,
                                           "subset_sha256": rewire.subset_digest(subset),
                                           "subset_utterances": 4}}
    (encoder / RECORD_FILE).write_text(json.dumps(record))
    return encoder, [row["ID"] for row in read_csv(csv_path)[1]]


def test_rewiring_exclusions_read_the_recorded_subset(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    encoder, rewired = exported_encoder(tmp_path, data)
    ids, info = rewiring_exclusions(encoder)
    assert ids == set(rewired) and len(ids) == 4
    subset = encoder / rewire.SUBSET_NAME
    assert info["excluded_source"] == str(subset.resolve())
    assert info["excluded_sha256"] == hashlib.sha256(subset.read_bytes()).hexdigest()
    assert info["excluded_utterances"] == 4
    train_ids = {row["ID"] for row in read_csv(
        asr.prepare_librispeech_asr(data, tmp_path / "m") / "train.csv")[1]}
    assert ids < train_ids, "the rewiring subset is drawn from ASR's training split"


def test_rewiring_exclusions_refuse_a_changed_or_missing_subset(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    encoder, _ = exported_encoder(tmp_path, data)
    subset = encoder / rewire.SUBSET_NAME
    subset.write_text(subset.read_text() + "19-198-0099\n")
    with pytest.raises(OptionError, match="sha256") as error:
        rewiring_exclusions(encoder)
    assert str(error.value).startswith(str(subset))
    subset.unlink()
    with pytest.raises(OptionError, match="is missing") as error:
        rewiring_exclusions(encoder)
    assert str(error.value).startswith(str(subset))


def test_no_record_or_no_subset_excludes_nothing(tmp_path):
    assert rewiring_exclusions(tmp_path) == (set(), {"excluded_source": None})
    assert rewiring_exclusions("facebook/wav2vec2-large-lv60") == (set(), {"excluded_source": None})
    (tmp_path / RECORD_FILE).write_text(json.dumps({"strategy": "twin", "data": {}}))
    assert rewiring_exclusions(tmp_path) == (set(), {"excluded_source": None})


# ------------------------------------------------------------------------------ SNIPS

SNIPS_VOICES = {"train": ("Ivy", "Joey", "Amy"), "valid": ("Amy", "Brian"), "test": ("Brian",)}
SNIPS_SELECTED = {"train_speakers": ["Ivy", "Joey"], "dev_speakers": ["Amy"],
                  "test_speakers": ["Brian"]}
SENTENCES = [
    ("PLAY THE BEATLES", "O artist artist", "PlayMusic"),
    ("ROCK & ROLL ON SPOTIFY ?", "O O O O service O", "PlayMusic"),
    ("WILL IT RAIN IN PARIS", "O O O O city", "GetWeather"),
]


def make_snips(root, rate=16000):
    """SUPERB's Audio SNIPS layout: three split folders, all.iob.snips.txt, slots.txt.

    Every voice of ``SNIPS_VOICES`` reads the three sentences in each of its folders;
    Amy is in train/ too but selected for dev only.
    """
    root = Path(root)
    lines = []
    for folder, voices in SNIPS_VOICES.items():
        (root / folder).mkdir(parents=True)
        for voice in voices:
            for n, (words, slots, intent) in enumerate(SENTENCES):
                uttid = f"{voice}-snips-{folder}-{n}"
                soundfile.write(root / folder / f"{uttid}.wav", noise(0.2 + 0.1 * n, rate=rate),
                                rate, subtype="PCM_16")
                lines.append(f"{uttid} BOS {words} EOS\tO {slots} {intent}")
    (root / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    (root / "slots.txt").write_text("O\nartist\ncity\nservice\n")
    return root


def iob_line(root, uttid):
    lines = (root / "all.iob.snips.txt").read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith(f"{uttid} "))
    return lines, number


def rewrite_line(root, uttid, line):
    lines, number = iob_line(root, uttid)
    lines[number] = line
    (root / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    return f"{root / 'all.iob.snips.txt'}:{number + 1}"


def test_snips_manifests_speaker_split_and_labels(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    folder = sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    expected = {"train": ("train", {"Ivy", "Joey"}), "dev": ("valid", {"Amy"}),
                "test": ("test", {"Brian"})}
    for name, (split_folder, voices) in expected.items():
        columns, rows = read_csv(folder / f"{name}.csv")
        assert columns == ["ID", "duration", "wav", "start", "stop", "spk", "wrd", "slots",
                           "intent"]
        assert {row["spk"] for row in rows} == voices, "each set has its own voices only"
        assert len(rows) == len(voices) * len(SENTENCES)
        assert all(Path(row["wav"]).parent == data / split_folder for row in rows)
        assert all(row["ID"].split("-")[0] == row["spk"] for row in rows)
    _, train = read_csv(folder / "train.csv")
    row = {r["ID"]: r for r in train}["Joey-snips-train-1"]
    assert row["wrd"] == "ROCK & ROLL ON SPOTIFY ?" and row["slots"] == "O O O O service O"
    assert row["intent"] == "PlayMusic" and row["start"] == row["stop"] == ""
    assert float(row["duration"]) == pytest.approx(0.3, abs=1e-4)
    assert all(len(r["wrd"].split()) == len(r["slots"].split()) for r in train)
    assert json.loads((folder / "labels.json").read_text()) == {
        "slot_types": ["artist", "city", "service"]}


def test_snips_rerun_reuses_the_folder_and_other_voices_get_their_own(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    folder = sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    assert sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED) == folder
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps
    other = sf.prepare_snips(data, tmp_path / "m", **{**SNIPS_SELECTED, "train_speakers": ["Ivy"]})
    assert other != folder and {r["spk"] for r in read_csv(other / "train.csv")[1]} == {"Ivy"}


def test_snips_default_voices_are_superbs():
    assert sf.TRAIN_SPEAKERS == ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly",
                                 "Matthew", "Salli")
    assert sf.DEV_SPEAKERS == ("Aditi", "Amy", "Geraint", "Nicole")
    assert sf.TEST_SPEAKERS == ("Brian", "Emma", "Raveena", "Russell")


def test_snips_refuses_bad_lines_naming_file_and_line(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    where = rewrite_line(data, "Ivy-snips-train-2",
                         "Ivy-snips-train-2 BOS WILL IT RAIN IN PARIS EOS\tO O O O city GetWeather")
    with pytest.raises(DataFileError, match="5 words but 4 slot labels") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    assert str(error.value).startswith(where + ":")

    data = make_snips(tmp_path / "unknown_slot")
    where = rewrite_line(data, "Amy-snips-valid-0",
                         "Amy-snips-valid-0 BOS PLAY THE BEATLES EOS\tO O band band PlayMusic")
    with pytest.raises(DataFileError, match=r"slot labels \['band'\] not in") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    assert str(error.value).startswith(where + ":")

    data = make_snips(tmp_path / "no_tab")
    where = rewrite_line(data, "Brian-snips-test-0", "Brian-snips-test-0 BOS PLAY EOS O O X")
    with pytest.raises(DataFileError, match="expected '<uttid> BOS") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    assert str(error.value).startswith(where + ":")


def test_snips_refuses_unnormalised_text_listing_utterances_and_characters(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    rewrite_line(data, "Ivy-snips-train-0",
                 "Ivy-snips-train-0 BOS PLAY THE Beatles EOS\tO O artist artist PlayMusic")
    rewrite_line(data, "Brian-snips-test-2",
                 "Brian-snips-test-2 BOS WILL IT RAIN IN PARIS 2 EOS\tO O O O O city O GetWeather")
    with pytest.raises(DataFileError, match="outside s3prl's SF vocabulary") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    message = str(error.value)
    assert message.startswith(str(data / "all.iob.snips.txt"))
    assert "Ivy-snips-train-0: 'a' 'e' 'l' 's' 't'" in message
    assert "Brian-snips-test-2: '2'" in message
    # '&' (read AND) and the marks s3prl skips are fine: the tiny corpus has both
    assert sf.unspellable_characters(["ROCK", "&", "ROLL", "?", "!", ",", ";", "-", "."]) == []


def test_snips_refuses_a_listed_utterance_without_wav_and_a_wav_without_line(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    (data / "valid" / "Amy-snips-valid-1.wav").unlink()
    with pytest.raises(DataFileError, match="Amy-snips-valid-1 has no wav") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    _, number = iob_line(data, "Amy-snips-valid-1")
    assert str(error.value).startswith(f"{data / 'all.iob.snips.txt'}:{number + 1}:")

    data = make_snips(tmp_path / "no_line")
    lines, number = iob_line(data, "Joey-snips-train-2")
    del lines[number]
    (data / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match="has no line in") as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    assert str(error.value).startswith(str(data / "train" / "Joey-snips-train-2.wav"))

    # An unselected voice's missing wav (Amy in train/) does not matter.
    data = make_snips(tmp_path / "unselected")
    (data / "train" / "Amy-snips-train-0.wav").unlink()
    assert sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED).is_dir()


@pytest.mark.parametrize("spoil, message", [
    (lambda wav: soundfile.write(wav, noise(0.3, rate=8000), 8000), "8000 Hz, 1 channel"),
    (lambda wav: soundfile.write(wav, noise(0.3, channels=2), 16000), "16000 Hz, 2 channels"),
    (lambda wav: soundfile.write(wav, np.zeros(0), 16000), "holds no samples"),
    (lambda wav: wav.write_bytes(b""), "cannot read audio header"),
    (lambda wav: wav.write_bytes(b"RIFF garbage" * 20), "cannot read"),
])
def test_snips_refuses_bad_audio_naming_the_file(tmp_path, spoil, message):
    data = make_snips(tmp_path / "SNIPS")
    wav = data / "test" / "Brian-snips-test-1.wav"
    spoil(wav)
    with pytest.raises(DataFileError, match=message) as error:
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)
    assert str(error.value).startswith(str(wav))


def test_snips_refuses_wrong_folders_and_voices(tmp_path):
    data = make_snips(tmp_path / "SNIPS")
    with pytest.raises(DataFolderError, match="lacks .*pass that folder"):
        sf.prepare_snips(tmp_path, tmp_path / "m", **SNIPS_SELECTED)
    with pytest.raises(DataFolderError, match=r"no wav of voice\(s\) \['Nicole'\]") as error:
        sf.prepare_snips(data, tmp_path / "m", **{**SNIPS_SELECTED, "dev_speakers": ["Nicole"]})
    assert str(error.value).startswith(str(data / "valid"))
    with pytest.raises(OptionError, match=r"voices \['Amy'\] are in two sets"):
        sf.prepare_snips(data, tmp_path / "m", **{**SNIPS_SELECTED, "train_speakers": ["Amy"]})
    (data / "slots.txt").write_text("artist\nO\n")
    with pytest.raises(DataFileError, match="line 1 must be 'O'"):
        sf.prepare_snips(data, tmp_path / "m", **SNIPS_SELECTED)


# ------------------------------------------------------------------------------ mini corpus

def test_the_mini_corpus_prepares_with_the_default_splits_and_voices(tmp_path):
    from rewire_lobes.data.mini_corpus.build import DEFAULT_FOLDER
    from rewire_lobes.data.mini_corpus.markers import read_marker

    folder = asr.prepare_librispeech_asr("data/mini/LibriSpeech", tmp_path / "asr")
    counts = read_marker(DEFAULT_FOLDER, "librispeech")["counts"]
    for name, split in (("train", "train-clean-100"), ("dev", "dev-clean"), ("test", "test-clean")):
        rows = read_csv(folder / f"{name}.csv")[1]
        assert len(rows) == counts[split]
        assert len({row["spk"] for row in rows}) == counts[f"{split}_speakers"]
        assert all(row["wrd"] and row["wrd"] == row["wrd"].upper() for row in rows)

    folder = sf.prepare_snips("data/mini/SNIPS", tmp_path / "sf")
    counts = read_marker(DEFAULT_FOLDER, "snips")["counts"]
    for name, split, voices in (("train", "train", sf.TRAIN_SPEAKERS),
                                ("dev", "valid", sf.DEV_SPEAKERS),
                                ("test", "test", sf.TEST_SPEAKERS)):
        rows = read_csv(folder / f"{name}.csv")[1]
        assert len(rows) == counts[split] and {r["spk"] for r in rows} == set(voices)
    slot_types = json.loads((folder / "labels.json").read_text())["slot_types"]
    assert len(slot_types) == counts["slot_types"]
