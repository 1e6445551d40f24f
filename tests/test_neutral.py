"""Neutral TTS: escaping, caching, long-lived workers, failures left out and counted, or
stopping the run over max_failed_fraction."""

import shutil
import sys
import time
from pathlib import Path

import pytest
import soundfile

from rewire_lobes.errors import UserError
from rewire_lobes.rewiring import neutral
from rewire_lobes.rewiring.neutral import (
    FestivalWorker,
    SynthesisError,
    _PipeWorker,
    cache_key,
    neutral_path,
    scheme_string,
    synthesize_manifest,
    synthesize_texts,
    tts_text,
)

KAL_DIPHONE = Path("/usr/share/festival/voices/english/kal_diphone")
needs_festival = pytest.mark.skipif(
    shutil.which("festival") is None or not KAL_DIPHONE.exists(),
    reason="festival with kal_diphone is not installed (make system-tools)",
)


def test_tts_text_and_cache_key():
    assert tts_text("  HELLO\tWORLD \n") == "hello world"
    key = cache_key("hello", "festival", "kal_diphone")
    assert len(key) == 40 and key == cache_key("hello", "festival", "kal_diphone")
    assert key != cache_key("hello", "espeak", "kal_diphone")
    assert key != cache_key("hello", "festival", "other")
    assert neutral_path("/c", "hello").name == f"{key}.wav"


def test_scheme_string_escapes_quotes_backslashes_and_newlines():
    assert scheme_string('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c d"'


class CountingFestival(FestivalWorker):
    starts = 0

    def _start(self):
        type(self).starts += 1
        super()._start()


@needs_festival
def test_festival_synthesis_is_cached_resampled_and_survives_hostile_text(tmp_path):
    marker = tmp_path / "pwned"
    texts = [
        "hello there",
        'a "quoted" word and a back\\slash',
        f"$(touch {marker}) ; `touch {marker}` | cat",
        "(format t \"injected\") ) ) (quit)",
        "...",  # nothing to say: fails, counted, left out
    ]
    CountingFestival.starts = 0
    report = synthesize_texts(texts, tmp_path / "cache", num_workers=1,
                              worker_class=CountingFestival)
    assert report.synthesized == 4 and list(report.failed) == ["..."]
    assert CountingFestival.starts == 1, "one long-lived process served every utterance"
    assert not marker.exists(), "the transcript never reached a shell"
    for text in texts[:4]:
        audio, rate = soundfile.read(neutral_path(tmp_path / "cache", text))
        assert rate == 16000 and audio.ndim == 1 and len(audio) > 1600
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".wav"]
    assert leftovers == [], "temporary files are cleaned up"

    started = time.time()
    again = synthesize_texts(texts, tmp_path / "cache", worker_class=CountingFestival)
    assert (again.cached, again.synthesized, len(again.failed)) == (4, 0, 1)
    assert CountingFestival.starts == 1 and time.time() - started < 1.0


@pytest.mark.skipif(neutral._espeak_library() is None, reason="libespeak-ng is not installed")
def test_espeak_backend(tmp_path):
    report = synthesize_texts(["good morning", 'say "cheese"'], tmp_path, backend="espeak",
                              num_workers=2)
    assert report.synthesized == 2
    audio, rate = soundfile.read(neutral_path(tmp_path, "good morning", "espeak"))
    assert rate == 16000 and len(audio) > 4000


CRASHY_WORKER = r"""
import json, sys, numpy, soundfile
for line in sys.stdin:
    job = json.loads(line)
    if "crash" in job.get("text", ""):
        sys.exit(3)
    if "text" in job:
        soundfile.write(job["path"], numpy.full(8000, 0.1), 8000)
    print("@@DONE %s ok" % job["tag"], flush=True)
"""


class CrashyWorker(_PipeWorker):
    """Dies on any text holding "crash"; writes 1 s at 8 kHz otherwise."""

    starts = 0

    def command(self):
        return [sys.executable, "-c", CRASHY_WORKER]

    def startup_request(self, tag):
        return '{"tag": "%s"}' % tag

    def synthesis_request(self, text, wav_path, tag):
        import json

        return json.dumps({"tag": tag, "text": text, "path": wav_path})

    def _start(self):
        type(self).starts += 1
        super()._start()


