"""Writing the corpus files atomically: 16-bit WAV or FLAC audio, and text lines."""

from pathlib import Path

import numpy as np
import soundfile

from rewire_lobes.io_utils import atomic_path, write_text_atomic


def save_audio(path, wav, sample_rate):
    """Writes 16-bit mono audio atomically; FLAC for ``.flac`` paths, else WAV."""
    pcm = np.clip(np.round(np.asarray(wav, dtype=np.float64) * 32767), -32768, 32767).astype("<i2")
    file_format = "FLAC" if Path(path).suffix == ".flac" else "WAV"
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), pcm, sample_rate, format=file_format, subtype="PCM_16")


def write_lines(path, lines):
    """Writes ``lines`` (newline-terminated) atomically."""
    write_text_atomic(path, "".join(f"{line}\n" for line in lines))

