"""The embedded mini corpus: six small synthetic corpora in their real on-disk layouts.

Every recipe runs offline on data generated here, written exactly as the real dataset
lays itself out on disk, so the same ``<dataset>_prepare.py`` reads real and mini data:

==========================  ===========================================================
corpus (CLI name)           folders under the output root
==========================  ===========================================================
``librispeech``             ``LibriSpeech/{train-clean-100,dev-clean,test-clean}/...``
``speech_commands``         ``speech_commands_v0.01/`` and ``speech_commands_test_set_v0.01/``
``fluent_speech_commands``  ``fluent_speech_commands_dataset/``
``snips``                   ``SNIPS/`` (as SUPERB's preprocessing leaves Audio-SNIPS)
``diarization``             ``diarization/`` (Kaldi dirs as SUPERB's LibriMix recipe leaves them)
``quesst14``                ``quesst14Database/``
==========================  ===========================================================

Speech comes from espeak-ng: each speaker is a voice (accent + variant) with its own
pitch, speed, word gap, level and room (sox ``reverb``). sox resamples to 16 kHz (8 kHz
for QUESST, as the real one). Noise (white, pink or brown) is added at a random SNR.
Everything random is drawn from ``numpy`` generators seeded by ``(seed, corpus, ...)``
and each recording is a pure function of its plan, so the output is identical for the
same seed, scale and tool versions, whatever the thread scheduling.

Crash safety: each corpus folder is built under a temporary name and renamed when done
(``atomic_dir``); then its marker ``_generation/<corpus>.json`` (the generation manifest:
every file with its labels, voice and noise) is written; ``MINI_CORPUS.json`` comes last.
A rerun with the same arguments finds the markers and returns at once.

Example
-------
>>> from rewire_lobes.data.mini_corpus import ensure_mini_corpus
>>> root = ensure_mini_corpus("data/mini", corpora=["speech_commands"])  # doctest: +SKIP
"""

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import string
import subprocess
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

from rewire_lobes.io_utils import atomic_dir, atomic_path, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
DEFAULT_SEED = 1234
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FOLDER = REPO_ROOT / "data" / "mini"
SUMMARY_FILE = "MINI_CORPUS.json"
MARKER_FOLDER = "_generation"
INSTALL_COMMAND = "sudo apt-get install -y espeak-ng sox"
SAMPLE_RATE = 16000


class MissingToolError(RuntimeError):
    """espeak-ng or sox is not installed; the message gives the install command."""


# ---------------------------------------------------------------------------------------
# External tools


@dataclasses.dataclass(frozen=True)
class Tools:
    """Paths and versions of the two programs the generator runs."""

    espeak: str
    sox: str
    versions: dict


def find_tools():
    """Locates espeak-ng and sox and reads their versions.

    Returns
    -------
    Tools

    Raises
    ------
    MissingToolError
        When either program is not on ``PATH``; the message names the install command.
    """
    paths = {name: shutil.which(name) for name in ("espeak-ng", "sox")}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise MissingToolError(
            f"The mini corpus is synthesised with espeak-ng and sox, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed (not found on PATH). "
            f"Install them with:\n    {INSTALL_COMMAND}"
        )
    versions = {
        "espeak-ng": _first_line([paths["espeak-ng"], "--version"]),
        "sox": _first_line([paths["sox"], "--version"]),
        "numpy": np.__version__,
        "libsndfile": soundfile.__libsndfile_version__,
    }
    return Tools(espeak=paths["espeak-ng"], sox=paths["sox"], versions=versions)


def _first_line(command):
    """First line of a program's ``--version`` output, without machine-specific paths.

    Example
    -------
    >>> _first_line(["printf", "/usr/bin/sox:      SoX v14.4.2\\n"])
    'SoX v14.4.2'
    """
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    if not text:
        return "unknown"
    line = re.sub(r"\s+Data at:.*", "", text.splitlines()[0])  # espeak-ng names its data folder
    return re.sub(r"^/\S*:\s*", "", line).strip()  # sox starts with its own path


def _run(command, data):
    """Runs ``command`` (an argument list, never a shell) with ``data`` on stdin."""
    done = subprocess.run(command, input=data, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed (exit {done.returncode}): "
            f"{done.stderr.decode(errors='replace').strip()}"
        )
    return done.stdout


# ---------------------------------------------------------------------------------------
# Speakers

ACCENTS = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


@dataclasses.dataclass(frozen=True)
class Voice:
    """A synthetic speaker: an espeak-ng voice and variant, its prosody and its room.

    Arguments
    ---------
    language : str
        espeak-ng voice, e.g. ``"en-us"`` or ``"cs"``.
    variant : str
        espeak-ng variant, e.g. ``"m3"`` or ``"f2"``.
    pitch : int
        Base pitch, 0 to 99.
    speed : int
        Words per minute.
    word_gap : int
        Extra pause between words, in units of 10 ms.
    reverb : int
        sox reverberance in percent; 0 records in a dry room.
    level_db : float
        RMS level of the speech, in dB below full scale.
    """

    language: str
    variant: str
    pitch: int = 50
    speed: int = 165
    word_gap: int = 0
    reverb: int = 0
    level_db: float = -24.0

    @property
    def espeak_name(self):
        """The ``-v`` argument of espeak-ng."""
        return f"{self.language}+{self.variant}"

    @property
    def sex(self):
        """``"F"`` for the female variants, else ``"M"``."""
        return "F" if self.variant.startswith("f") else "M"

    def describe(self):
        """A compact description, e.g. ``"en-us+f2 p52 s160 g1 r20 -24dB"``."""
        return (
            f"{self.espeak_name} p{self.pitch} s{self.speed} g{self.word_gap} "
            f"r{self.reverb} {self.level_db:.0f}dB"
        )


def sample_voices(rng, count, languages=ACCENTS, variants=VARIANTS):
    """Draws ``count`` speakers; accent and variant pairs are distinct while they last.

    Arguments
    ---------
    rng : numpy.random.Generator
    count : int
    languages, variants : sequence of str
        espeak-ng voices and variants to combine.

    Returns
    -------
    list of Voice
    """
    pairs = [(lang, var) for lang in languages for var in variants]
    order = []
    while len(order) < count:
        order.extend(rng.permutation(len(pairs)).tolist())
    voices = []
    for index in order[:count]:
        language, variant = pairs[index]
        voices.append(
            Voice(
                language=language,
                variant=variant,
                pitch=int(rng.integers(25, 76)),
                speed=int(rng.integers(135, 191)),
                word_gap=int(rng.integers(0, 3)),
                reverb=int(rng.integers(10, 46)) if rng.random() < 0.5 else 0,
                level_db=round(float(rng.uniform(-30.0, -20.0)), 1),
            )
        )
    return voices


# ---------------------------------------------------------------------------------------
# Synthesis, noise and audio helpers


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
    source_rate, pcm = _parse_wav(_run(espeak, text.encode("utf-8")))
    sox = [
        tools.sox, "-V1", "-D",
        "-t", "raw", "-r", str(source_rate), "-e", "signed-integer", "-b", "16", "-c", "1", "-",
        "-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-",
        "rate", "-h", str(sample_rate),
    ]  # fmt: skip
    if voice.reverb:
        sox += ["reverb", str(voice.reverb), "50", "40"]
    return np.frombuffer(_run(sox, pcm.tobytes()), dtype=np.float32).copy()


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