def test_a_crashing_synthesis_is_counted_and_the_worker_restarted(tmp_path):
    CrashyWorker.starts = 0
    texts = ["one", "two crash", "three", "four"]
    report = synthesize_texts(texts, tmp_path, num_workers=1, worker_class=CrashyWorker)
    assert report.synthesized == 3 and list(report.failed) == ["two crash"]
    assert "exited" in report.failed["two crash"]
    assert CrashyWorker.starts == 2
    audio, rate = soundfile.read(neutral_path(tmp_path, "three"))
    assert rate == 16000 and len(audio) == 16000, "resampled to 16 kHz"


def test_manifest_synthesis_reports_available_ids(tmp_path):
    manifest = tmp_path / "train.csv"
    manifest.write_text("ID,duration,wav,spk_id,wrd\na,1,x,1,HELLO\nb,1,x,1,CRASH HERE\n"
                        "c,1,x,1,HELLO\n", encoding="utf-8")
    report, available = synthesize_manifest(manifest, tmp_path / "cache",
                                            worker_class=CrashyWorker)
    assert available == {"a", "c"} and report.requested == 2 and len(report.failed) == 1


def test_a_worker_that_hangs_times_out(tmp_path):
    class Hanging(CrashyWorker):
        def synthesis_request(self, text, wav_path, tag):
            return '{"tag": "never"}'  # answered with another tag: never ours

    worker = Hanging("v", timeout_s=0.5)
    with pytest.raises(SynthesisError, match="no answer"):
        worker.synthesize("hello", tmp_path / "x.wav")
    worker.close()


# ------------------------------------------------------------------------------ failure limit


def _synthesize_neutral():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "recipes" / "rewire" / "synthesize_neutral.py"
    spec = importlib.util.spec_from_file_location("rewire_synthesize_neutral", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest(path, texts):
    rows = "".join(f"u{i},1,x,1,{text}\n" for i, text in enumerate(texts))
    path.write_text("ID,duration,wav,spk_id,wrd\n" + rows, encoding="utf-8")
    return path


def test_failures_over_the_limit_stop_with_the_texts_listed(tmp_path):
    import json

    script = _synthesize_neutral()
    manifest = _manifest(tmp_path / "train.csv", ["ONE", "TWO CRASH", "THREE", "FOUR"])
    report_path = tmp_path / "neutral_synthesis.json"
    with pytest.raises(neutral.TooManySynthesisFailures) as error:
        script.ensure_neutral_audio(manifest, tmp_path / "cache", report_path=report_path,
                                    worker_class=CrashyWorker)  # default limit: 1 %
    message = str(error.value)
    assert "failed for 1 utterances (25.00%), over max_failed_fraction 1.00%" in message
    assert "'two crash' (" in message and "exited" in message
    assert str(report_path) in message
    assert not isinstance(error.value, UserError), "a data problem, not a wrong option"
    report = json.loads(report_path.read_text())
    assert report["left_out"] == {"utterances": 1, "share": 0.25, "texts": 1}
    assert list(report["failed"]) == ["two crash"] and report["max_failed_fraction"] == 0.01


def test_failures_under_the_limit_are_left_out_and_counted(tmp_path):
    import json

    script = _synthesize_neutral()
    # Two utterances share the failing text: counted per utterance, the share of the manifest.
    manifest = _manifest(tmp_path / "train.csv", ["ONE", "CRASH", "THREE", "CRASH", "FIVE"])
    summary = script.ensure_neutral_audio(manifest, tmp_path / "cache", max_failed_fraction=0.5,
                                          report_path=tmp_path / "r.json",
                                          worker_class=CrashyWorker)
    assert summary == {"utterances": 2, "share": 0.4, "texts": 1}
    assert json.loads((tmp_path / "r.json").read_text())["left_out"] == summary
    # the cached audio is reused; the failure is retried and counted again
    again = script.ensure_neutral_audio(manifest, tmp_path / "cache", max_failed_fraction=0.4,
                                        worker_class=CrashyWorker)
    assert again == summary, "exactly at the limit is still allowed"
    with pytest.raises(neutral.TooManySynthesisFailures):
        script.ensure_neutral_audio(manifest, tmp_path / "cache", max_failed_fraction=0.39,
                                    worker_class=CrashyWorker)


def test_a_long_failure_list_is_cut_in_the_message():
    failed = {f"text {i}": "no audio" for i in range(30)}
    summary = {"utterances": 30, "share": 0.3, "texts": 30}
    with pytest.raises(neutral.TooManySynthesisFailures, match=r"and 10 more.*report\.json"):
        neutral.check_failures(summary, failed, 0.01, "report.json")
    neutral.check_failures(summary, failed, None)  # no limit
    neutral.check_failures(summary, failed, 0.3)
