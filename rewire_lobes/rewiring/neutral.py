"""Neutral speech: flat TTS renderings of transcripts, synthesised once and cached.

The paper renders each LibriSpeech transcript with Festival (``text2wave``, default
voice ``kal_diphone``), a deliberately non-expressive synthesiser. Its code ran one
``text2wave`` process per utterance inside the training loop; here synthesis is a separate
step that

* keeps a few long-lived workers busy (one ``festival --pipe`` process per worker, fed one
  Scheme command per utterance over stdin; for espeak-ng one Python process holding
  ``libespeak-ng`` through ctypes), in parallel;
* caches by (text, backend, voice): the file name is a SHA-1 of those, so reruns and other
  recipes reuse the audio, and nothing else needs to be kept in sync;
* writes every file atomically, as 16 kHz mono 16-bit WAV;
* never hands a transcript to a shell, and escapes it for the Scheme string it goes into;
* logs, counts and leaves out an utterance that fails (the caller drops it from the set);
  more than ``max_failed_fraction`` of the utterances failing stops the run
  (:func:`check_failures`), since the TTS setup is then broken rather than a few texts odd.

``festival --pipe`` evaluates ``(utt.synth (Utterance Text ...))``, which is what
``text2wave`` does for a transcript without punctuation (one utterance, same voice and
init files), minus the per-call start-up.
"""

import csv
import ctypes
import ctypes.util
import hashlib
import itertools
import json
import logging
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from rewire_lobes.errors import OptionError, UserError
from rewire_lobes.io_utils import atomic_path

# rewire_lobes.data.audio (torch) is imported where it is used: the espeak worker process runs
# this module and should start in a blink.

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BACKENDS = ("festival", "espeak")
DEFAULT_VOICES = {"festival": "kal_diphone", "espeak": "en-us"}
# Festival crashes (SIGSEGV) on input without a single word; such text is refused up front.
_SPEAKABLE = re.compile(r"[A-Za-z0-9]")


class SynthesisError(RuntimeError):
    """One utterance could not be synthesised; the message says why."""


class BackendUnavailable(UserError, RuntimeError):
    """The TTS program or voice is missing; the message says what to install."""


class TooManySynthesisFailures(RuntimeError):
    """More than ``max_failed_fraction`` of the utterances got no neutral audio.

    A data problem, not a wrong option: the message lists the failing texts and names the
    report that holds every failure with its reason.
    """


def tts_text(transcript):
    """The text handed to the synthesiser: one line, single spaces, lower case.

    Lower case as in the paper's code; LibriSpeech transcripts are upper case, which
    Festival would otherwise spell out as acronyms in places.
    """
    return " ".join(str(transcript).split()).lower()


