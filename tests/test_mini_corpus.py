"""The embedded mini corpus: real layouts, labels that match the audio, determinism, crash safety.

The full corpus is generated once per session (fixture ``mini_corpus`` in conftest.py,
into ``data/mini``); the determinism, relocation and failure tests use small
(``scale=0.1``) corpora in temporary folders.
"""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import soundfile

from rewire_lobes.data import mini_corpus as generator
from rewire_lobes.data.mini_corpus import context as writer_context
from rewire_lobes.data.mini_corpus import (
    INSTALL_COMMAND,
    KEYWORDS,
    SNIPS_VOICES,
    MissingToolError,
    ensure_embedded_data,
    ensure_mini_corpus,
    read_manifest,
    speech_commands_split,
)
from rewire_lobes.data.speech_commands import MAX_NUM_WAVS_PER_CLASS, hash_split

REPO = Path(__file__).resolve().parent.parent
SMALL = 0.1


def _lines(path):
    return Path(path).read_text(encoding="utf-8").splitlines()


def _hashes(root):
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def _mtimes(root):
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """A small speech_commands + quesst14 corpus (seed 7), for the cheap tests."""
    root = tmp_path_factory.mktemp("small") / "mini"
    return ensure_mini_corpus(root, corpora=["speech_commands", "quesst14"], seed=7, scale=SMALL)


# ---------------------------------------------------------------------------------------
# Layouts, parsed as the real corpora are


def test_librispeech_layout(mini_corpus):
    root = mini_corpus / "LibriSpeech"
    speakers, vocabulary = {}, set()
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        flacs = sorted((root / split).glob("*/*/*.flac"))
        for flac in flacs:
            spk, chapter = flac.parent.parent.name, flac.parent.name
            assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}\.flac", flac.name)
            info = soundfile.info(str(flac))
            assert (info.format, info.subtype, info.samplerate, info.channels) == (
                "FLAC",
                "PCM_16",
                16000,
                1,
            )
            assert 2.0 <= info.duration <= 8.0, flac
        transcribed = {}
        for trans in (root / split).glob("*/*/*.trans.txt"):
            spk, chapter = trans.parent.parent.name, trans.parent.name
            assert trans.name == f"{spk}-{chapter}.trans.txt"
            for line in _lines(trans):
                utt, words = line.split(" ", 1)
                assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", words), line
                assert (trans.parent / f"{utt}.flac").exists()
                transcribed[utt] = words
                vocabulary.update(words.split())
        assert sorted(transcribed) == sorted(f.stem for f in flacs)
        speakers[split] = {f.parent.parent.name for f in flacs}
        if split == "train-clean-100":
            assert len(flacs) >= 200 and len(speakers[split]) >= 20
    assert not speakers["train-clean-100"] & speakers["dev-clean"]
    assert not speakers["train-clean-100"] & speakers["test-clean"]
    assert not speakers["dev-clean"] & speakers["test-clean"]
    assert len(vocabulary) >= 200
    # the transcripts are what was spoken
    manifest = {item["id"]: item for item in read_manifest(mini_corpus, "librispeech")}
    for trans in root.glob("*/*/*/*.trans.txt"):
        for line in _lines(trans):
            utt, words = line.split(" ", 1)
            assert manifest[utt]["words"] == words


def test_speech_commands_layout(mini_corpus):
    root = mini_corpus / "speech_commands_v0.01"
    words = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("_")]
    assert set(KEYWORDS) <= set(words) and len(set(words) - set(KEYWORDS)) >= 5
    clips = sorted(f"{w}/{f.name}" for w in words for f in (root / w).glob("*.wav"))
    for clip in clips:
        assert re.fullmatch(r"[a-z]+/[0-9a-f]{8}_nohash_\d+\.wav", clip)
        info = soundfile.info(str(root / clip))
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (
            16000,
            16000,
            1,
            "PCM_16",
        )
    noises = list((root / "_background_noise_").glob("*.wav"))
    assert len(noises) >= 3 and all(soundfile.info(str(n)).duration >= 10 for n in noises)

    # the lists are the real hash rule's: validation p < 10, testing 10 <= p < 20, sorted
    for list_name, split in (
        ("validation_list.txt", "validation"),
        ("testing_list.txt", "testing"),
    ):
        listed = _lines(root / list_name)
        assert listed == sorted(c for c in clips if speech_commands_split(c) == split)
    superb = {"dev": 0, "train": 0}
    for clip in clips:
        split = speech_commands_split(clip)
        superb["dev" if split == "validation" else "train"] += split != "testing"
    assert superb["dev"] > 0 and superb["train"] > 0

    test = mini_corpus / "speech_commands_test_set_v0.01"
    assert sorted(d.name for d in test.iterdir()) == sorted(KEYWORDS + ("_silence_", "_unknown_"))
    for folder in test.iterdir():
        files = list(folder.glob("*.wav"))
        assert files and all(soundfile.info(str(f)).frames == 16000 for f in files), folder


