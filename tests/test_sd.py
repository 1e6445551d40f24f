"""SD data: Kaldi dirs read and checked, chunks, frame labels, feature/label alignment."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from rewire_lobes.data.diarization import chunk_bounds, frame_labels, recording_frames
from rewire_lobes.downstream.diarization import chunk_rows, match_length, stitch
from rewire_lobes.errors import DataFileError
from rewire_lobes.metrics.diarization import read_rttm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "SD"))
from diarization_prepare import prepare_diarization  # noqa: E402

RATE = 16000


# ---------------------------------------------------------------------- labels and chunks
def test_chunks_cover_every_frame_once_and_the_last_one_is_shorter():
    for frames, size in [(4500, 2000), (4000, 2000), (1, 2000), (2000, 2000), (2001, 2000)]:
        bounds = chunk_bounds(frames, size)
        covered = [frame for start, end in bounds for frame in range(start, end)]
        assert covered == list(range(frames))
        assert all(end - start == size for start, end in bounds[:-1])


def test_frame_labels_mark_each_speaker_column_in_sorted_order_with_overlap():
    shift = 320  # 20 ms
    segments = [["spk2", 0.10, 0.30], ["spk1", 0.20, 0.50]]
    labels = frame_labels(segments, 2, 0, 30, shift)
    # spk1 sorts first: column 0 holds frames rint(0.2 * 50) = 10 .. rint(0.5 * 50) = 25
    assert labels[:, 0].nonzero()[0].tolist() == list(range(10, 25))
    assert labels[:, 1].nonzero()[0].tolist() == list(range(5, 15))
    assert labels.sum(axis=1).max() == 2  # both speak in frames 10..14


def test_frame_labels_of_a_chunk_clip_segments_even_one_spanning_the_chunk():
    segments = [["a", 0.0, 10.0], ["b", 1.0, 1.1]]
    whole = frame_labels(segments, 2, 0, 500, 320)
    for start, end in chunk_bounds(500, 120):
        np.testing.assert_array_equal(frame_labels(segments, 2, start, end, 320),
                                      whole[start:end])
    assert whole[:, 0].all()  # s3prl's chunking would leave the middle chunks unlabelled


def test_frame_marks_round_as_s3prl_computes_them():
    # 1.09 s * 16000 / 320 = 54.5, which rint takes to 54 (even); 1.09 * 50 gives 54.500...01.
    labels = frame_labels([["a", 1.09, 1.15]], 1, 0, 60, 320)
    assert labels[:, 0].nonzero()[0].tolist() == list(range(54, 58))


def test_hypothesis_turns_are_scored_as_the_rttm_writes_them(tmp_path):
    from rewire_lobes.metrics.diarization import (
        diarization_error,
        posteriors_to_turns,
        write_rttm,
    )

    posteriors = np.zeros((40, 2))
    posteriors[3:17, 0], posteriors[11:29, 1] = 0.9, 0.8
    turns = {"mix": posteriors_to_turns(posteriors, 0.5, 1, 0.016, "mix")}  # 16 ms frames
    write_rttm(tmp_path / "hyp.rttm", turns)
    written, _ = read_rttm(tmp_path / "hyp.rttm")
    assert [(s, e) for s, e, _ in written["mix"]] == [(s, e) for s, e, _ in turns["mix"]]
    reference = {"mix": [(0.05, 0.27, "A"), (0.17, 0.45, "B")]}
    assert diarization_error(reference, written)["der"] == diarization_error(reference, turns)["der"]


def test_decision_grid_options_are_checked_before_training():
    from rewire_lobes.downstream.diarization import check_decision_grid
    from rewire_lobes.errors import OptionError

    check_decision_grid([0.3, 0.5], [1, 11])
    for thresholds, widths in [([], [1]), ([0.5], [2]), ([1.5], [1]), ([0.5], [])]:
        with pytest.raises(OptionError):
            check_decision_grid(thresholds, widths)


def test_a_recording_shorter_than_two_frames_is_refused_by_name():
    rows = [{"ID": "tiny", "duration": "0.03", "wav": "t.wav", "segments": "[]"}]
    with pytest.raises(DataFileError, match="t.wav.*tiny"):
        chunk_rows(rows, 320, 2000)


def test_recording_frames_truncate_as_s3prl():
    assert recording_frames(7.2975, 320) == math.floor(7.2975 * 50)
    assert recording_frames(2.0, 160) == 200


def test_chunk_rows_give_audio_spans_matching_label_frames_and_stitch_back():
    rows = [{"ID": "mix", "duration": "50.0", "wav": "m.wav", "segments": "[]"}]
    chunks = chunk_rows(rows, 320, 2000)
    assert list(chunks) == ["mix@0", "mix@2000"]
    second = chunks["mix@2000"]
    assert (second["start"], second["stop"]) == (2000 * 320, 2500 * 320)
    assert second["num_frames"] == 500 and second["first_frame"] == 2000
    parts = {"mix": {c["first_frame"]: np.full((c["num_frames"], 2), c["first_frame"])
                     for c in chunks.values()}}
    joined = stitch(parts)["mix"]
    assert joined.shape == (2500, 2) and joined[1999, 0] == 0 and joined[2000, 0] == 2000


def test_match_length_repeats_the_last_valid_frame_and_truncates_per_utterance():
    features = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)
    out = match_length(features, torch.tensor([3, 5]), torch.tensor([4, 4]))
    assert out.shape == (2, 4, 1)
    assert out[0, :, 0].tolist() == [0, 1, 2, 2]  # padding (frames 3, 4) is never read
    assert out[1, :, 0].tolist() == [5, 6, 7, 8]
    doubled = match_length(features[:1], torch.tensor([2]), torch.tensor([4]))
    assert doubled[0, :, 0].tolist() == [0, 0, 1, 1]  # labels at twice the frame rate


# ---------------------------------------------------------------------- preparation
def write_wav(path, seconds=1.0, rate=RATE, channels=1):
    samples = np.random.default_rng(0).normal(0, 0.1, (int(seconds * rate), channels))
    soundfile.write(str(path), samples.astype(np.float32), rate)
    return path


def write_kaldi_split(folder, recordings):
    """``recordings``: {mixid: [(speaker, start, end), ...]}; 2 s 16 kHz wavs."""
    folder.mkdir(parents=True)
    wav_scp, segments, utt2spk, reco2dur, rttm = [], [], [], [], []
    for mixid, turns in recordings.items():
        wav = write_wav(folder / f"{mixid}.wav", seconds=2.0)
        wav_scp.append(f"{mixid} {wav}")
        reco2dur.append(f"{mixid} 2.0")
        for speaker, start, end in turns:
            segid = f"{mixid}_{round(start * 1000):06d}_{round(end * 1000):06d}"
            segments.append(f"{segid} {mixid} {start} {end}")
            utt2spk.append(f"{segid} {speaker}")
            rttm.append(f"SPEAKER\t{mixid}\t1\t{start}\t{round(end - start, 2)}\t<NA>\t<NA>\t{speaker}\t<NA>")
    for name, lines in [("wav.scp", wav_scp), ("segments", segments), ("utt2spk", utt2spk),
                        ("reco2dur", reco2dur), ("rttm", rttm)]:
        (folder / name).write_text("".join(f"{line}\n" for line in lines))


@pytest.fixture
def kaldi_root(tmp_path):
    root = tmp_path / "Libri2Mix_sd"
    for split in ("train", "dev", "test"):
        write_kaldi_split(root / split, {
            f"{split}a_{split}b": [("11", 0.0, 1.0), ("22", 0.5, 1.8)],
            f"{split}c_{split}d": [("33", 0.2, 0.9), ("44", 1.0, 1.9)],
        })
    return root


def prepare(root, tmp_path):
    return prepare_diarization(str(root), str(tmp_path / "manifests"))


def test_prepare_writes_one_row_per_recording_with_its_segments(kaldi_root, tmp_path):
    folder = prepare(kaldi_root, tmp_path)
    import csv

    with open(folder / "dev.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    assert [row["ID"] for row in rows] == ["deva_devb", "devc_devd"]
    assert json.loads(rows[0]["segments"]) == [["11", 0.0, 1.0], ["22", 0.5, 1.8]]
    reference, _ = read_rttm(folder / "test.rttm")
    assert sorted(reference) == ["testa_testb", "testc_testd"]
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["train"]["recordings"] == 2 and stats["train"]["speakers"] == 4


def test_an_rttm_turn_of_a_recording_missing_from_wav_scp_names_both(kaldi_root, tmp_path):
    rttm = kaldi_root / "dev" / "rttm"
    rttm.write_text(rttm.read_text() + "SPEAKER\tghost_mix\t1\t0.0\t1.0\t<NA>\t<NA>\t9\t<NA>\n")
    with pytest.raises(DataFileError, match=r"rttm.*ghost_mix.*wav\.scp"):
        prepare(kaldi_root, tmp_path)


def test_overlapping_turns_of_one_speaker_are_merged_and_counted(kaldi_root, tmp_path):
    rttm = kaldi_root / "test" / "rttm"
    rttm.write_text(rttm.read_text()
                    + "SPEAKER\ttesta_testb\t1\t0.8\t0.6\t<NA>\t<NA>\t11\t<NA>\n")
    folder = prepare(kaldi_root, tmp_path)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["test"]["rttm"]["merged_turns"] == 1
    reference, _ = read_rttm(folder / "test.rttm")
    turns_of_11 = [(s, e) for s, e, speaker in reference["testa_testb"] if speaker == "11"]
    assert turns_of_11 == [(0.0, pytest.approx(1.4))]


@pytest.mark.parametrize("kind, message", [
    ("48k", r"48000 Hz"), ("stereo", r"2 channels"), ("empty", r"no samples"),
])
def test_bad_audio_is_refused_naming_the_file(kaldi_root, tmp_path, kind, message):
    wav = kaldi_root / "train" / "traina_trainb.wav"
    if kind == "48k":
        write_wav(wav, seconds=2.0, rate=48000)
    elif kind == "stereo":
        write_wav(wav, seconds=2.0, channels=2)
    else:
        soundfile.write(str(wav), np.zeros((0, 1), np.float32), RATE)
    with pytest.raises(DataFileError, match=message) as err:
        prepare(kaldi_root, tmp_path)
    assert str(wav) in str(err.value)


def test_a_missing_wav_names_wav_scp_and_says_how_to_fix_it(kaldi_root, tmp_path):
    (kaldi_root / "dev" / "devc_devd.wav").unlink()
    with pytest.raises(DataFileError, match=r"wav\.scp.*devc_devd.*does not exist.*rewrite"):
        prepare(kaldi_root, tmp_path)


def test_a_third_speaker_and_a_segment_without_recording_are_refused(kaldi_root, tmp_path):
    segments = kaldi_root / "train" / "segments"
    utt2spk = kaldi_root / "train" / "utt2spk"
    segments.write_text(segments.read_text() + "x_001 traina_trainb 1.0 1.5\n")
    utt2spk.write_text(utt2spk.read_text() + "x_001 55\n")
    with pytest.raises(DataFileError, match=r"traina_trainb.*3 speakers"):
        prepare(kaldi_root, tmp_path)
    segments.write_text(segments.read_text() + "y_001 nowhere 1.0 1.5\n")
    with pytest.raises(DataFileError, match=r"segments:\d+: recording 'nowhere' is missing"):
        prepare_diarization(str(kaldi_root), str(tmp_path / "other"), num_speakers=3)