def _rms(wav, sample_rate, intervals=None):
    """RMS of ``wav`` over ``intervals`` (seconds), or over the whole signal."""
    if intervals:
        wav = np.concatenate(
            [wav[int(s * sample_rate) : int(e * sample_rate)] for s, e in intervals]
        )
    return float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0


def colored_noise(rng, length, color="white"):
    """Unit-RMS noise with a 1/f^0 (white), 1/f (pink) or 1/f^2 (brown) power spectrum.

    Example
    -------
    >>> noise = colored_noise(np.random.default_rng(0), 16000, "pink")
    >>> round(float(np.sqrt(np.mean(noise**2))), 3)
    1.0
    """
    exponents = {"white": 0.0, "pink": 0.5, "brown": 1.0}
    noise = rng.standard_normal(length)
    if exponents[color]:
        spectrum = np.fft.rfft(noise)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0
        noise = np.fft.irfft(spectrum / freqs ** exponents[color], length)
    return (noise / (np.sqrt(np.mean(noise**2)) + 1e-12)).astype(np.float32)


def add_noise(wav, sample_rate, snr_db, color, rng, intervals=None):
    """``wav`` plus ``color`` noise at ``snr_db`` relative to the speech level."""
    noise = colored_noise(rng, len(wav), color)
    speech_rms = _rms(wav, sample_rate, intervals) or 1e-4
    return wav + noise * np.float32(speech_rms / 10 ** (snr_db / 20))


def _limit_peak(wav, peak=0.95):
    top = float(np.max(np.abs(wav))) if len(wav) else 0.0
    return wav * np.float32(peak / top) if top > peak else wav


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
    speech *= np.float32(10 ** (take.voice.level_db / 20) / (_rms(speech, rate) or 1e-4))

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
    return Recording(_limit_peak(wav), rate, intervals, phrases)


def save_audio(path, wav, sample_rate):
    """Writes 16-bit mono audio atomically; FLAC for ``.flac`` paths, else WAV."""
    pcm = np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    file_format = "FLAC" if Path(path).suffix == ".flac" else "WAV"
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), pcm, sample_rate, format=file_format, subtype="PCM_16")


def write_lines(path, lines):
    """Writes ``lines`` (newline-terminated) atomically."""
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def _seconds(value):
    """A time as Kaldi and RTTM files show it: ``0.42``, ``5.0``."""
    return repr(round(float(value), 2))


# ---------------------------------------------------------------------------------------
# Text: a small English grammar for read speech


def _words(text):
    return tuple(dict.fromkeys(text.split()))


NAMES = _words(
    "john mary thomas anne henry margaret william alice george elizabeth robert emily "
    "charles sarah edward lucy james helen arthur grace walter martha"
)
NOUNS = _words(
    "house garden river forest village window door letter book table chair road horse dog "
    "bird tree mountain ship city king queen soldier captain doctor teacher child mother "
    "father brother sister friend stranger morning evening night winter summer fire water "
    "stone bread money paper lamp candle church school market field hill valley bridge "
    "island storm wind rain snow moon star voice song story question answer journey dream "
    "picture box bottle basket coat hat ring sword key clock bell boat wagon farmer merchant "
    "servant kitchen meadow harbour castle shadow silence heart face hand"
)
ADJECTIVES = _words(
    "old young little great small dark bright cold warm quiet strange gentle heavy empty "
    "narrow broad silent ancient happy weary brave proud poor rich wild green red white "
    "black golden grey long short deep sudden pale lonely careful curious honest distant"
)
PAST_TRANSITIVE = _words(
    "saw found took opened closed carried followed watched remembered heard met left reached "
    "crossed built painted visited answered wrote read bought sold lost kept held pulled "
    "pushed touched filled covered showed brought sent called asked thanked helped"
)
PAST_INTRANSITIVE = _words(
    "walked ran waited laughed smiled slept arrived returned listened wondered whispered "
    "shouted trembled hurried stayed rested sat stood fell danced sang cried spoke hesitated"
)
BASE_VERBS = _words(
    "see find take open close carry follow watch remember hear meet leave reach cross build "
    "visit answer write read buy keep hold help"
)
NEGATED_MODALS = _words("didn't couldn't wouldn't shouldn't")
ADVERBS = _words(
    "slowly quickly quietly suddenly softly gladly carefully silently happily sadly again "
    "together alone early late often never always there here yesterday outside nearby away"
)
PREPOSITIONS = _words(
    "in on under near beside behind across through into over along toward from with without "
    "above below"
)
CONJUNCTIONS = _words("and but while because when although so until after before")
DETERMINERS = _words("the the the a a his her their that this my our every some")


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng):
    if rng.random() < 0.15:
        return [_pick(rng, NAMES)]
    words = [f"{_pick(rng, NAMES)}'s"] if rng.random() < 0.1 else [_pick(rng, DETERMINERS)]
    if rng.random() < 0.5:
        words.append(_pick(rng, ADJECTIVES))
    words.append(_pick(rng, NOUNS))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def _clause(rng):
    words = _noun_phrase(rng)
    kind = rng.random()
    if kind < 0.15:
        words += [_pick(rng, NEGATED_MODALS), _pick(rng, BASE_VERBS)] + _noun_phrase(rng)
    elif kind < 0.6:
        words += [_pick(rng, PAST_TRANSITIVE)] + _noun_phrase(rng)
    else:
        words.append(_pick(rng, PAST_INTRANSITIVE))
    if rng.random() < 0.35:
        words.append(_pick(rng, ADVERBS))
    if rng.random() < 0.5:
        words += [_pick(rng, PREPOSITIONS)] + _noun_phrase(rng)
    return words


def sentence_clauses(rng, min_words):
    """Clauses (lists of lower-case words) of one sentence with at least ``min_words`` words.

    Every clause after the first starts with a conjunction.
    """
    clauses = [_clause(rng)]
    while sum(map(len, clauses)) < min_words:
        clauses.append([_pick(rng, CONJUNCTIONS)] + _clause(rng))
    return clauses


# ---------------------------------------------------------------------------------------
# Orchestration helpers shared by the corpus writers


@dataclasses.dataclass
class _Context:
    """What a corpus writer needs: where to write, how much, and how to render."""

    root: Path
    staging: dict
    seed: int
    scale: float
    tools: Tools
    workers: int

    def rng(self, *keys):
        """A generator seeded by the corpus seed and ``keys`` (strings or ints)."""
        entropy = [self.seed] + [zlib.crc32(str(key).encode()) for key in keys]
        return np.random.default_rng(entropy)

    def count(self, full, minimum=1):
        """``full`` scaled by ``scale``, at least ``minimum``."""
        return max(minimum, int(round(full * self.scale)))

    def map(self, function, jobs):
        """``[function(job) for job in jobs]`` on a thread pool, in order."""
        if self.workers <= 1 or len(jobs) <= 1:
            return [function(job) for job in jobs]
        with ThreadPoolExecutor(self.workers) as pool:
            futures = [pool.submit(function, job) for job in jobs]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:  # fail fast: do not render the rest
                    future.cancel()
                raise

    def render(self, jobs):
        """Records and saves ``[(take, path), ...]`` in parallel; returns their metadata."""

        def render_one(job):
            take, path = job
            recording = record(take, self.tools)
            save_audio(path, recording.wav, recording.sample_rate)
            return _describe(recording, take)

        return self.map(render_one, jobs)