def test_speech_commands_labels_match_audio(mini_corpus):
    items = read_manifest(mini_corpus, "speech_commands")
    clips = [i for i in items if "word" in i and i["path"].startswith("speech_commands_v0.01/")]
    on_disk = {
        f"speech_commands_v0.01/{p.parent.name}/{p.name}"
        for p in (mini_corpus / "speech_commands_v0.01").glob("[!_]*/*.wav")
    }
    assert {i["path"] for i in clips} == on_disk
    for item in clips:
        folder = item["path"].split("/")[1]
        assert folder == item["word"] and item["phrases"], item  # the folder's word was spoken
        assert item["split"] == speech_commands_split(item["path"])
        (start, end), *_ = item["phrases"]
        assert 0 <= start < end <= 1.0
    for item in items:
        if item["path"].startswith("speech_commands_test_set_v0.01/") and "word" in item:
            assert item["label"] == (item["word"] if item["word"] in KEYWORDS else "_unknown_")


FSC_ACTIONS = {"activate", "bring", "change language", "deactivate", "decrease", "increase"}
FSC_OBJECTS = {
    "none",
    "music",
    "lights",
    "volume",
    "heat",
    "lamp",
    "newspaper",
    "juice",
    "socks",
    "shoes",
    "Chinese",
    "Korean",
    "English",
    "German",
}
FSC_LOCATIONS = {"none", "kitchen", "bedroom", "washroom"}


def _fsc_rows(root, split):
    with open(root / "data" / f"{split}_data.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        assert next(reader) == [
            "",
            "path",
            "speakerId",
            "transcription",
            "action",
            "object",
            "location",
        ]
        return list(reader)


def _tensorflow_which_set(filename):
    """TensorFlow's ``input_data.which_set`` (10 % validation, 10 % testing), transcribed."""
    hash_name = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    percentage_hash = (int(hashlib.sha1(hash_name.encode()).hexdigest(), 16) % (2**27)) * (
        100.0 / (2**27 - 1)
    )
    if percentage_hash < 10:
        return "validation"
    if percentage_hash < 20:
        return "testing"
    return "training"


def test_hash_split_is_tensorflows_rule(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "recipes" / "KS"))
    from speech_commands_prepare import which_split

    assert MAX_NUM_WAVS_PER_CLASS == 2**27 - 1
    expected = {  # p = 0.68, 16.40, 19.31, 29.02, 95.15
        "yes/026290a7_nohash_0.wav": "validation",
        "0c40e715_nohash_1.wav": "testing",
        "cat/0cb74144_nohash_0.wav": "testing",
        "014f9f65_nohash_2.wav": "training",
        "dog/012c8314_nohash_0.wav": "training",
    }
    prepare_names = {"validation": "dev", "testing": "hash_test", "training": "train"}
    for name, split in expected.items():
        assert _tensorflow_which_set(name) == split, name
        assert hash_split(name) == split.replace("training", "train"), name
        assert speech_commands_split(name) == hash_split(name), name
        assert which_split(Path(name).name) == prepare_names[split], name
    # all clips of a speaker share a split, whatever the folder and take number
    speaker = "0c40e715"
    assert {hash_split(f"{w}/{speaker}_nohash_{n}.wav") for w in KEYWORDS for n in range(3)} == {
        "testing"
    }


