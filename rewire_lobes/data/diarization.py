"""SUPERB's Libri2Mix diarization data: Kaldi-style dirs, chunks and frame labels.

A split folder holds what s3prl's ``LibriMix/scripts/prepare_diarization.py`` writes
(``superb_protocol.md`` §5)::

    wav.scp    <mixid> <wav path>
    segments   <segid> <mixid> <start s> <end s>
    utt2spk    <segid> <speaker>
    reco2dur   <mixid> <seconds>
    rttm       SPEAKER <mixid> 1 <start> <dur> <NA> <NA> <speaker> <NA>

The training labels come from ``segments`` and ``utt2spk``, as in s3prl; ``rttm`` is the
scoring reference. Frames are counted at the label frame shift (the upstream's downsample
rate: 320 samples), a recording having ``int(reco2dur * 16000 / frame_shift)`` frames.
"""

import math

import numpy as np

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.errors import DataFileError

KALDI_FILES = ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")
# Two 20 ms frames (640 samples) cover the wav2vec 2.0 CNN's receptive field (400).
MIN_CHUNK_FRAMES = 2


def _lines(path):
    """``(line number, fields)`` of the non-blank lines of a Kaldi text file."""
    with open(path, encoding="utf-8") as fin:
        for number, line in enumerate(fin, start=1):
            fields = line.split()
            if fields:
                yield number, fields


def read_table(path, min_fields=2):
    """``{key: rest of the line}`` of a Kaldi table (``wav.scp``, ``utt2spk``, ``reco2dur``).

    A line with fewer than ``min_fields`` fields or a key seen before is a
    :class:`DataFileError` naming the file and line.
    """
    table = {}
    for number, fields in _lines(path):
        if len(fields) < min_fields:
            raise DataFileError(f"{path}:{number}: expected '<key> <value>', got {' '.join(fields)!r}")
        key = fields[0]
        if key in table:
            raise DataFileError(f"{path}:{number}: '{key}' is listed twice")
        table[key] = " ".join(fields[1:])
    return table


def _seconds(where, text, what):
    """``text`` as a time in seconds; ``where`` (file:line) names the place of an error."""
    try:
        value = float(text)
    except ValueError:
        raise DataFileError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DataFileError(f"{where}: {what} {text!r} must be a time >= 0")
    return value


def read_segments(path):
    """``[(segid, mixid, start, end, line number)]`` of a ``segments`` file, checked."""
    segments = []
    for number, fields in _lines(path):
        if len(fields) != 4:
            raise DataFileError(f"{path}:{number}: expected '<segid> <mixid> <start> <end>'")
        start = _seconds(f"{path}:{number}", fields[2], "start")
        end = _seconds(f"{path}:{number}", fields[3], "end")
        if end < start:
            raise DataFileError(f"{path}:{number}: the segment ends ({end}) before it starts ({start})")
        segments.append((fields[0], fields[1], start, end, number))
    return segments


