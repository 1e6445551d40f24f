"""Audio reading with the checks every recipe needs.

SpeechBrain's ``read_audio`` never resamples and returns ``[T, C]`` for multi-channel
files; the SSL encoders want mono 16 kHz. ``load_audio`` fixes what is safe to fix
(down-mixing, resampling) and raises :class:`AudioError`, naming the file, otherwise.
"""

import soundfile
import torch
import torchaudio

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """A file that cannot be used as speech input; the message names the file."""


def load_audio(path, sample_rate=SAMPLE_RATE, start=None, stop=None):
    """Reads ``path`` as a mono float32 tensor ``[T]`` at ``sample_rate``.

    ``start``/``stop`` select samples at the file's own rate. Multi-channel audio is
    averaged to mono; another rate is resampled. An unreadable or empty file raises
    :class:`AudioError`.
    """
    try:
        data, file_rate = soundfile.read(
            str(path), start=start or 0, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    wav = torch.from_numpy(data).mean(dim=1) if data.shape[1] > 1 else torch.from_numpy(data[:, 0])
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: the audio contains NaN or infinite samples")
    if file_rate != sample_rate:
        wav = torchaudio.functional.resample(wav, file_rate, sample_rate)
    return wav.contiguous()


def audio_info(path):
    """``(num_samples, sample_rate, channels)`` of ``path`` without reading the samples."""
    try:
        info = soundfile.info(str(path))
    except Exception as err:
        raise AudioError(f"{path}: cannot read audio header ({err})") from err
    if info.frames == 0:
        raise AudioError(f"{path}: the file holds no samples")
    return info.frames, info.samplerate, info.channels