def test_fluent_speech_commands_layout(mini_corpus):
    root = mini_corpus / "fluent_speech_commands_dataset"
    speakers, labels = {}, {}
    for split in ("train", "valid", "test"):
        rows = _fsc_rows(root, split)
        assert [int(r[0]) for r in rows] == list(range(len(rows)))
        for _, path, speaker, text, action, obj, location in rows:
            assert re.fullmatch(rf"wavs/speakers/{speaker}/[0-9a-f-]{{36}}\.wav", path)
            assert (root / path).exists()
            assert labels.setdefault(text, (action, obj, location)) == (action, obj, location)
        speakers[split] = {r[2] for r in rows}
        if split == "train":
            assert {r[4] for r in rows} == FSC_ACTIONS
            assert {r[5] for r in rows} == FSC_OBJECTS
            assert {r[6] for r in rows} == FSC_LOCATIONS
            assert len({tuple(r[4:]) for r in rows}) == 31
    assert not (speakers["train"] & speakers["valid"] or speakers["train"] & speakers["test"])
    assert len(list(root.glob("wavs/speakers/*/*.wav"))) == sum(
        len(_fsc_rows(root, s)) for s in ("train", "valid", "test")
    )
    # what each wav says is its row's transcription
    spoken = {item["path"]: item for item in read_manifest(mini_corpus, "fluent_speech_commands")}
    for split in ("train", "valid", "test"):
        for row in _fsc_rows(root, split):
            assert spoken[row[1]]["transcription"] == row[3] and spoken[row[1]]["phrases"]


def test_snips_layout(mini_corpus):
    root = mini_corpus / "SNIPS"
    slot_types = _lines(root / "slots.txt")
    assert slot_types[0] == "O" and len(set(slot_types)) == len(slot_types)
    lines = _lines(root / "all.iob.snips.txt")
    ids = set()
    for line in lines:
        text, labels = line.split("\t")
        uttid, bos, *words, eos = text.split(" ")
        first, *slots, intent = labels.split(" ")
        assert (bos, eos, first) == ("BOS", "EOS", "O") and len(slots) == len(words)
        assert all(w == w.upper() for w in words) and set(slots) <= set(slot_types)
        assert intent in {"PlayMusic", "GetWeather", "BookRestaurant", "AddToPlaylist", "RateBook"}
        speaker, split = re.fullmatch(r"(\w+)-snips-(train|valid|test)-\d+", uttid).groups()
        assert speaker in SNIPS_VOICES[split]
        ids.add(uttid)
    for split, voices in SNIPS_VOICES.items():
        wavs = list((root / split).glob("*.wav"))
        assert {w.name.split("-")[0] for w in wavs} == set(voices)
        assert all(soundfile.info(str(w)).samplerate == 16000 for w in wavs)
    assert ids == {w.stem for w in root.glob("*/*.wav")}
    every_voice = [v.espeak_name for voices in SNIPS_VOICES.values() for v in voices.values()]
    assert len(set(every_voice)) == len(every_voice) == 16


def _table(path):
    return [line.split() for line in _lines(path)]


def test_diarization_kaldi_dirs(mini_corpus):
    root = mini_corpus / "diarization"
    libri = {item["id"]: item for item in read_manifest(mini_corpus, "librispeech")}
    split_speakers, overlapped = {}, 0
    for split in ("train", "dev", "test"):
        folder = root / split
        wav_scp = dict(_table(folder / "wav.scp"))
        reco2dur = {mix: float(d) for mix, d in _table(folder / "reco2dur")}
        assert list(wav_scp) == list(reco2dur) and wav_scp
        for mixid, path in wav_scp.items():
            assert Path(path).is_absolute() and Path(path) == root / "wav" / split / f"{mixid}.wav"
            assert abs(soundfile.info(path).duration - reco2dur[mixid]) < 1e-3
            first, second = mixid.split("_")
            assert first in libri and second in libri
        segments = _table(folder / "segments")
        utt2spk = _table(folder / "utt2spk")
        assert [s[0] for s in segments] == [u[0] for u in utt2spk]
        rttm = [line.split("\t") for line in _lines(folder / "rttm")]
        assert len(rttm) == len(segments)
        turns = {}
        for (segid, mixid, start, end), (_, speaker), fields in zip(segments, utt2spk, rttm):
            start, end = float(start), float(end)
            assert segid == f"{mixid}_{round(start * 1000):06d}_{round(end * 1000):06d}"
            assert 0 <= start < end <= reco2dur[mixid] + 1e-6
            assert speaker in {str(libri[u]["speaker"]) for u in mixid.split("_")}
            assert (
                fields[:3] == ["SPEAKER", mixid, "1"] and fields[7] == speaker and len(fields) == 9
            )
            assert (
                abs(float(fields[3]) - start) < 1e-6
                and abs(float(fields[4]) - (end - start)) < 1e-6
            )
            turns.setdefault(mixid, {}).setdefault(speaker, []).append((start, end))
        spk2utt = {spk: mixids for spk, *mixids in _table(folder / "spk2utt")}
        assert spk2utt == {
            spk: [s[1] for s, u in zip(segments, utt2spk) if u[1] == spk]
            for spk in dict.fromkeys(u[1] for u in utt2spk)
        }
        for mixid, by_speaker in turns.items():
            assert len(by_speaker) == 2, mixid
            a, b = by_speaker.values()
            overlapped += any(s1 < e2 and s2 < e1 for s1, e1 in a for s2, e2 in b)
        split_speakers[split] = set(spk2utt)
    assert overlapped > 0
    assert not split_speakers["train"] & (split_speakers["dev"] | split_speakers["test"])