def _describe(recording, take):
    return {
        "duration": round(recording.duration, 4),
        "speech": recording.speech,
        "phrases": recording.phrases,
        "voice": take.voice.describe(),
        "snr_db": None if take.snr_db is None else round(take.snr_db, 1),
        "noise": None if take.snr_db is None else take.noise,
    }


def _noise_color(rng):
    return _pick(rng, ("white", "pink", "brown"))


def _seed(rng):
    return int(rng.integers(2**31))


# ---------------------------------------------------------------------------------------
# LibriSpeech

LIBRISPEECH_SPLITS = {  # split: (speakers, utterances per speaker)
    "train-clean-100": (24, 9),
    "dev-clean": (6, 5),
    "test-clean": (6, 5),
}
LIBRISPEECH_SECONDS = (2.0, 8.0)


def _write_librispeech(ctx):
    rng = ctx.rng("librispeech")
    folder = ctx.staging["LibriSpeech"]
    speakers = {split: ctx.count(n, 2) for split, (n, _) in LIBRISPEECH_SPLITS.items()}
    total = sum(speakers.values())
    speaker_ids = rng.choice(np.arange(19, 9000), total, replace=False).tolist()
    chapter_ids = rng.choice(np.arange(1000, 300000), 2 * total, replace=False).tolist()
    voices = sample_voices(rng, total)

    jobs, speaker_lines = [], []
    for split, (_, per_speaker) in LIBRISPEECH_SPLITS.items():
        for _ in range(speakers[split]):
            speaker, voice = speaker_ids.pop(0), voices.pop(0)
            speaker_lines.append(
                f"{speaker:<5}| {voice.sex} | {split:<16} | espeak-ng {voice.describe()}"
            )
            chapters = [chapter_ids.pop(0) for _ in range(2 if rng.random() < 0.3 else 1)]
            for index in range(per_speaker):
                chapter = chapters[index % len(chapters)]
                utt = f"{speaker}-{chapter}-{index // len(chapters):04d}"
                target_words = rng.uniform(2.6, 6.5) * voice.speed / 60
                take = Take(
                    phrases=(),
                    voice=voice,
                    seed=_seed(rng),
                    snr_db=float(rng.uniform(20, 40)),
                    noise=_noise_color(rng),
                    gap=(0.1, 0.7),
                    min_seconds=LIBRISPEECH_SECONDS[0],
                )
                clauses = sentence_clauses(rng, int(target_words))
                path = folder / split / str(speaker) / str(chapter) / f"{utt}.flac"
                jobs.append((utt, split, speaker, chapter, take, clauses, path))

    def render(job):
        utt, split, speaker, chapter, take, clauses, path = job
        for keep in range(len(clauses), 0, -1):  # drop trailing clauses until it fits 8 s
            take = dataclasses.replace(
                take, phrases=tuple(" ".join(words) for words in clauses[:keep])
            )
            recording = record(take, ctx.tools)
            if recording.duration <= LIBRISPEECH_SECONDS[1] or keep == 1:
                break
        save_audio(path, recording.wav, recording.sample_rate)
        words = " ".join(" ".join(c) for c in clauses[:keep]).upper()
        item = {"id": utt, "split": split, "speaker": speaker, "chapter": chapter, "words": words}
        item["path"] = f"LibriSpeech/{path.relative_to(folder).as_posix()}"
        return {**item, **_describe(recording, take)}

    items = ctx.map(render, jobs)
    chapters = {}
    for item in items:
        chapters.setdefault((item["split"], item["speaker"], item["chapter"]), []).append(item)
    for (split, speaker, chapter), utts in chapters.items():
        write_lines(
            folder / split / str(speaker) / str(chapter) / f"{speaker}-{chapter}.trans.txt",
            [f"{u['id']} {u['words']}" for u in sorted(utts, key=lambda u: u["id"])],
        )
    write_lines(
        folder / "SPEAKERS.TXT",
        [
            "; Synthetic speakers of the embedded mini corpus (rewire_lobes.data.mini_corpus)",
            ";ID  |SEX| SUBSET           | VOICE",
        ]
        + speaker_lines,
    )
    counts = {split: sum(1 for i in items if i["split"] == split) for split in LIBRISPEECH_SPLITS}
    counts.update({f"{split}_speakers": n for split, n in speakers.items()})
    return counts, items


# ---------------------------------------------------------------------------------------
# Speech Commands v0.01

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_COMMAND_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "tree", "wow")
BACKGROUND_NOISES = {
    "white_noise": "white",
    "pink_noise": "pink",
    "brown_noise": "brown",
    "babble": None,
}
BACKGROUND_SECONDS = 12
SPEECH_COMMANDS_SPEAKERS = {"train": 14, "validation": 3, "testing": 3}
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1


def speech_commands_split(filename):
    """TensorFlow's hash split of Speech Commands, as SUPERB applies it (protocol §2).

    Returns ``"validation"`` (p < 10), ``"testing"`` (10 <= p < 20) or ``"train"``.

    Example
    -------
    >>> speech_commands_split("yes/026290a7_nohash_0.wav")
    'validation'
    """
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    percent = (digest % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)
    return "validation" if percent < 10 else "testing" if percent < 20 else "train"


def _speaker_ids_by_split(rng, counts):
    """8-hex-digit speaker ids whose hash split fills ``counts`` (``{split: n}``)."""
    chosen = {split: [] for split in counts}
    while any(len(chosen[s]) < n for s, n in counts.items()):
        speaker = f"{int(rng.integers(2**32)):08x}"
        split = speech_commands_split(f"{speaker}_nohash_0.wav")
        if len(chosen[split]) < counts[split]:
            chosen[split].append(speaker)
    return chosen


def _write_speech_commands(ctx):
    rng = ctx.rng("speech_commands")
    main = ctx.staging["speech_commands_v0.01"]
    test = ctx.staging["speech_commands_test_set_v0.01"]
    counts = {split: ctx.count(n) for split, n in SPEECH_COMMANDS_SPEAKERS.items()}
    by_split = _speaker_ids_by_split(rng, counts)
    speakers = [s for split in ("train", "validation", "testing") for s in by_split[split]]
    voices = dict(zip(speakers, sample_voices(rng, len(speakers))))

    jobs, items = [], []
    for speaker in speakers:
        for word in KEYWORDS + OTHER_COMMAND_WORDS:
            takes = 1 if rng.random() < (0.95 if word in KEYWORDS else 0.6) else 0
            takes += int(takes and rng.random() < 0.25)
            for n in range(takes):
                voice = dataclasses.replace(
                    voices[speaker], speed=voices[speaker].speed + int(rng.integers(-15, 16))
                )
                take = Take(
                    phrases=(word,),
                    voice=voice,
                    seed=_seed(rng),
                    snr_db=float(rng.uniform(5, 30)),
                    noise=_noise_color(rng),
                    length=SAMPLE_RATE,
                )
                relative = f"{word}/{speaker}_nohash_{n}.wav"
                jobs.append((take, main / relative))
                items.append(
                    {
                        "path": f"speech_commands_v0.01/{relative}",
                        "word": word,
                        "speaker": speaker,
                        "split": speech_commands_split(relative),
                    }
                )
    for item, meta in zip(items, ctx.render(jobs)):
        item.update(meta)

    noise_items = _write_background_noise(ctx, rng, main / "_background_noise_")
    for split, list_name in (
        ("validation", "validation_list.txt"),
        ("testing", "testing_list.txt"),
    ):
        listed = sorted(i["path"].split("/", 1)[1] for i in items if i["split"] == split)
        write_lines(main / list_name, listed)

    test_items = _write_speech_commands_test_set(rng, main, test, items)
    return (
        {
            "clips": len(items),
            "speakers": {split: len(ids) for split, ids in by_split.items()},
            "background_noise": len(noise_items),
            "test_set": len(test_items),
        },
        items + noise_items + test_items,
    )