def cache_key(text, backend, voice):
    """SHA-1 hex digest identifying the audio of ``text`` by ``backend``/``voice``."""
    payload = json.dumps([text, backend, voice], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def resolve_voice(backend, voice=None):
    if backend not in BACKENDS:
        raise OptionError(f"--tts_backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return voice or DEFAULT_VOICES[backend]


def neutral_path(cache_dir, text, backend="festival", voice=None):
    """Where the neutral rendering of ``text`` lives in ``cache_dir``."""
    voice = resolve_voice(backend, voice)
    return Path(cache_dir) / f"{cache_key(text, backend, voice)}.wav"


def scheme_string(text):
    """``text`` as a Scheme string literal: quotes and backslashes escaped, one line.

    Example
    -------
    >>> print(scheme_string('say "hi" \\\\ now'))
    "say \\"hi\\" \\\\ now"
    """
    flat = "".join(ch if ch.isprintable() else " " for ch in text)
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ----------------------------------------------------------------------------------------
# Long-lived workers
# ----------------------------------------------------------------------------------------


class _PipeWorker:
    """A child process fed one request per line; it answers ``@@DONE <tag> ok|error``.

    A reader thread moves the child's answer stream into a queue, so waiting has a
    timeout. A child that crashes, stalls or reports an interpreter error is killed and
    restarted for the next request; the request in flight counts as failed.
    """

    answer_stream = "stdout"

    def __init__(self, voice, timeout_s=120.0):
        self.voice = voice
        self.timeout_s = timeout_s
        self._proc = None
        self._lines = None
        self._tags = itertools.count()

    # Subclasses: the command, the start-up request, and one synthesis request.
    def command(self):
        raise NotImplementedError

    def startup_request(self, tag):
        raise NotImplementedError

    def synthesis_request(self, text, wav_path, tag):
        raise NotImplementedError

    def startup_failure(self, log):
        return BackendUnavailable(f"{self.command()[0]} did not start: {' '.join(log)[-500:]}")

    def _start(self):
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            # Only the answer stream is read; the other one must not fill up and block.
            stdout=subprocess.PIPE if self.answer_stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if self.answer_stream == "stderr" else None,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        self._lines = queue.Queue()
        stream = getattr(self._proc, self.answer_stream)
        threading.Thread(target=self._pump, args=(stream, self._lines), daemon=True).start()
        tag = f"start{next(self._tags)}"
        ok, log = self._request(self.startup_request(tag), tag, timeout_s=60.0)
        if not ok:
            self.close()
            raise self.startup_failure(log)

    @staticmethod
    def _pump(stream, lines):
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _request(self, request, tag, timeout_s):
        """Sends ``request``; returns ``(ok, log lines)``."""
        log = []
        try:
            self._proc.stdin.write(request + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            return False, [f"worker exited ({err})"]
        marker = f"@@DONE {tag} "
        while True:
            try:
                line = self._lines.get(timeout=timeout_s)
            except queue.Empty:
                return False, log + [f"no answer within {timeout_s:.0f} s"]
            if line is None:
                return False, log + [f"worker exited (code {self._proc.poll()})"]
            if line.startswith(marker):
                return line[len(marker):].strip() == "ok", log
            log.append(line)
            if "SIOD ERROR" in line:
                # Festival is unreliable after an interpreter error: start afresh.
                return False, log

    def synthesize(self, text, wav_path):
        """Writes the worker's native-rate WAV of ``text`` to ``wav_path``."""
        if not _SPEAKABLE.search(text):
            raise SynthesisError("the text holds no letter or digit to speak")
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        tag = str(next(self._tags))
        ok, log = self._request(self.synthesis_request(text, str(wav_path), tag), tag,
                                self.timeout_s)
        if not ok:
            self.close()  # the next request gets a fresh process
            raise SynthesisError("; ".join(log) or "the synthesiser reported an error")
        if not Path(wav_path).is_file() or Path(wav_path).stat().st_size <= 44:
            raise SynthesisError("the synthesiser wrote no audio")

    def close(self):
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class FestivalWorker(_PipeWorker):
    """One ``festival --pipe`` process; answers on stderr, which Festival does not buffer."""

    answer_stream = "stderr"

    def command(self):
        if shutil.which("festival") is None:
            raise BackendUnavailable(
                "festival is not installed (sudo apt-get install festival festvox-kallpc16k)"
            )
        return ["festival", "--pipe"]

    def startup_request(self, tag):
        voice = re.sub(r"[^A-Za-z0-9_]", "", self.voice)
        return f'(voice_{voice}) (format stderr "@@DONE {tag} ok\\n")'

    def startup_failure(self, log):
        return BackendUnavailable(
            f"festival could not select voice '{self.voice}' "
            f"(for kal_diphone: sudo apt-get install festvox-kallpc16k): {' '.join(log)[-300:]}"
        )

    def synthesis_request(self, text, wav_path, tag):
        # unwind-protect turns a Scheme error into an "error" answer instead of silence.
        return (
            "(unwind-protect (begin "
            f"(utt.save.wave (utt.synth (Utterance Text {scheme_string(text)})) "
            f"{scheme_string(wav_path)} 'riff) "
            f'(format stderr "@@DONE {tag} ok\\n")) '
            f'(format stderr "@@DONE {tag} error\\n"))'
        )


class EspeakWorker(_PipeWorker):
    """One Python process driving ``libespeak-ng`` (the CLI writes one file per call)."""

    def command(self):
        if not _espeak_library():
            raise BackendUnavailable(
                "libespeak-ng is not installed (sudo apt-get install espeak-ng)"
            )
        return [sys.executable, "-m", "rewire_lobes.rewiring.neutral", "--espeak-worker", self.voice]

    def startup_request(self, tag):
        return json.dumps({"tag": tag})

    def synthesis_request(self, text, wav_path, tag):
        return json.dumps({"tag": tag, "text": text, "path": wav_path}, ensure_ascii=False)


WORKERS = {"festival": FestivalWorker, "espeak": EspeakWorker}


def _espeak_library():
    return ctypes.util.find_library("espeak-ng")


def _espeak_worker_main(voice):
    """The espeak-ng worker loop: JSON requests on stdin, ``@@DONE`` answers on stdout."""
    lib = ctypes.CDLL(_espeak_library())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    audio_output_synchronous, position_character, chars_utf8 = 2, 1, 1
    rate = lib.espeak_Initialize(audio_output_synchronous, 0, None, 0)
    chunks = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def collect(samples, count, events):
        if count > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    lib.espeak_SetSynthCallback(collect)
    voice_ok = rate > 0 and lib.espeak_SetVoiceByName(voice.encode()) == 0
    for line in sys.stdin:
        request = json.loads(line)
        tag = request["tag"]
        status = "ok" if voice_ok else "error"
        if voice_ok and "text" in request:
            chunks.clear()
            data = request["text"].encode("utf-8") + b"\0"
            failed = lib.espeak_Synth(data, len(data), 0, position_character, 0, chars_utf8,
                                      None, None) or lib.espeak_Synchronize()
            if failed or not chunks:
                status = "error"
            else:
                soundfile.write(request["path"], np.concatenate(chunks), rate, subtype="PCM_16",
                                format="WAV")
        print(f"@@DONE {tag} {status}", flush=True)


# ----------------------------------------------------------------------------------------
# Batch synthesis with a cache
# ----------------------------------------------------------------------------------------


@dataclass
class SynthesisReport:
    """What a synthesis run did; ``failed`` maps text to the reason."""

    requested: int = 0
    cached: int = 0
    synthesized: int = 0
    failed: dict = field(default_factory=dict)

    def summary(self):
        return (
            f"{self.requested} texts: {self.cached} cached, {self.synthesized} synthesised, "
            f"{len(self.failed)} failed"
        )


def synthesize_texts(texts, cache_dir, backend="festival", voice=None, num_workers=2,
                     timeout_s=120.0, worker_class=None):
    """Makes sure every text of ``texts`` has its neutral WAV in ``cache_dir``.

    Returns a :class:`SynthesisReport`. A text that fails is logged and listed in
    ``report.failed``; it gets no file, so callers leave its utterances out.
    ``worker_class`` replaces the backend's worker (tests).
    """
    voice = resolve_voice(backend, voice)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys(texts))
    report = SynthesisReport(requested=len(unique))
    todo = []
    for text in unique:
        if neutral_path(cache_dir, text, backend, voice).is_file():
            report.cached += 1
        else:
            todo.append(text)
    if not todo:
        logger.info("Neutral synthesis: %s", report.summary())
        return report

    worker_class = worker_class or WORKERS[backend]
    local = threading.local()
    workers, lock = [], threading.Lock()
    scratch = Path(tempfile.mkdtemp(prefix=".tts-", dir=cache_dir))

    def run(text):
        if not hasattr(local, "worker"):
            local.worker = worker_class(voice, timeout_s)
            with lock:
                workers.append(local.worker)
        raw = scratch / f"{threading.get_ident()}.wav"
        try:
            local.worker.synthesize(text, raw)
            _store_16k(raw, neutral_path(cache_dir, text, backend, voice))
            return text, None
        except (SynthesisError, ValueError) as err:  # AudioError is a ValueError
            return text, str(err)
        finally:
            raw.unlink(missing_ok=True)

    logger.info("Synthesising %d neutral utterances with %s/%s on %d workers",
                len(todo), backend, voice, num_workers)
    try:
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            for text, error in pool.map(run, todo):
                if error is None:
                    report.synthesized += 1
                else:
                    report.failed[text] = error
                    logger.warning("TTS failed, utterance left out: %r (%s)", text[:80], error)
    finally:
        for worker in workers:
            worker.close()
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("Neutral synthesis: %s", report.summary())
    return report


def _store_16k(raw_path, final_path):
    """Reads the synthesiser's file, converts to 16 kHz mono, writes ``final_path`` atomically."""
    from rewire_lobes.data.audio import load_audio

    wav = load_audio(raw_path, sample_rate=SAMPLE_RATE)
    with atomic_path(final_path) as tmp:
        soundfile.write(str(tmp), wav.numpy(), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def manifest_texts(csv_path, text_column="wrd"):
    """``{utterance id: TTS text}`` of a SpeechBrain manifest CSV."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        return {row["ID"]: tts_text(row[text_column]) for row in csv.DictReader(handle)}


def synthesize_manifest(csv_path, cache_dir, backend="festival", voice=None, num_workers=2,
                        timeout_s=120.0, worker_class=None):
    """Neutral audio for every utterance of a manifest.

    Returns ``(report, available)``: ``available`` is the set of utterance ids whose
    neutral audio exists (failed ones are missing from it).
    """
    texts = manifest_texts(csv_path)
    report = synthesize_texts(texts.values(), cache_dir, backend, voice, num_workers, timeout_s,
                              worker_class)
    available = {
        uid for uid, text in texts.items()
        if neutral_path(cache_dir, text, backend, voice).is_file()
    }
    return report, available


def failure_summary(texts, available, report):
    """``{"utterances", "share", "texts"}``: utterances left out, their share, failed texts.

    ``texts`` maps utterance id to TTS text (:func:`manifest_texts`), ``available`` is the
    set of ids with neutral audio, ``report`` the :class:`SynthesisReport`.
    """
    left_out = len(texts) - len(set(texts) & set(available))
    return {
        "utterances": left_out,
        "share": left_out / len(texts) if texts else 0.0,
        "texts": len(report.failed),
    }


def check_failures(summary, failed, max_failed_fraction, report_path=None, shown=20):
    """Raises :class:`TooManySynthesisFailures` when ``summary["share"]`` is over the limit.

    ``failed`` maps text to reason (``SynthesisReport.failed``); the first ``shown`` texts
    are listed in the message, all of them in ``report_path``.
    """
    if max_failed_fraction is None or summary["share"] <= float(max_failed_fraction):
        return
    listed = "; ".join(f"{text!r} ({reason})" for text, reason in itertools.islice(
        failed.items(), shown))
    more = f"; ... and {len(failed) - shown} more" if len(failed) > shown else ""
    where = f" Every failure and its reason: {report_path}." if report_path else ""
    raise TooManySynthesisFailures(
        f"Neutral TTS failed for {summary['utterances']} utterances ({summary['share']:.2%}), "
        f"over max_failed_fraction {float(max_failed_fraction):.2%}; failed texts: "
        f"{listed}{more}.{where} Fix the TTS setup, or pass a larger --max_failed_fraction "
        "to train without these utterances."
    )


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--espeak-worker":
    _espeak_worker_main(sys.argv[2])
