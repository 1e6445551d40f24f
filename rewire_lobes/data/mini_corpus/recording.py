"""Recording one utterance: espeak-ng speech, sox rate and room, level, placement and noise.

A :class:`Take` is the whole plan of a recording and :func:`record` is a pure function of
it, so a corpus comes out identical whatever order its takes are recorded in.
"""

import dataclasses

import numpy as np

from rewire_lobes.data.mini_corpus.noise import add_noise, limit_peak, rms
from rewire_lobes.data.mini_corpus.tools import run_tool
from rewire_lobes.data.mini_corpus.voices import Voice

SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Take:
    """Everything needed to record one utterance; recording it is a pure function of this.

    Arguments
    ---------
    phrases : tuple of str
        Spoken one after the other with a short pause; their times are reported.
    voice : Voice
    seed : int
        Seeds the pauses, the placement and the noise.
    sample_rate : int
    snr_db : float or None
        Signal-to-noise ratio of the added noise; None adds none.
    noise : str
        ``"white"``, ``"pink"`` or ``"brown"``.
    pad : tuple of float
        Range of the silence before and after the speech, in seconds.
    gap : tuple of float
        Range of the pause between two phrases, in seconds.
    length : int or None
        Exact length in samples; the speech is placed at a random offset (and cut if longer).
    min_seconds : float
        Trailing silence is extended up to this duration.
    """

    phrases: tuple
    voice: Voice
    seed: int
    sample_rate: int = SAMPLE_RATE
    snr_db: float = None
    noise: str = "pink"
    pad: tuple = (0.1, 0.4)
    gap: tuple = (0.12, 0.3)
    length: int = None
    min_seconds: float = 0.0


@dataclasses.dataclass
class Recording:
    """A recorded take: the waveform, where speech is, and where each phrase is (seconds)."""

    wav: np.ndarray
    sample_rate: int
    speech: list
    phrases: list

    @property
    def duration(self):
        """Length in seconds."""
        return len(self.wav) / self.sample_rate


def synthesize(text, voice, sample_rate, tools):
    """Speaks ``text`` with espeak-ng, then resamples (and reverberates) it with sox.

    The text goes to espeak-ng on stdin; no shell is involved.

    Returns
    -------
    numpy.ndarray
        float32 mono waveform at ``sample_rate``.
    """
    espeak = [
        tools.espeak,
        "-v", voice.espeak_name,
        "-p", str(voice.pitch),
        "-s", str(voice.speed),
        "-g", str(voice.word_gap),
        "--stdin",
        "--stdout",
    ]  # fmt: skip
    source_rate, pcm = _parse_wav(run_tool(espeak, text.encode("utf-8")))
    sox = [
        tools.sox, "-V1", "-D",
        "-t", "raw", "-r", str(source_rate), "-e", "signed-integer", "-b", "16", "-c", "1", "-",
        "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-",
        "rate", "-h", str(sample_rate),
    ]  # fmt: skip
    if voice.reverb:
        sox += ["reverb", str(voice.reverb), "50", "40"]
    return np.frombuffer(run_tool(sox, pcm.tobytes()), dtype=np.float32).copy()


def _parse_wav(data):
    """``(sample_rate, int16 samples)`` of espeak-ng's WAV output (its sizes are bogus)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RuntimeError("espeak-ng did not return WAV audio")
    offset, rate = 12, None
    while offset + 8 <= len(data):
        chunk, size = data[offset : offset + 4], int.from_bytes(
            data[offset + 4 : offset + 8], "little"
        )
        if chunk == b"fmt ":
            rate = int.from_bytes(data[offset + 12 : offset + 16], "little")
        elif chunk == b"data":
            body = data[offset + 8 :]
            return rate, np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2")
        offset += 8 + size
    raise RuntimeError("espeak-ng returned WAV audio without a data chunk")


def speech_intervals(wav, sample_rate, min_gap=0.3, threshold_db=-40.0):
    """Speech regions ``[(start, end), ...]`` in seconds, by frame energy (10 ms frames).

    Frames within ``threshold_db`` of the loudest frame are speech; pauses shorter than
    ``min_gap`` seconds are bridged.

    Example
    -------
    >>> tone = np.sin(np.arange(8000) / 5.0).astype(np.float32)
    >>> silence = np.zeros(8000, dtype=np.float32)
    >>> speech_intervals(np.concatenate([silence, tone, silence]), 16000)
    [(0.5, 1.0)]
    """
    hop = sample_rate // 100
    frames = len(wav) // hop
    if frames == 0:
        return []
    energy = np.square(wav[: frames * hop].astype(np.float64)).reshape(frames, hop).mean(axis=1)
    level = 10 * np.log10(energy + 1e-20)
    active = np.flatnonzero(level > level.max() + threshold_db)
    if len(active) == 0:
        return []
    intervals, start, prev = [], active[0], active[0]
    for frame in active[1:]:
        if frame - prev > min_gap * 100:
            intervals.append((start, prev + 1))
            start = frame
        prev = frame
    intervals.append((start, prev + 1))
    return [
        (round(int(s) * hop / sample_rate, 3), round(int(e) * hop / sample_rate, 3))
        for s, e in intervals
    ]


def _trim(wav, sample_rate, margin=0.02):
    intervals = speech_intervals(wav, sample_rate, min_gap=10.0)
    if not intervals:
        return wav
    start = max(0, int((intervals[0][0] - margin) * sample_rate))
    end = min(len(wav), int((intervals[-1][1] + margin) * sample_rate))
    return wav[start:end]


def record(take, tools):
    """Records ``take``: synthesis, level, placement, speech detection, then noise.

    Returns
    -------
    Recording
    """
    rng = np.random.default_rng(take.seed)
    rate = take.sample_rate
    pieces = [_trim(synthesize(text, take.voice, rate, tools), rate) for text in take.phrases]
    parts, spans, cursor = [], [], 0
    for index, piece in enumerate(pieces):
        if index:
            gap = np.zeros(int(rng.uniform(*take.gap) * rate), dtype=np.float32)
            parts.append(gap)
            cursor += len(gap)
        parts.append(piece)
        spans.append((cursor, cursor + len(piece)))
        cursor += len(piece)
    speech = np.concatenate(parts)
    speech *= np.float32(10 ** (take.voice.level_db / 20) / (rms(speech, rate) or 1e-4))

    if take.length:
        room = take.length - len(speech)
        offset = int(rng.integers(0, room + 1)) if room > 0 else 0
        wav = np.zeros(take.length, dtype=np.float32)
        wav[offset : offset + len(speech)] = speech[: take.length]
    else:
        lead, trail = (int(rng.uniform(*take.pad) * rate) for _ in range(2))
        trail = max(trail, int(take.min_seconds * rate) - lead - len(speech))
        offset = lead
        wav = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])

    intervals = speech_intervals(wav, rate)
    if take.snr_db is not None:
        wav = add_noise(wav, rate, take.snr_db, take.noise, rng, intervals)
    phrases = [
        (round((offset + s) / rate, 3), round(min(offset + e, len(wav)) / rate, 3))
        for s, e in spans
    ]
    return Recording(limit_peak(wav), rate, intervals, phrases)