def _write_background_noise(ctx, rng, folder):
    """Long noise recordings: coloured noises and a babble of several voices."""
    length = BACKGROUND_SECONDS * SAMPLE_RATE
    babble_voices = sample_voices(rng, 4)
    takes = [
        Take(
            phrases=(", ".join(" ".join(c) for c in sentence_clauses(rng, 30)),),
            voice=voice,
            seed=_seed(rng),
            pad=(0.0, 0.5),
        )
        for voice in babble_voices
    ]
    voices = ctx.map(lambda take: record(take, ctx.tools).wav, takes)
    items = []
    for name, color in BACKGROUND_NOISES.items():
        if color:
            wav = 0.1 * colored_noise(rng, length, color)
        else:  # babble: every voice looped over the whole length, each from its own offset
            wav = np.zeros(length, dtype=np.float32)
            for voice in voices:
                looped = np.tile(voice, length // len(voice) + 2)
                start = int(rng.integers(len(voice)))
                wav += looped[start : start + length]
            wav *= np.float32(0.1 / (_rms(wav, SAMPLE_RATE) or 1e-4))
        save_audio(folder / f"{name}.wav", _limit_peak(wav), SAMPLE_RATE)
        items.append(
            {"path": f"speech_commands_v0.01/_background_noise_/{name}.wav", "noise": name}
        )
    write_text_atomic(
        folder / "README.md",
        "Background noise for the mini Speech Commands corpus: synthetic white, pink and brown "
        "noise and a babble of espeak-ng voices, each 12 s at 16 kHz.\n",
    )
    return items


def _write_speech_commands_test_set(rng, main, test, items):
    """The v0.01 test archive: 'testing' speakers' clips per keyword, _unknown_, _silence_."""
    test_items = []
    for item in items:
        if item["split"] != "testing":
            continue
        word, name = item["path"].split("/")[1:]
        label, target = (word, name) if word in KEYWORDS else ("_unknown_", f"{word}_{name}")
        with atomic_path(test / label / target) as tmp:
            shutil.copyfile(main / word / name, tmp)
        test_items.append(
            {
                "path": f"speech_commands_test_set_v0.01/{label}/{target}",
                "label": label,
                "word": word,
                "speaker": item["speaker"],
            }
        )
    noises = sorted((main / "_background_noise_").glob("*.wav"))
    for index in range(max(2, len(test_items) // 10)):
        source = noises[index % len(noises)]
        noise, _ = soundfile.read(str(source), dtype="float32")
        start = int(rng.integers(len(noise) - SAMPLE_RATE))
        gain = 10 ** (rng.uniform(-30, 0) / 20)
        target = f"{source.stem}_nohash_{index}.wav"
        save_audio(
            test / "_silence_" / target, noise[start : start + SAMPLE_RATE] * gain, SAMPLE_RATE
        )
        test_items.append(
            {"path": f"speech_commands_test_set_v0.01/_silence_/{target}", "label": "_silence_"}
        )
    for label in KEYWORDS + ("_unknown_", "_silence_"):
        (test / label).mkdir(parents=True, exist_ok=True)
    return test_items


# ---------------------------------------------------------------------------------------
# Fluent Speech Commands

FSC_COMMANDS = {  # (action, object, location): transcriptions, as in the real 31 intents
    ("change language", "none", "none"): (
        "Change language",
        "Language settings",
        "Switch the language",
    ),
    ("change language", "Chinese", "none"): ("Switch to Chinese", "Set the language to Chinese"),
    ("change language", "Korean", "none"): ("Use Korean", "Set my device to Korean"),
    ("change language", "English", "none"): ("Switch to English", "Set the language to English"),
    ("change language", "German", "none"): ("Use German", "Change the language to German"),
    ("activate", "music", "none"): ("Play music", "Put on some music", "Start the music"),
    ("activate", "lights", "none"): ("Turn on the lights", "Lights on"),
    ("activate", "lights", "kitchen"): (
        "Turn on the kitchen lights",
        "Switch on the lights in the kitchen",
    ),
    ("activate", "lights", "bedroom"): ("Turn on the bedroom lights", "Lights on in the bedroom"),
    ("activate", "lights", "washroom"): (
        "Turn on the washroom lights",
        "Switch on the lights in the washroom",
    ),
    ("activate", "lamp", "none"): ("Turn on the lamp", "Switch the lamp on"),
    ("deactivate", "music", "none"): ("Stop the music", "Pause music"),
    ("deactivate", "lights", "none"): ("Turn off the lights", "Lights off"),
    ("deactivate", "lights", "kitchen"): (
        "Turn off the kitchen lights",
        "Switch off the lights in the kitchen",
    ),
    ("deactivate", "lights", "bedroom"): (
        "Turn off the bedroom lights",
        "Lights off in the bedroom",
    ),
    ("deactivate", "lights", "washroom"): (
        "Turn off the washroom lights",
        "Switch off the lights in the washroom",
    ),
    ("deactivate", "lamp", "none"): ("Turn off the lamp", "Switch the lamp off"),
    ("increase", "volume", "none"): ("Turn up the volume", "Louder please", "Increase the volume"),
    ("decrease", "volume", "none"): (
        "Turn down the volume",
        "Make it quieter",
        "Decrease the volume",
    ),
    ("increase", "heat", "none"): ("Turn up the heat", "Make it warmer"),
    ("increase", "heat", "kitchen"): ("Turn up the heat in the kitchen", "Make the kitchen warmer"),
    ("increase", "heat", "bedroom"): ("Turn up the heat in the bedroom", "Heat up the bedroom"),
    ("increase", "heat", "washroom"): (
        "Turn up the heat in the washroom",
        "Make the washroom warmer",
    ),
    ("decrease", "heat", "none"): ("Turn the heat down", "Make it cooler"),
    ("decrease", "heat", "kitchen"): (
        "Turn down the heat in the kitchen",
        "Make the kitchen cooler",
    ),
    ("decrease", "heat", "bedroom"): ("Turn down the heat in the bedroom", "Cool down the bedroom"),
    ("decrease", "heat", "washroom"): (
        "Turn down the heat in the washroom",
        "Make the washroom cooler",
    ),
    ("bring", "newspaper", "none"): ("Bring me the newspaper", "Get me the newspaper"),
    ("bring", "juice", "none"): ("Bring me some juice", "Fetch me a glass of juice"),
    ("bring", "socks", "none"): ("Bring me my socks", "Get my socks"),
    ("bring", "shoes", "none"): ("Bring me my shoes", "Fetch my shoes"),
}
FSC_SPLITS = {"train": (8, 16), "valid": (3, 12), "test": (3, 12)}  # speakers, utterances each
FSC_COLUMNS = ("", "path", "speakerId", "transcription", "action", "object", "location")


def _write_fluent_speech_commands(ctx):
    rng = ctx.rng("fluent_speech_commands")
    folder = ctx.staging["fluent_speech_commands_dataset"]
    phrases = [(text, *labels) for labels, texts in FSC_COMMANDS.items() for text in texts]
    speakers = {split: ctx.count(n) for split, (n, _) in FSC_SPLITS.items()}
    voices = sample_voices(rng, sum(speakers.values()))
    alphabet = string.ascii_letters + string.digits

    jobs, rows = [], {split: [] for split in FSC_SPLITS}
    for split, (_, per_speaker) in FSC_SPLITS.items():
        # train cycles through every phrase so that every label value appears in it
        order = rng.permutation(len(phrases)).tolist() * (
            1 + speakers[split] * per_speaker // len(phrases)
        )
        if split != "train":
            order = rng.choice(len(phrases), speakers[split] * per_speaker).tolist()
        for _ in range(speakers[split]):
            speaker = "".join(_pick(rng, alphabet) for _ in range(16))
            voice = voices.pop(0)
            for _ in range(per_speaker):
                text, action, obj, location = phrases[order.pop(0)]
                relative = (
                    f"wavs/speakers/{speaker}/{uuid.UUID(bytes=rng.bytes(16), version=1)}.wav"
                )
                take = Take(
                    phrases=(text,),
                    voice=voice,
                    seed=_seed(rng),
                    snr_db=float(rng.uniform(10, 35)),
                    noise=_noise_color(rng),
                    pad=(0.2, 0.8),
                )
                jobs.append((take, folder / relative))
                rows[split].append([relative, speaker, text, action, obj, location])

    metas = iter(ctx.render(jobs))
    items = []
    for split, split_rows in rows.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FSC_COLUMNS)
        for index, row in enumerate(split_rows):
            writer.writerow([index] + row)
            items.append({"split": split, **dict(zip(FSC_COLUMNS[1:], row)), **next(metas)})
        write_text_atomic(folder / "data" / f"{split}_data.csv", buffer.getvalue())
    counts = {split: len(r) for split, r in rows.items()}
    counts.update({f"{split}_speakers": n for split, n in speakers.items()})
    return counts, items


# ---------------------------------------------------------------------------------------
# Audio SNIPS (SUPERB's slot-filling layout)

SNIPS_VOICES = {  # SUPERB's Polly voice names, each mapped to its own espeak-ng voice
    "train": {
        "Ivy": Voice("en-us", "f4", pitch=70, speed=165),
        "Joanna": Voice("en-us", "f1", pitch=55, speed=160),
        "Joey": Voice("en-us", "m1", pitch=45, speed=170),
        "Justin": Voice("en-us", "m4", pitch=65, speed=175),
        "Kendra": Voice("en-us", "f2", pitch=50, speed=155),
        "Kimberly": Voice("en-us", "f3", pitch=60, speed=170),
        "Matthew": Voice("en-us", "m3", pitch=40, speed=160),
        "Salli": Voice("en-us", "f5", pitch=58, speed=165),
    },
    "valid": {
        "Aditi": Voice("en-029", "f2", pitch=62, speed=160),
        "Amy": Voice("en-gb-x-rp", "f1", pitch=55, speed=165),
        "Geraint": Voice("en-gb-x-gbcwmd", "m2", pitch=45, speed=160),
        "Nicole": Voice("en-gb-x-gbclan", "f4", pitch=57, speed=170),
    },
    "test": {
        "Brian": Voice("en-gb-x-rp", "m5", pitch=42, speed=165),
        "Emma": Voice("en-gb", "f3", pitch=60, speed=160),
        "Raveena": Voice("en-029", "f1", pitch=64, speed=165),
        "Russell": Voice("en-gb-scotland", "m6", pitch=48, speed=170),
    },
}
SNIPS_SENTENCES = {"train": 16, "valid": 8, "test": 8}
SNIPS_TEMPLATES = (
    ("PlayMusic", "play {artist}"),
    ("PlayMusic", "play some {music_item} by {artist}"),
    ("PlayMusic", "play {artist} on {service}"),
    ("GetWeather", "what will the weather be in {city} {timeRange}"),
    ("GetWeather", "is it going to be {condition_description} in {state} {timeRange}"),
    ("GetWeather", "will it be {condition_temperature} in {city}"),
    ("BookRestaurant", "book a table for {party_size_number} at a {restaurant_type} in {city}"),
    ("BookRestaurant", "reserve a {restaurant_type} for {party_size_number} people {timeRange}"),
    ("AddToPlaylist", "add {artist} to {playlist_owner} {playlist} playlist"),
    ("AddToPlaylist", "add this {music_item} to the {playlist} playlist"),
    ("RateBook", "rate {object_name} {rating_value} out of {best_rating}"),
    ("RateBook", "give this {object_type} {rating_value} {rating_unit}"),
)
SNIPS_SLOT_VALUES = {
    "artist": (
        "the beatles",
        "madonna",
        "john coltrane",
        "ella fitzgerald",
        "miles davis",
        "adele",
        "bob marley",
    ),
    "service": ("spotify", "deezer", "youtube", "itunes"),
    "music_item": ("song", "album", "track", "tune"),
    "city": ("london", "paris", "new york", "boston", "tokyo", "berlin", "chicago"),
    "state": ("texas", "ohio", "california", "oregon"),
    "timeRange": ("tomorrow", "this weekend", "next monday", "at noon", "tonight"),
    "condition_description": ("rainy", "sunny", "snowy", "foggy", "cloudy"),
    "condition_temperature": ("hot", "cold", "freezing", "warm"),
    "party_size_number": ("two", "four", "six", "eight"),
    "restaurant_type": ("pizzeria", "steakhouse", "bistro", "diner", "brasserie"),
    "playlist_owner": ("my",),
    "playlist": ("road trip", "chill evening", "workout", "morning coffee"),
    "object_name": ("the hobbit", "war and peace", "moby dick", "little women"),
    "rating_value": ("one", "two", "three", "four", "five"),
    "best_rating": ("five", "six", "ten"),
    "object_type": ("book", "novel", "textbook", "essay"),
    "rating_unit": ("stars", "points"),
}


def snips_sentence(rng, template):
    """Fills a SNIPS template: ``(words, slot per word, intent)``, words upper-case."""
    intent, pattern = template
    words, slots = [], []
    for token in pattern.split():
        slot = token[1:-1] if token.startswith("{") else None
        value = _pick(rng, SNIPS_SLOT_VALUES[slot]) if slot else token
        for word in value.split():
            words.append(word.upper())
            slots.append(slot or "O")
    return words, slots, intent


def _write_snips(ctx):
    rng = ctx.rng("snips")
    folder = ctx.staging["SNIPS"]
    jobs, items, lines = [], [], []
    for split, voices in SNIPS_VOICES.items():
        n_sentences = ctx.count(SNIPS_SENTENCES[split], 2)
        first = rng.integers(len(SNIPS_TEMPLATES))
        for n in range(n_sentences):
            words, slots, intent = snips_sentence(
                rng, SNIPS_TEMPLATES[(first + n) % len(SNIPS_TEMPLATES)]
            )
            for name, voice in voices.items():
                uttid = f"{name}-snips-{split}-{n}"
                take = Take(
                    phrases=(" ".join(words).lower(),),
                    voice=voice,
                    seed=_seed(rng),
                    snr_db=float(rng.uniform(35, 50)),
                    noise="white",
                    pad=(0.05, 0.3),
                )
                jobs.append((take, folder / split / f"{uttid}.wav"))
                lines.append(f"{uttid} BOS {' '.join(words)} EOS\tO {' '.join(slots)} {intent}")
                items.append(
                    {
                        "id": uttid,
                        "split": split,
                        "speaker": name,
                        "words": " ".join(words),
                        "slots": " ".join(slots),
                        "intent": intent,
                    }
                )
    for item, meta in zip(items, ctx.render(jobs)):
        item.update(meta)
    write_lines(folder / "all.iob.snips.txt", lines)
    frequency = {}
    for item in items:
        for slot in item["slots"].split():
            if slot != "O":
                frequency[slot] = frequency.get(slot, 0) + 1
    write_lines(folder / "slots.txt", ["O"] + sorted(frequency, key=lambda s: (-frequency[s], s)))
    counts = {split: sum(1 for i in items if i["split"] == split) for split in SNIPS_VOICES}
    counts["slot_types"] = len(frequency)
    return counts, items


# ---------------------------------------------------------------------------------------
# Speaker diarization (SUPERB's Libri2Mix Kaldi data dirs)

DIARIZATION_SPLITS = {
    "train": ("train-clean-100", 32),
    "dev": ("dev-clean", 10),
    "test": ("test-clean", 10),
}


def _write_diarization(ctx):
    """Two-speaker mixtures of the mini LibriSpeech utterances, as Libri2Mix is built."""
    rng = ctx.rng("diarization")
    folder = ctx.staging["diarization"]
    final = ctx.root / "diarization"
    libri = _read_marker(ctx.root, "librispeech")["items"]

    jobs = []
    for split, (source_split, full) in DIARIZATION_SPLITS.items():
        pool = [item for item in libri if item["split"] == source_split]
        pairs = set()
        for _ in range(ctx.count(full, 2)):
            for _attempt in range(100):
                first, second = (pool[i] for i in rng.choice(len(pool), 2, replace=False))
                if (
                    first["speaker"] != second["speaker"]
                    and (first["id"], second["id"]) not in pairs
                ):
                    break
            pairs.add((first["id"], second["id"]))
            delay = float(rng.uniform(0.0, 0.6)) * first["duration"]
            jobs.append(
                {
                    "split": split,
                    "sources": (first, second),
                    "delays": (0.0, round(delay, 2)),
                    "gains_db": tuple(float(g) for g in rng.uniform(-2.5, 2.5, 2)),
                    "snr_db": float(rng.uniform(10, 20)),
                    "noise": _noise_color(rng),
                    "seed": _seed(rng),
                }
            )

    def mix(job):
        mixid = "_".join(source["id"] for source in job["sources"])
        tracks = []
        for source, delay, gain in zip(job["sources"], job["delays"], job["gains_db"]):
            wav, rate = soundfile.read(str(ctx.root / source["path"]), dtype="float32")
            tracks.append(
                np.concatenate(
                    [np.zeros(int(round(delay * rate)), np.float32), wav * 10 ** (gain / 20)]
                )
            )
        mixture = np.zeros(max(map(len, tracks)), dtype=np.float32)
        for track in tracks:
            mixture[: len(track)] += track
        mixture = add_noise(
            mixture, rate, job["snr_db"], job["noise"], np.random.default_rng(job["seed"])
        )
        save_audio(folder / "wav" / job["split"] / f"{mixid}.wav", _limit_peak(mixture), rate)
        segments = [
            (source["speaker"], round(delay + start, 2), round(delay + end, 2))
            for source, delay in zip(job["sources"], job["delays"])
            for start, end in _merge_intervals(source["speech"], gap=0.4)
        ]
        return {
            "id": mixid,
            "split": job["split"],
            "duration": len(mixture) / rate,
            "segments": segments,
            "snr_db": round(job["snr_db"], 1),
            "delays": job["delays"],
        }

    items = ctx.map(mix, jobs)
    for split in DIARIZATION_SPLITS:
        _write_kaldi_dir(
            folder / split, final / "wav" / split, [i for i in items if i["split"] == split]
        )
    counts = {split: sum(1 for i in items if i["split"] == split) for split in DIARIZATION_SPLITS}
    return counts, items


def _merge_intervals(intervals, gap):
    merged = []
    for start, end in intervals:
        if merged and start - merged[-1][1] < gap:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _write_kaldi_dir(folder, wav_folder, mixtures):
    """wav.scp, segments, utt2spk, spk2utt, rttm and reco2dur, laid out as SUPERB's are."""
    wav_scp, segments, utt2spk, rttm, reco2dur, spk2utt = [], [], [], [], [], {}
    for mixture in mixtures:
        mixid = mixture["id"]
        wav_scp.append(f"{mixid} {wav_folder / f'{mixid}.wav'}")
        reco2dur.append(f"{mixid} {mixture['duration']:g}")
        for speaker, start, end in mixture["segments"]:
            segid = f"{mixid}_{round(start * 1000):06d}_{round(end * 1000):06d}"
            segments.append(f"{segid} {mixid} {_seconds(start)} {_seconds(end)}")
            utt2spk.append(f"{segid} {speaker}")
            rttm.append(
                "\t".join(
                    [
                        "SPEAKER",
                        mixid,
                        "1",
                        _seconds(start),
                        _seconds(end - start),
                        "<NA>",
                        "<NA>",
                        str(speaker),
                        "<NA>",
                    ]
                )
            )
            spk2utt.setdefault(str(speaker), []).append(mixid)
    write_lines(folder / "wav.scp", wav_scp)
    write_lines(folder / "segments", segments)
    write_lines(folder / "utt2spk", utt2spk)
    write_lines(folder / "spk2utt", [f"{spk} {' '.join(ids)}" for spk, ids in spk2utt.items()])
    write_lines(folder / "rttm", rttm)
    write_lines(folder / "reco2dur", reco2dur)


def relocate_kaldi_paths(root):
    """Points ``diarization/*/wav.scp`` at this root's wav files if the folder was moved.

    wav.scp holds absolute paths, as the real files do; when they do not point into
    ``root/diarization/wav`` (the folder was moved or copied), they are rewritten, atomically.
    A correct wav.scp is left untouched.

    Returns
    -------
    list of Path
        The wav.scp files rewritten.
    """
    rewritten = []
    for split in DIARIZATION_SPLITS:
        scp = Path(root) / "diarization" / split / "wav.scp"
        if not scp.exists():
            continue
        wav_folder = Path(root) / "diarization" / "wav" / split
        lines = scp.read_text(encoding="utf-8").splitlines()
        fixed = [
            f"{mixid} {wav_folder / f'{mixid}.wav'}"
            for mixid in (line.split(" ", 1)[0] for line in lines)
        ]
        if fixed != lines:
            write_lines(scp, fixed)
            rewritten.append(scp)
    if rewritten:
        logger.info("Rewrote %d wav.scp file(s) for the new location %s", len(rewritten), root)
    return rewritten


# ---------------------------------------------------------------------------------------
# QUESST 2014

QUESST_RATE = 8000
QUESST_TERMS = {  # the last two of each split occur in no document
    "dev": (
        "yellow bicycle",
        "thunderstorm",
        "chocolate cake",
        "telephone",
        "umbrella",
        "kangaroo",
        "orange juice",
        "library",
    ),
    "eval": (
        "saxophone",
        "hospital",
        "volcano",
        "paper airplane",
        "strawberry",
        "elephant",
        "pineapple",
        "lighthouse",
    ),
}
QUESST_NEGATIVES = 2
QUESST_OTHER_LANGUAGE = {  # language tag, espeak-ng voice, carrier phrases, one term per split
    "tag": "czech",
    "voice": "cs",
    "carriers": (
        "dnes ráno jsme šli na",
        "večer jsme hledali",
        "můj bratr mluvil o",
        "na stole leží",
    ),
    "terms": {"dev": "nádraží", "eval": "zmrzlina"},
}
QUESST_DOCUMENTS = 36


def _write_quesst14(ctx):
    rng = ctx.rng("quesst14")
    folder = ctx.staging["quesst14Database"]
    other = QUESST_OTHER_LANGUAGE
    n_english = ctx.count(QUESST_DOCUMENTS, 6)
    n_other = ctx.count(len(other["carriers"]), 2)

    # which documents hold which terms: each positive term in 1 to 3 of them, at most 2 per one
    english_terms = {
        split: terms[: len(terms) - QUESST_NEGATIVES] for split, terms in QUESST_TERMS.items()
    }
    holders = [[] for _ in range(n_english)]
    for split, terms in english_terms.items():
        for term in terms:
            free = [d for d in range(n_english) if len(holders[d]) < 2] or list(range(n_english))
            for doc in rng.choice(free, min(len(free), int(rng.integers(1, 4))), replace=False):
                holders[doc].append((split, term))
    other_holders = [[("dev", other["terms"]["dev"])], [("eval", other["terms"]["eval"])]]
    other_holders += [[] for _ in range(n_other - 2)]

    voices = sample_voices(rng, 16)
    other_voices = sample_voices(rng, 4, languages=(other["voice"],))
    documents = []
    for index, terms in enumerate(holders):
        phrases = [" ".join(_clause(rng))]
        for _, term in terms:
            phrases += [term, " ".join(_clause(rng))]
        documents.append(("nnenglish", phrases, terms, voices[index % 10]))
    for index, terms in enumerate(other_holders):
        phrases = [other["carriers"][index % len(other["carriers"])]] + [term for _, term in terms]
        documents.append((other["tag"], phrases, terms, other_voices[index % 2]))
    order = rng.permutation(len(documents)).tolist()
    documents = [documents[i] for i in order]

    jobs, items = [], []
    for number, (language, phrases, terms, voice) in enumerate(documents, start=1):
        docid = f"quesst14_{number:05d}"
        take = Take(
            phrases=tuple(phrases),
            voice=voice,
            seed=_seed(rng),
            sample_rate=QUESST_RATE,
            snr_db=float(rng.uniform(10, 30)),
            noise=_noise_color(rng),
        )
        jobs.append((take, folder / "Audio" / f"{docid}.wav"))
        items.append(
            {
                "id": docid,
                "kind": "document",
                "language": language,
                "text": " | ".join(phrases),
                "terms": [{"split": s, "term": t} for s, t in terms],
            }
        )
    queries = {}
    for split, terms in QUESST_TERMS.items():
        spoken = [(term, "nnenglish", voices[10 + i % 6]) for i, term in enumerate(terms)]
        spoken.insert(
            int(rng.integers(len(spoken) + 1)),
            (other["terms"][split], other["tag"], other_voices[2]),
        )
        for number, (term, language, voice) in enumerate(spoken, start=1):
            qid = f"quesst14_{split}_{number:04d}"
            queries[(split, term)] = qid
            take = Take(
                phrases=(term,),
                voice=voice,
                seed=_seed(rng),
                sample_rate=QUESST_RATE,
                snr_db=float(rng.uniform(15, 35)),
                noise=_noise_color(rng),
                pad=(0.1, 0.25),
            )
            jobs.append((take, folder / f"{split}_queries" / f"{qid}.wav"))
            items.append({"id": qid, "kind": f"{split}_query", "language": language, "text": term})
    for item, meta in zip(items, ctx.render(jobs)):
        item.update(meta)

    _write_quesst_lists(folder, items)
    for split in QUESST_TERMS:
        _write_quesst_groundtruth(
            folder / "scoring" / f"groundtruth_quesst14_{split}", split, items, queries
        )
    counts = {
        "documents": len(documents),
        "dev_queries": len(QUESST_TERMS["dev"]) + 1,
        "eval_queries": len(QUESST_TERMS["eval"]) + 1,
    }
    return counts, items


def _write_quesst_lists(folder, items):
    """``scoring/language_key_{utterances,dev,eval}.lst``: ``quesst14Database/<path> <lang>``."""
    lists = {
        "document": ("utterances", "Audio"),
        "dev_query": ("dev", "dev_queries"),
        "eval_query": ("eval", "eval_queries"),
    }
    for kind, (name, subfolder) in lists.items():
        write_lines(
            folder / "scoring" / f"language_key_{name}.lst",
            [
                f"quesst14Database/{subfolder}/{i['id']}.wav {i['language']}"
                for i in items
                if i["kind"] == kind
            ],
        )


def _write_quesst_groundtruth(folder, split, items, queries):
    """NIST STD ground truth: ECF (the documents), term list (the queries), RTTM (occurrences).

    RTTM lines are ``LEXEME <doc> 1 <tbeg> <dur> <query id> lex <NA> <NA>``; a document
    with no occurrence of this split's queries gets one ``NO_KEYWORD`` line.
    """
    documents = [i for i in items if i["kind"] == "document"]
    excerpts = [
        f'<excerpt audio_filename="{d["id"]}" channel="1" tbeg="0.000" dur="{d["duration"]:.3f}" '
        f'source_type="splitcts"/>'
        for d in documents
    ]
    total = sum(d["duration"] for d in documents)
    write_lines(
        folder / "quesst14.ecf.xml",
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ecf source_signal_duration="{total:.3f}" language="multiple" '
            f'version="mini-{GENERATOR_VERSION}">',
        ]
        + [f"  {e}" for e in excerpts]
        + ["</ecf>"],
    )
    terms = [
        f'  <term termid="{qid}"><termtext>{qid}</termtext></term>'
        for (s, _), qid in queries.items()
        if s == split
    ]
    write_lines(
        folder / f"quesst14_{split}.tlist.xml",
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<termlist ecf_filename="quesst14.ecf.xml" language="multiple" encoding="UTF-8" '
            f'version="mini-{GENERATOR_VERSION}">',
        ]
        + terms
        + ["</termlist>"],
    )
    rttm = []
    for doc in documents:
        found = False
        phrases = iter(doc["phrases"][1:])
        for term in doc["terms"]:
            start, end = next(phrases)
            if doc["language"] == "nnenglish":
                next(phrases)  # the clause that follows an English term
            if term["split"] == split:
                rttm.append(
                    f"LEXEME {doc['id']} 1 {start:.3f} {end - start:.3f} "
                    f"{queries[(split, term['term'])]} lex <NA> <NA>"
                )
                found = True
        if not found:
            rttm.append(
                f"LEXEME {doc['id']} 1 0.000 {doc['duration']:.3f} NO_KEYWORD lex <NA> <NA>"
            )
    write_lines(folder / f"quesst14_{split}.rttm", rttm)


