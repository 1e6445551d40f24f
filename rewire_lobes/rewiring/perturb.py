"""Speaker perturbation: the Perturb positive (after SPIN, Chang et al., 2023, and
ContentVec, Qian et al., 2022).

The view is Praat's "Change gender" (through parselmouth), as ContentVec's and NANSY's
perturbation: formants scaled by one ratio, the median F0 moved to the utterance's own
median times another, the F0 range around it scaled by a third. Each ratio is drawn
uniformly from its range and inverted with probability ``invert`` (ContentVec: formant
[1, 1.4], pitch [1, 2], range [1, 1.5], each inverted with probability 1/2).

Praat neither clips nor normalises (the peak moved by 0.7x-1.01x on LJSpeech), so the view
is rescaled to the input's peak: loudness is no cue that tells the views apart. Praat's
resynthesis draws from Praat's own random stream: it is seeded from ``rng`` too, so the
view is a function of the waveform and the ``rng`` state.
"""

import contextlib
import math
import warnings
from dataclasses import dataclass, fields

import numpy as np
import parselmouth
import torch
import torchaudio

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.errors import OptionError

RATIO_RANGES = ("formant", "pitch", "pitch_range")
# Praat's resynthesis can leave a slow offset (a few % of full scale, below any voice's
# f0); it is filtered out before the peak is matched, or it would take the speech's share.
OFFSET_CUTOFF_HZ = 20.0


def _numbers(values, count):
    """``count`` floats from a YAML list, or NaNs (which fail every check) for anything else."""
    try:
        numbers = [float(v) for v in values if not isinstance(v, (bool, str))]
    except (TypeError, ValueError):
        numbers = []
    return numbers if len(numbers) == count == len(values) else [math.nan] * count


def _sound(wav, sample_rate):
    return parselmouth.Sound(wav.detach().cpu().double().numpy(), sampling_frequency=sample_rate)


