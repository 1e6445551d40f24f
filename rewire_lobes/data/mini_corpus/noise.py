"""Noise and levels: coloured noise, mixing at an SNR, RMS over speech, peak limiting."""

import numpy as np

NOISE_COLORS = ("white", "pink", "brown")


def random_noise_color(rng):
    """One of ``NOISE_COLORS``, drawn from ``rng``."""
    return NOISE_COLORS[int(rng.integers(len(NOISE_COLORS)))]


def rms(wav, sample_rate, intervals=None):
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
    speech_rms = rms(wav, sample_rate, intervals) or 1e-4
    return wav + noise * np.float32(speech_rms / 10 ** (snr_db / 20))


def limit_peak(wav, peak=0.95):
    """``wav`` scaled down so that its peak is at most ``peak``; untouched if it already is."""
    top = float(np.max(np.abs(wav))) if len(wav) else 0.0
    return wav * np.float32(peak / top) if top > peak else wav