def _quesst_list(root, name):
    """``(path, language)`` pairs, the path resolved as s3prl does (first component dropped)."""
    pairs = []
    for line in _lines(root / "scoring" / f"language_key_{name}.lst"):
        path, language = line.split()
        pairs.append((root / re.sub(r"^.*?/", "", path), language))
    return pairs


def test_quesst14_layout(mini_corpus):
    _check_quesst(mini_corpus / "quesst14Database")


def _check_quesst(root):
    documents = _quesst_list(root, "utterances")
    assert {p for p, _ in documents} == set((root / "Audio").glob("*.wav"))
    durations = {p.stem: soundfile.info(str(p)).duration for p, _ in documents}
    assert all(soundfile.info(str(p)).samplerate == 8000 for p, _ in documents)
    for split in ("dev", "eval"):
        queries = _quesst_list(root, split)
        for pairs in (documents, queries):
            languages = [language for _, language in pairs]
            assert "nnenglish" in languages and set(languages) - {"nnenglish"}  # some to filter out
            assert all(p.exists() for p, _ in pairs)
        assert {p for p, _ in queries} == set((root / f"{split}_queries").glob("*.wav"))
        english = {p.stem for p, language in queries if language == "nnenglish"}

        truth = root / "scoring" / f"groundtruth_quesst14_{split}"
        ecf = ET.parse(truth / "quesst14.ecf.xml").getroot()
        excerpts = {e.get("audio_filename"): float(e.get("dur")) for e in ecf.iter("excerpt")}
        assert excerpts.keys() == durations.keys()
        assert all(abs(excerpts[d] - durations[d]) < 1e-3 for d in durations)
        tlist = ET.parse(truth / f"quesst14_{split}.tlist.xml").getroot()
        assert {t.get("termid") for t in tlist.iter("term")} == {p.stem for p, _ in queries}
        found = set()
        for line in _lines(truth / f"quesst14_{split}.rttm"):
            kind, doc, channel, tbeg, dur, query, *_ = line.split()
            assert (kind, channel) == ("LEXEME", "1") and doc in durations
            assert 0 <= float(tbeg) and float(tbeg) + float(dur) <= durations[doc] + 1e-3
            if query != "NO_KEYWORD":
                assert query in {p.stem for p, _ in queries}
                found.add(query)
        assert english & found and english - found  # queries that occur, and some that do not


def test_summary_and_size(mini_corpus):
    summary = json.loads((mini_corpus / "MINI_CORPUS.json").read_text())
    assert summary["generator_version"] == generator.GENERATOR_VERSION
    assert summary["seed"] == generator.DEFAULT_SEED
    assert {"espeak-ng", "sox"} <= set(summary["tools"])
    assert set(summary["corpora"]) == set(generator.CORPORA)
    assert all(corpus["counts"] for corpus in summary["corpora"].values())
    size = sum(p.stat().st_size for p in mini_corpus.rglob("*") if p.is_file())
    assert size < 150 * 2**20


# ---------------------------------------------------------------------------------------
# Behaviour: no-op rerun, determinism, relocation, crash safety, missing tools


def test_rerun_is_a_fast_no_op(mini_corpus):
    before = _mtimes(mini_corpus)
    started = time.time()
    assert ensure_mini_corpus() == mini_corpus
    assert time.time() - started < 2.0
    assert _mtimes(mini_corpus) == before


def test_same_seed_same_files(small_corpus, tmp_path):
    again = ensure_mini_corpus(
        tmp_path / "again", corpora=["speech_commands", "quesst14"], seed=7, scale=SMALL
    )
    assert _hashes(again) == _hashes(small_corpus)
    _check_quesst(again / "quesst14Database")