@contextlib.contextmanager
def _praat(seed=None):
    """Praat without its "no voiced segments" warning; with ``seed``, Praat's own random
    stream (its resynthesis draws from it) seeded, then unpredictable again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", parselmouth.PraatWarning)
        if seed is None:
            yield
            return
        parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({seed})")
        try:
            yield
        finally:
            parselmouth.praat.run("random_initializeSafelyAndUnpredictably ()")


def _median(pitch):
    frequencies = pitch.selected_array["frequency"]
    voiced = frequencies[frequencies > 0]
    return float(np.median(voiced)) if voiced.size else 0.0


def median_f0(wav, sample_rate=SAMPLE_RATE, pitch_floor=75.0, pitch_ceiling=600.0):
    """Median F0 (Hz) of the voiced frames of ``wav`` (Praat's "To Pitch (ac)").

    ``0.0`` when no frame is voiced or ``wav`` is shorter than three periods of
    ``pitch_floor`` (Praat's "unknown" median: "Change gender" then keeps the pitch).

    Example
    -------
    >>> tone = torch.sin(2 * math.pi * 150 * torch.arange(8000) / 16000)
    >>> round(median_f0(tone)), median_f0(torch.zeros(8000))
    (150, 0.0)
    """
    with _praat():
        try:
            return _median(_sound(wav, sample_rate).to_pitch_ac(
                pitch_floor=pitch_floor, pitch_ceiling=pitch_ceiling))
        except parselmouth.PraatError:
            return 0.0


@dataclass(frozen=True)
class SpeakerPerturbation:
    """The ranges of the ratios, and ``perturbation(wav, rng)`` for :class:`PairMaker`.

    Arguments
    ---------
    formant, pitch, pitch_range : [min, max]
        Ranges of the formant shift, median F0 and F0 range ratios, ``0 < min <= max``.
    invert : float
        Probability of using ``1 / ratio`` instead, for each ratio.
    pitch_floor, pitch_ceiling : float
        F0 search range (Hz) of the analysis.
    """

    formant: tuple = (1.0, 1.4)
    pitch: tuple = (1.0, 2.0)
    pitch_range: tuple = (1.0, 1.5)
    invert: float = 0.5
    pitch_floor: float = 75.0
    pitch_ceiling: float = 600.0

    def __post_init__(self):
        for name in RATIO_RANGES:
            value = getattr(self, name)
            low, high = _numbers(value, 2)
            if not 0 < low <= high < math.inf:
                raise OptionError(f"perturb_{name} must be [min, max] with 0 < min <= max, "
                                  f"got {value!r}")
            object.__setattr__(self, name, (low, high))
        if not 0 <= _numbers([self.invert], 1)[0] <= 1:
            raise OptionError(f"perturb_invert must be a probability in [0, 1], "
                              f"got {self.invert!r}")
        floor, ceiling = _numbers([self.pitch_floor, self.pitch_ceiling], 2)
        if not 0 < floor < ceiling < math.inf:
            raise OptionError("perturb_pitch_floor and perturb_pitch_ceiling must satisfy 0 < "
                              f"floor < ceiling, got {self.pitch_floor!r}, {self.pitch_ceiling!r}")

    def draw(self, rng):
        """``(formant, pitch, pitch_range)`` ratios; always three (uniform, coin) draws."""
        ratios = []
        for low, high in (self.formant, self.pitch, self.pitch_range):
            ratio = rng.uniform(low, high)
            ratios.append(1.0 / ratio if rng.random() < self.invert else ratio)
        return tuple(ratios)

    def __call__(self, wav, rng, sample_rate=SAMPLE_RATE):
        """The perturbed copy of ``wav`` (1-D), float32, of exactly its length.

        Praat keeps the length at a duration factor of 1 (on every length tried): trimming
        or zero-padding is a guard. Unvoiced input has median 0, Praat's "keep the pitch",
        so only its formants move; input Praat cannot analyse (under three periods of
        ``pitch_floor``) comes back unchanged, as ContentVec keeps it when Praat fails.
        """
        if wav.dim() != 1:
            raise ValueError(f"perturb_speaker takes a 1-D waveform, got shape {tuple(wav.shape)}")
        formant, pitch, pitch_range = self.draw(rng)
        sound = _sound(wav, sample_rate)
        with _praat(seed=rng.randrange(2**31)):
            try:
                f0 = sound.to_pitch_ac(pitch_floor=self.pitch_floor,
                                       pitch_ceiling=self.pitch_ceiling)
                changed = parselmouth.praat.call([sound, f0], "Change gender", formant,
                                                 _median(f0) * pitch, pitch_range, 1.0)
            except parselmouth.PraatError:
                return wav.detach().clone().float()
        values = torch.from_numpy(changed.values[0][: wav.shape[-1]])
        if not torch.isfinite(values).all():
            return wav.detach().clone().float()
        view = torch.zeros(wav.shape[-1], dtype=torch.float64)
        view[: values.shape[0]] = torchaudio.functional.highpass_biquad(
            values, sample_rate, OFFSET_CUTOFF_HZ)
        peak, input_peak = float(view.abs().max()), float(wav.abs().max())
        if peak > 0:
            view *= input_peak / peak
        return view.float()


def perturb_speaker(wav, rng, sample_rate=SAMPLE_RATE, **ranges):
    """A speaker-perturbed copy of ``wav`` (1-D float32, same length), ratios drawn from
    ``rng``; ``ranges`` are :class:`SpeakerPerturbation`'s fields (ContentVec's by default).

    Example
    -------
    >>> import random
    >>> tone = torch.sin(2 * math.pi * 120 * torch.arange(8001) / 16000)
    >>> view = perturb_speaker(tone, random.Random(0), pitch=[1.5, 1.5], invert=0)
    >>> view.shape, round(median_f0(view) / 120, 1)
    (torch.Size([8001]), 1.5)
    """
    unknown = sorted(set(ranges) - {field.name for field in fields(SpeakerPerturbation)})
    if unknown:
        raise OptionError(f"unknown perturbation option(s) {', '.join(unknown)}; expected "
                          f"{', '.join(field.name for field in fields(SpeakerPerturbation))}")
    return SpeakerPerturbation(**ranges)(wav, rng, sample_rate)
