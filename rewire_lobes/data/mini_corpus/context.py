"""What a corpus writer is handed: seeded generators, scaled counts and parallel recording."""

import dataclasses
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rewire_lobes.data.mini_corpus.files import save_audio
from rewire_lobes.data.mini_corpus.recording import record
from rewire_lobes.data.mini_corpus.tools import Tools


@dataclasses.dataclass
class WriterContext:
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
            return describe_take(recording, take)

        return self.map(render_one, jobs)


def describe_take(recording, take):
    """The manifest fields of a recorded take: duration, speech and phrase times, voice, noise."""
    return {
        "duration": round(recording.duration, 4),
        "speech": recording.speech,
        "phrases": recording.phrases,
        "voice": take.voice.describe(),
        "snr_db": None if take.snr_db is None else round(take.snr_db, 1),
        "noise": None if take.snr_db is None else take.noise,
    }


def random_seed(rng):
    """A seed for a take or a mixture, drawn from ``rng``."""
    return int(rng.integers(2**31))