def read_recordings(folder, num_speakers=2):
    """The recordings of one split folder: ``{mixid: {"wav", "duration", "segments"}}``.

    ``segments`` is a list of ``[speaker, start, end]`` from ``segments`` + ``utt2spk``.
    Every inconsistency is a :class:`DataFileError` naming the file (and line): a segment of
    a recording missing from ``wav.scp``, a segment without a speaker in ``utt2spk``, a
    recording without a duration in ``reco2dur``, a recording with more than
    ``num_speakers`` speakers (the head has one output per speaker).
    """
    wavs = read_table(folder / "wav.scp")
    for mixid, value in wavs.items():
        if value.endswith("|"):
            raise DataFileError(f"{folder / 'wav.scp'}: '{mixid}' is a piped command; give "
                                "a wav path per recording")
    durations = read_table(folder / "reco2dur")
    speakers = read_table(folder / "utt2spk")
    recordings = {}
    for mixid, wav in wavs.items():
        if mixid not in durations:
            raise DataFileError(f"{folder / 'reco2dur'}: no duration for '{mixid}' of wav.scp")
        duration = _seconds(f"{folder / 'reco2dur'} ('{mixid}')", durations[mixid], "duration")
        recordings[mixid] = {"wav": wav, "duration": duration, "segments": []}
    for segid, mixid, start, end, number in read_segments(folder / "segments"):
        if mixid not in recordings:
            raise DataFileError(f"{folder / 'segments'}:{number}: recording '{mixid}' is "
                                "missing from wav.scp")
        if segid not in speakers:
            raise DataFileError(f"{folder / 'segments'}:{number}: segment '{segid}' has no "
                                "speaker in utt2spk")
        recordings[mixid]["segments"].append([speakers[segid], start, end])
    for mixid, recording in recordings.items():
        found = recording_speakers(recording["segments"])
        if len(found) > num_speakers:
            raise DataFileError(f"{folder / 'segments'}: '{mixid}' has {len(found)} speakers "
                                f"({', '.join(found)}); the head has {num_speakers} outputs "
                                "(--num_speakers)")
    return recordings


def recording_speakers(segments):
    """The speakers of a recording in s3prl's column order (``np.unique``: sorted)."""
    return sorted({speaker for speaker, _, _ in segments})


def recording_frames(duration, frame_shift):
    """Label frames of a recording: ``int(duration * 16000 / frame_shift)`` (s3prl).

    Example
    -------
    >>> recording_frames(7.2975, 320)
    364
    """
    return int(float(duration) * SAMPLE_RATE / int(frame_shift))


def chunk_bounds(num_frames, chunk_size):
    """Consecutive ``(start, end)`` frame chunks of at most ``chunk_size``, the last one
    possibly shorter: s3prl's train/dev chunks with ``use_last_samples`` and its test
    chunks agree on this (every Libri2Mix mixture, under 40 s, is one 2000-frame chunk).
    A last chunk of fewer than :data:`MIN_CHUNK_FRAMES` frames is too short for the
    encoder's CNN (400 samples) and joins the chunk before it.

    Example
    -------
    >>> chunk_bounds(4500, 2000)
    [(0, 2000), (2000, 4000), (4000, 4500)]
    >>> chunk_bounds(364, 2000)
    [(0, 364)]
    >>> chunk_bounds(4001, 2000)
    [(0, 2000), (2000, 4001)]
    """
    bounds = [(start, min(start + chunk_size, num_frames))
              for start in range(0, num_frames, chunk_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_CHUNK_FRAMES:
        bounds[-2:] = [(bounds[-2][0], num_frames)]
    return bounds


def frame_labels(segments, num_speakers, start, end, frame_shift):
    """Speaker activity ``[end - start, num_speakers]`` (0/1, float32) of frames ``start..end``.

    A segment marks frames ``rint(st * 16000 / shift)`` up to ``rint(et * 16000 / shift)``
    (s3prl) of its speaker's column, speakers in :func:`recording_speakers` order; both
    columns can be 1 (overlap). A segment is clipped to the chunk, so one that spans a
    whole chunk marks all of it (s3prl marks nothing then: only recordings longer than a
    chunk, none in Libri2Mix, are affected).

    Example
    -------
    >>> frame_labels([["b", 0.0, 0.04], ["a", 0.02, 0.1]], 2, 0, 6, 320)[:, 0].tolist()
    [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    labels = np.zeros((end - start, num_speakers), dtype=np.float32)
    columns = {speaker: index for index, speaker in enumerate(recording_speakers(segments))}
    shift = int(frame_shift)
    for speaker, seg_start, seg_end in segments:
        # s3prl's order of operations: at .5 frames rint's rounding to even depends on it.
        first = max(int(np.rint(seg_start * SAMPLE_RATE / shift)), start)
        last = min(int(np.rint(seg_end * SAMPLE_RATE / shift)), end)
        if first < last:
            labels[first - start:last - start, columns[speaker]] = 1.0
    return labels
