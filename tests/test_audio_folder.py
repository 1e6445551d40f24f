"""A folder of the user's own audio: the scan, transcript files, and the rewiring prepare.

Real speech from ../shared/data/ljspeech_sample (22.05 kHz) in several formats and a
nested layout, beside files that must be skipped and counted, never silently dropped.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_rewire_recipe import RECIPE, _load

from rewire_lobes.data import audio_folder as scanning
from rewire_lobes.data.audio_folder import scan_audio_folder
from rewire_lobes.data.transcripts import match_transcripts, read_transcripts
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError

prepare = _load("rewire_own_audio_prepare", RECIPE / "own_audio_prepare.py")

LJSPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "ljspeech_sample"
needs_ljspeech = pytest.mark.skipif(not LJSPEECH.is_dir(), reason="../shared/data is absent")
CLIPS = ["LJ001-0002", "LJ001-0003", "LJ001-0005", "LJ001-0006"]


@pytest.fixture
def folder(tmp_path):
    """wav, flac, ogg and mp3 clips in subfolders, plus a broken, a silent, a too long
    and a hidden file, and a text file."""
    root = tmp_path / "audio"
    formats = [("a", "wav"), ("a", "flac"), ("b/c", "ogg"), ("b/c", "mp3")]
    for clip, (sub, suffix) in zip(CLIPS, formats):
        (root / sub).mkdir(parents=True, exist_ok=True)
        data, rate = soundfile.read(LJSPEECH / "wavs" / f"{clip}.wav")
        soundfile.write(root / sub / f"{clip}.{suffix.upper() if suffix == 'flac' else suffix}",
                        data, rate)
    (root / "a" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    soundfile.write(root / "b" / "silent.wav", np.zeros(16000), 16000)
    soundfile.write(root / "b" / "long.flac", 0.1 * np.ones(190_000), 16000)
    soundfile.write(root / "a" / ".hidden.wav", 0.1 * np.ones(16000), 16000)
    (root / "readme.txt").write_text("not audio")
    return root


def ids(rows):
    return sorted(row["ID"] for row in rows)


@needs_ljspeech
def test_scan_keeps_readable_speech_and_names_every_skip(folder):
    scan = scan_audio_folder(folder)
    assert ids(scan.rows) == ["a/LJ001-0002", "a/LJ001-0003", "b/c/LJ001-0005", "b/c/LJ001-0006"]
    assert scan.counts() == {"unreadable": 1, "silent": 1, "too_long": 1}
    assert scan.skipped["unreadable"][0]["path"].endswith("broken.wav")
    assert scan.skipped["silent"][0]["path"].endswith("silent.wav")
    assert "190000 samples" in scan.skipped["too_long"][0]["reason"]
    for row in scan.rows:  # counted at 16 kHz, whatever the file's rate
        info = soundfile.info(row["wav"])
        assert row["samples"] == pytest.approx(info.frames * 16000 / info.samplerate, abs=2)
        assert float(row["duration"]) == pytest.approx(row["samples"] / 16000, abs=1e-4)
    assert {row["spk_id"] for row in scan.rows} == {"a", "b/c"}


def test_a_folder_without_usable_audio_is_a_clear_error(tmp_path):
    with pytest.raises(DataFolderError, match="no such audio folder"):
        scan_audio_folder(tmp_path / "missing")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(DataFolderError, match=r"no audio file \(.wav, .flac, .ogg, .mp3\)"):
        scan_audio_folder(tmp_path / "text")
    (tmp_path / "bad").mkdir()
    soundfile.write(tmp_path / "bad" / "quiet.wav", np.zeros(800), 16000)
    (tmp_path / "bad" / "junk.flac").write_bytes(b"fLaC junk")
    with pytest.raises(DataFolderError, match="none of its 2 audio files is usable "
                                              r"\(1 unreadable, 1 silent\)"):
        scan_audio_folder(tmp_path / "bad")
    (tmp_path / "twice").mkdir()
    for suffix in ("wav", "flac"):
        soundfile.write(tmp_path / "twice" / f"take.{suffix}", 0.1 * np.ones(800), 16000)
    with pytest.raises(DataFolderError, match="same utterance ID 'take'"):
        scan_audio_folder(tmp_path / "twice")


def test_the_mini_corpus_read_as_a_plain_audio_folder(mini_corpus):
    root = Path(mini_corpus) / "LibriSpeech" / "train-clean-100"
    scan = scan_audio_folder(root)
    flacs = list(root.rglob("*.flac"))
    assert len(scan.rows) == len(flacs) > 100 and len(set(ids(scan.rows))) == len(flacs)
    assert not any(scan.counts().values())


# ------------------------------------------------------------------------ transcript files
def test_transcript_formats(tmp_path):
    lj = tmp_path / "metadata.csv"
    lj.write_text('LJ1|Mr. "Smith" said|Mister "Smith" said\nLJ2|No, 1|No, one\n')
    assert read_transcripts(lj) == {"LJ1": 'Mister "Smith" said', "LJ2": "No, one"}
    tsv = tmp_path / "t.tsv"
    tsv.write_text("duration\tPath\tsentence\n1.0\ta/x.wav\thello  there\n2.0\tb/y.flac\tbye\n")
    assert read_transcripts(tsv) == {"a/x.wav": "hello there", "b/y.flac": "bye"}
    kaldi = tmp_path / "text"
    kaldi.write_text("utt1 HELLO, WORLD\n\nutt2 GOOD   MORNING\n")
    assert read_transcripts(kaldi) == {"utt1": "HELLO, WORLD", "utt2": "GOOD MORNING"}
    comma = tmp_path / "c.csv"
    comma.write_text("ID,wrd\nu1,\"one, two\"\nu2,three, four,  five\n")
    assert read_transcripts(comma) == {"u1": "one, two", "u2": "three, four, five"}
    quoted = tmp_path / "q.csv"  # csv.QUOTE_ALL, Windows line ends
    quoted.write_text('"path","text"\r\n"a.wav","hi, you"\r\n', newline="")
    assert read_transcripts(quoted) == {"a.wav": "hi, you"}
    tabbed = tmp_path / "kaldi_text"
    tabbed.write_text("utt1 HELLO\nutt2\tGOOD MORNING\n")
    assert read_transcripts(tabbed) == {"utt1": "HELLO", "utt2": "GOOD MORNING"}


@pytest.mark.parametrize("text, message", [
    ("", "no transcript in it"),
    ("u1,hello\nu2,bye\n", ":1: no text after the key 'u1,hello'"),
    ("id\ttext\nu1\thello\nu1\tbye\n", ":3: 'u1' has a second, different transcript"),
    ("id\ttext\nu1\thello\nu2\n", ":3: one column only"),
    ("id\ttext\tspeaker\nu1\thello\n", ":2: 2 fields, its header has 3"),
    ("text,id\nhello, you,u1\n", ":2: 3 fields, its header has 2"),
])
def test_bad_transcript_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(DataFileError, match=message):
        read_transcripts(path)


def test_keys_match_by_id_path_or_a_unique_stem(tmp_path):
    root = tmp_path / "audio"
    rows = [{"ID": uid} for uid in ("a/x", "a/y", "b/y", "c/z")]
    listing = tmp_path / "lists" / "t.tsv"
    listing.parent.mkdir()
    transcripts = {"a/x": "by id", str(root / "b" / "y.wav"): "by absolute path",
                   "../audio/c/z.mp3": "relative to the list", "y.wav": "ambiguous stem",
                   "nothing": "no file"}
    texts, report = match_transcripts(rows, transcripts, root, listing)
    assert texts == {"a/x": "by id", "b/y": "by absolute path", "c/z": "relative to the list"}
    assert (report["unmatched_keys"], report["ambiguous_keys"]) == (1, 1)
    assert report["examples"]["without_transcript"] == ["a/y"]
    texts, _ = match_transcripts([{"ID": "a/x"}, {"ID": "b/w"}], {"x": "stem", "w.flac": "name"},
                                 root, listing)
    assert texts == {"a/x": "stem", "b/w": "name"}
    with pytest.raises(DataFileError, match="'a/x' and 'x.wav' are both 'a/x'"):
        match_transcripts([{"ID": "a/x"}], {"a/x": "one", "x.wav": "two"}, root, listing)


# ------------------------------------------------------------------------------ prepare
@needs_ljspeech
def test_prepare_writes_counts_and_reuses_its_manifest(folder, tmp_path, monkeypatch):
    listing = tmp_path / "metadata.csv"
    listing.write_text("".join(line + "\n" for line in
                               (LJSPEECH / "metadata.csv").read_text().splitlines()
                               if line.split("|")[0] in CLIPS[:3]))
    out = tmp_path / "out"
    csv_path = prepare.prepare_audio_folder_rewire(folder, out, transcripts_file=listing,
                                                   needs_text=True)
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert ids(rows) == ["a/LJ001-0002", "a/LJ001-0003", "b/c/LJ001-0005"]
    assert all(row["wrd"] for row in rows)
    report = json.loads((out / "audio_folder_report.json").read_text())
    assert report["skipped_counts"] == {"unreadable": 1, "silent": 1, "too_long": 1,
                                        "no_transcript": 1}
    assert report["skipped"]["no_transcript"][0]["path"].endswith("LJ001-0006.mp3")
    assert (out / "rewiring_subset.txt").read_text().split() == ids(rows)

    scans = []
    monkeypatch.setattr(prepare, "scan_audio_folder",
                        lambda *a, **k: scans.append(1) or scanning.scan_audio_folder(*a, **k))
    prepare.prepare_audio_folder_rewire(folder, out, transcripts_file=listing, needs_text=True)
    assert scans == [], "same files, same options: the manifest is reused"
    shutil.copy(folder / "a" / "LJ001-0002.wav", folder / "a" / "copy.wav")
    prepare.prepare_audio_folder_rewire(folder, out, transcripts_file=listing, needs_text=True)
    assert scans == [1], "a new file: scanned again"
    with open(listing, "a") as handle:
        handle.write("copy|x|a copy\n")
    prepare.prepare_audio_folder_rewire(folder, out, transcripts_file=listing, needs_text=True)
    assert scans == [1, 1] and "a/copy" in (out / "rewiring_subset.txt").read_text()


@needs_ljspeech
def test_prepare_with_an_asr_pass_counts_empty_transcripts(folder, tmp_path):
    calls = []

    def transcribe(rows):
        calls.append(sorted(row["ID"] for row in rows))
        return {row["ID"]: "" if row["ID"] == calls[0][0] else f" text  of {row['ID']} "
                for row in rows}

    out = tmp_path / "asr"
    csv_path = prepare.prepare_audio_folder_rewire(folder, out, needs_text=True,
                                                   transcribe=transcribe,
                                                   transcriber_identity={"content_hash": "h"},
                                                   max_utterances=3)
    with open(csv_path, newline="") as handle:
        rows = {row["ID"]: row["wrd"] for row in csv.DictReader(handle)}
    assert [len(ids) for ids in calls] == [3, 1], "the subset, then one to refill the empty one"
    assert calls[0][0] not in rows, "an empty transcript is skipped"
    assert all(text == f"text of {uid}" for uid, text in rows.items()) and len(rows) == 3
    report = json.loads((out / "audio_folder_report.json").read_text())
    assert report["skipped_counts"]["empty_transcript"] == 1
    assert (report["audio_files"], report["utterances"], report["not_in_subset"]) == (7, 3, 0)
    assert report["transcripts"] == {"source": "asr", "model": {"content_hash": "h"}}

    # The files the subset leaves out are counted; when nothing is left the report is
    # written before the error that names it.
    prepare.prepare_audio_folder_rewire(folder, tmp_path / "two", needs_text=True,
                                        transcribe=lambda rows: {r["ID"]: "x" for r in rows},
                                        transcriber_identity={}, max_utterances=2)
    report = json.loads((tmp_path / "two" / "audio_folder_report.json").read_text())
    assert (report["utterances"], report["not_in_subset"], report["max_utterances"]) == (2, 2, 2)
    with pytest.raises(OptionError, match="no utterance is left") as caught:
        prepare.prepare_audio_folder_rewire(folder, tmp_path / "mute", needs_text=True,
                                            transcribe=lambda rows: {}, transcriber_identity={})
    report = json.loads((tmp_path / "mute" / "audio_folder_report.json").read_text())
    assert str(tmp_path / "mute" / "audio_folder_report.json") in str(caught.value)
    assert report["utterances"] == 0 and report["skipped_counts"]["empty_transcript"] == 4
    with pytest.raises(OptionError, match="--transcripts FILE or --asr_source DIR"):
        prepare.prepare_audio_folder_rewire(folder, tmp_path / "none", needs_text=True)
    # Twin needs no text: every usable file, with an empty wrd column.
    csv_path = prepare.prepare_audio_folder_rewire(folder, tmp_path / "twin")
    with open(csv_path, newline="") as handle:
        assert [row["wrd"] for row in csv.DictReader(handle)] == [""] * 4