def test_other_seed_other_files(small_corpus, tmp_path):
    other = ensure_mini_corpus(tmp_path / "other", corpora=["speech_commands"], seed=8, scale=SMALL)
    ours, theirs = _hashes(small_corpus), _hashes(other)
    shared = [name for name in theirs if name.endswith(".wav") and name in ours]
    assert all(ours[name] != theirs[name] for name in shared)
    assert read_manifest(other, "speech_commands") != read_manifest(small_corpus, "speech_commands")


def test_moved_corpus_gets_its_wav_scp_rewritten(tmp_path):
    first = ensure_mini_corpus(tmp_path / "first", corpora=["diarization"], scale=SMALL)
    moved = tmp_path / "moved"
    os.rename(first, moved)
    before = _mtimes(moved)
    assert ensure_mini_corpus(moved, corpora=["diarization"], scale=SMALL) == moved
    changed = {path for path, mtime in _mtimes(moved).items() if before.get(path) != mtime}
    assert changed == {
        str(moved / "diarization" / split / "wav.scp") for split in ("train", "dev", "test")
    }
    for split in ("train", "dev", "test"):
        for mixid, path in _table(moved / "diarization" / split / "wav.scp"):
            assert (
                Path(path) == moved / "diarization" / "wav" / split / f"{mixid}.wav"
                and Path(path).exists()
            )


def test_interrupted_run_leaves_nothing_trusted(tmp_path, monkeypatch):
    root = tmp_path / "mini"
    real_save, calls = writer_context.save_audio, []

    def failing_save(*args):
        calls.append(args[0])
        if len(calls) > 5:
            raise KeyboardInterrupt("simulated crash")
        real_save(*args)

    monkeypatch.setattr(writer_context, "save_audio", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ensure_mini_corpus(root, corpora=["speech_commands"], scale=SMALL, workers=1)
    assert calls and all(not Path(path).exists() for path in calls)
    assert sorted(p.name for p in root.iterdir()) == []  # no folder, marker or summary
    monkeypatch.setattr(writer_context, "save_audio", real_save)
    ensure_mini_corpus(root, corpora=["speech_commands"], scale=SMALL)
    assert (root / "MINI_CORPUS.json").exists() and read_manifest(root, "speech_commands")


def test_missing_tools_give_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither espeak-ng nor sox
    with pytest.raises(MissingToolError, match=re.escape(INSTALL_COMMAND)) as err:
        ensure_mini_corpus(tmp_path / "mini", corpora=["snips"])
    assert "espeak-ng and sox" in str(err.value)
    assert not (tmp_path / "mini" / "MINI_CORPUS.json").exists()

    which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name == "sox" else which(name, path=os.defpath)
    )
    with pytest.raises(MissingToolError, match="sox is not installed"):
        generator.find_tools()


def test_command_line(small_corpus):
    args = [
        "--output_folder",
        str(small_corpus),
        "--corpora",
        "speech_commands",
        "quesst14",
        "--seed",
        "7",
        "--scale",
        str(SMALL),
    ]
    done = subprocess.run(
        [sys.executable, str(REPO / "utils" / "make_mini_corpus.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(small_corpus) in done.stdout and "speech_commands" in done.stdout


def test_corpus_names_and_embedded_data(tmp_path, mini_corpus):
    assert mini_corpus.name == "mini"
    with pytest.raises(ValueError, match="Unknown corpus"):
        ensure_mini_corpus(tmp_path, corpora=["timit"])
    real = tmp_path / "LibriSpeech"
    assert ensure_embedded_data(real) == real and not real.exists()  # real data is left alone
    assert ensure_embedded_data("data/mini/LibriSpeech") == REPO / "data" / "mini" / "LibriSpeech"


def test_recordings_hold_speech_above_the_noise(mini_corpus):
    """Each clip's loudest 100 ms is well above its quietest: speech, not noise alone."""
    for path in sorted((mini_corpus / "speech_commands_v0.01" / "yes").glob("*.wav"))[:10]:
        wav, rate = soundfile.read(str(path))
        frames = np.square(wav[: len(wav) // 1600 * 1600]).reshape(-1, 1600).mean(axis=1)
        assert 10 * np.log10(frames.max() / max(frames.min(), 1e-12)) > 3, path