# ---------------------------------------------------------------------------------------
# The corpora and the public entry points


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """A corpus: its top folders under the root, its writer, and what it is built from."""

    folders: tuple
    writer: object
    requires: tuple = ()


CORPORA = {
    "librispeech": CorpusSpec(("LibriSpeech",), _write_librispeech),
    "speech_commands": CorpusSpec(
        ("speech_commands_v0.01", "speech_commands_test_set_v0.01"), _write_speech_commands
    ),
    "fluent_speech_commands": CorpusSpec(
        ("fluent_speech_commands_dataset",), _write_fluent_speech_commands
    ),
    "snips": CorpusSpec(("SNIPS",), _write_snips),
    "diarization": CorpusSpec(("diarization",), _write_diarization, requires=("librispeech",)),
    "quesst14": CorpusSpec(("quesst14Database",), _write_quesst14),
}


def _fingerprint(seed, scale):
    return {"generator_version": GENERATOR_VERSION, "seed": int(seed), "scale": float(scale)}


def _marker_path(root, name):
    return Path(root) / MARKER_FOLDER / f"{name}.json"


def _read_marker(root, name):
    try:
        return json.loads(_marker_path(root, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(root, name, fingerprint):
    marker = _read_marker(root, name)
    return (
        marker is not None
        and marker.get("fingerprint") == fingerprint
        and all((Path(root) / folder).is_dir() for folder in CORPORA[name].folders)
    )


def corpus_name(name):
    """The ``CORPORA`` key for a corpus name or one of its folder names, in any case.

    Example
    -------
    >>> corpus_name("LibriSpeech"), corpus_name("speech_commands_v0.01")
    ('librispeech', 'speech_commands')
    """
    key = str(name).lower()
    for corpus, spec in CORPORA.items():
        if key == corpus or key in (folder.lower() for folder in spec.folders):
            return corpus
    raise ValueError(
        f"Unknown corpus {name!r}; choose from {list(CORPORA)} (or one of their folder names)"
    )


def _resolve_names(corpora):
    names = list(CORPORA) if corpora is None else list(dict.fromkeys(map(corpus_name, corpora)))
    ordered = []
    for name in CORPORA:  # dependency order: requirements are declared before their users
        if name in names or any(name in CORPORA[n].requires for n in names):
            ordered.append(name)
    return ordered, names


@contextlib.contextmanager
def _exclusive(root):
    """Holds a lock beside ``root`` so that concurrent callers generate only once."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def ensure_mini_corpus(
    output_folder=None, corpora=None, seed=DEFAULT_SEED, scale=1.0, workers=None, force=False
):
    """Generates the mini corpus under ``output_folder`` unless it is already complete.

    A no-op (no file written, no tool run) when every requested corpus has a marker for
    the same generator version, seed and scale. Safe against crashes (nothing half-written
    is trusted) and against concurrent callers (a file lock).

    Arguments
    ---------
    output_folder : str or Path
        Root of the mini corpus; default ``data/mini`` in the repository.
    corpora : list of str or None
        Names from ``CORPORA``; None means all six. Requirements come along
        (``diarization`` mixes the mini LibriSpeech).
    seed : int
        Seeds everything random.
    scale : float
        Multiplies the number of speakers, utterances and mixtures (1.0 is the default size).
    workers : int or None
        Threads running espeak-ng and sox; default: the number of CPU cores.
    force : bool
        Regenerate the requested corpora even if complete.

    Returns
    -------
    Path
        The root folder.
    """
    root = Path(output_folder or DEFAULT_FOLDER).expanduser().resolve()
    ordered, requested = _resolve_names(corpora)
    fingerprint = _fingerprint(seed, scale)
    if (
        not force
        and (root / SUMMARY_FILE).exists()
        and all(_is_complete(root, n, fingerprint) for n in ordered)
    ):
        relocate_kaldi_paths(root)
        return root

    with _exclusive(root):
        todo = [
            n
            for n in ordered
            if (force and n in requested) or not _is_complete(root, n, fingerprint)
        ]
        tools = find_tools() if todo else None
        for name in todo:
            _generate(root, name, fingerprint, tools, workers or os.cpu_count() or 1)
        _write_summary(root, fingerprint, tools)
        relocate_kaldi_paths(root)
    return root


def _generate(root, name, fingerprint, tools, workers):
    spec = CORPORA[name]
    started = time.time()
    logger.info("Generating the mini %s corpus under %s", name, root)
    _marker_path(root, name).unlink(missing_ok=True)
    with contextlib.ExitStack() as stack:
        staging = {
            folder: stack.enter_context(atomic_dir(root / folder)) for folder in spec.folders
        }
        ctx = _Context(root, staging, fingerprint["seed"], fingerprint["scale"], tools, workers)
        counts, items = spec.writer(ctx)
    marker = {
        "corpus": name,
        "fingerprint": fingerprint,
        "folders": list(spec.folders),
        "tools": tools.versions,
        "counts": counts,
        "items": items,
    }
    write_json_atomic(_marker_path(root, name), marker)
    logger.info("Mini %s corpus: %s in %.1f s", name, counts, time.time() - started)


def _write_summary(root, fingerprint, tools):
    """``MINI_CORPUS.json``: versions, seed and counts of every complete corpus; written last."""
    corpora = {}
    for name in CORPORA:
        marker = _read_marker(root, name)
        if marker is not None and all((root / folder).is_dir() for folder in marker["folders"]):
            corpora[name] = {
                key: marker[key] for key in ("fingerprint", "folders", "tools", "counts")
            }
    summary = {
        "generator": "rewire_lobes.data.mini_corpus",
        "generator_version": GENERATOR_VERSION,
        "seed": fingerprint["seed"],
        "scale": fingerprint["scale"],
        "tools": tools.versions if tools else _read_summary_tools(root),
        "corpora": corpora,
    }
    path = root / SUMMARY_FILE
    if not path.exists() or json.loads(path.read_text(encoding="utf-8")) != summary:
        write_json_atomic(path, summary)


def _read_summary_tools(root):
    try:
        return json.loads((root / SUMMARY_FILE).read_text(encoding="utf-8"))["tools"]
    except (OSError, ValueError, KeyError):
        return {}


def read_manifest(root, name):
    """The generation manifest of corpus ``name``: every file with its labels, voice and noise.

    Returns
    -------
    list of dict
    """
    marker = _read_marker(root, name)
    if marker is None:
        raise FileNotFoundError(
            f"{_marker_path(root, name)}: the {name} mini corpus is not complete"
        )
    return marker["items"]


def ensure_embedded_data(data_folder, seed=DEFAULT_SEED):
    """Generates the mini corpus behind ``data_folder`` if it lies under the embedded default.

    For a recipe's prepare step: a ``data_folder`` under ``data/mini`` (relative to the
    working directory or to the repository) gets its corpus generated when absent; any
    other folder (real data) is returned untouched.

    Returns
    -------
    Path
        ``data_folder``, resolved when it is the embedded default.
    """
    path = Path(data_folder).expanduser()
    default = DEFAULT_FOLDER.resolve()
    resolved = (path if path.is_absolute() or path.exists() else REPO_ROOT / path).resolve()
    if resolved != default and default not in resolved.parents:
        return path
    top = resolved.relative_to(default).parts[:1]
    names = [name for name, spec in CORPORA.items() if set(top) & set(spec.folders)]
    ensure_mini_corpus(default, corpora=names or None, seed=seed)
    return resolved
