"""The Perturb positive: Praat's "Change gender" with drawn ratios (rewiring/perturb.py)."""

import math
import random
import warnings
from pathlib import Path

import numpy as np
import parselmouth
import pytest
import torch

from rewire_lobes.data.audio import load_audio
from rewire_lobes.errors import OptionError
from rewire_lobes.rewiring.contrastive import PairMaker
from rewire_lobes.rewiring.perturb import SpeakerPerturbation, median_f0, perturb_speaker

LJSPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "ljspeech_sample" / "wavs"
RATE = 16000


def vowel(num_samples, f0=120.0, formants=(700.0, 1200.0, 2600.0)):
    """Harmonics of ``f0`` weighted by resonances at ``formants``, under a syllable envelope."""
    t = torch.arange(num_samples) / RATE
    wav = torch.zeros(num_samples)
    for k in range(1, int(4000 / f0)):
        gain = sum(1.0 / (1.0 + ((k * f0 - f) / 100.0) ** 2) for f in formants)
        wav += gain * torch.sin(2 * math.pi * k * f0 * t)
    envelope = 0.6 + 0.4 * torch.sin(2 * math.pi * 3.0 * t)
    wav = wav * envelope
    return (0.5 * wav / wav.abs().max()).float()


def speech(name="LJ001-0001"):
    path = LJSPEECH / f"{name}.wav"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return load_audio(path)


SIGNALS = {"vowel": lambda: vowel(RATE), "speech": speech}


@pytest.mark.parametrize("num_samples", [4801, 16001, 24000])
@pytest.mark.parametrize("kind", sorted(SIGNALS))
def test_length_and_type_kept(kind, num_samples):
    source = SIGNALS[kind]()
    wav = source[:num_samples] if source.shape[0] >= num_samples else vowel(num_samples)
    for seed in range(3):
        view = perturb_speaker(wav, random.Random(seed))
        assert view.shape == wav.shape and view.dtype == torch.float32
        assert torch.isfinite(view).all()
        assert not torch.equal(view, wav)


@pytest.mark.parametrize("drift", [-3, 5])
def test_praat_length_drift_is_trimmed_or_zero_padded(monkeypatch, drift):
    praat_call = parselmouth.praat.call

    def drifting_call(*args):
        values = praat_call(*args).values[0]
        values = values[:drift] if drift < 0 else np.concatenate([values, np.ones(drift)])
        return parselmouth.Sound(values, sampling_frequency=RATE)

    monkeypatch.setattr(parselmouth.praat, "call", drifting_call)
    view = perturb_speaker(vowel(4801), random.Random(0))
    assert view.shape == (4801,)
    if drift < 0:
        assert torch.equal(view[drift:], torch.zeros(-drift))


@pytest.mark.parametrize("kind", sorted(SIGNALS))
@pytest.mark.parametrize("invert", [0.0, 1.0])  # 1.5 up, or 1 / 1.5 down
def test_median_f0_moves_by_the_drawn_ratio(kind, invert):
    wav = SIGNALS[kind]()
    expected = 1.5 if invert == 0 else 1 / 1.5
    ranges = dict(formant=[1.1, 1.1], pitch=[1.5, 1.5], pitch_range=[1.0, 1.0], invert=invert)
    view = perturb_speaker(wav, random.Random(0), **ranges)
    measured = median_f0(view) / median_f0(wav)
    assert measured == pytest.approx(expected, rel=0.15)


def test_vowel_median_is_its_f0():
    assert median_f0(vowel(RATE, f0=120.0)) == pytest.approx(120.0, rel=0.02)


def test_peak_level_is_the_input_peak():
    wav = speech("LJ001-0008")  # Praat's formant shift down lowers this one's peak by 1/4
    view = perturb_speaker(wav, random.Random(0), formant=[1.4, 1.4], invert=1.0)
    assert float(view.abs().max()) == pytest.approx(float(wav.abs().max()), rel=1e-5)


def test_no_slow_offset_is_left_by_the_resynthesis():
    """Praat's Change gender leaves a wandering offset (5-7 % of the peak on this buzz,
    formants down, pitch up): filtered out, every tenth of the view has mean ~0."""
    t = torch.arange(RATE) / RATE
    wav = 0.3 * sum(torch.sin(2 * math.pi * 120 * k * t) / k for k in range(1, 8))
    for seed in range(3):
        view = perturb_speaker(wav, random.Random(seed), formant=[0.8, 1.0], pitch=[1.3, 1.3],
                               invert=0)
        tenth_means = view[: len(view) // 10 * 10].reshape(10, -1).mean(dim=1)
        assert float(tenth_means.abs().max()) < 0.025 * float(view.abs().max()), seed


def test_same_seed_same_view_other_seed_other_view():
    wav = vowel(RATE)
    first = perturb_speaker(wav, random.Random(7))
    assert torch.equal(first, perturb_speaker(wav, random.Random(7)))
    assert not torch.equal(first, perturb_speaker(wav, random.Random(8)))


def test_draws_stay_in_the_ranges_and_invert_half_of_the_time():
    perturbation = SpeakerPerturbation()
    rng = random.Random(0)
    draws = [perturbation.draw(rng) for _ in range(400)]
    for position, (low, high) in enumerate([(1.0, 1.4), (1.0, 2.0), (1.0, 1.5)]):
        ratios = [draw[position] for draw in draws]
        assert all(low <= r <= high or low <= 1 / r <= high for r in ratios)
        assert 0.4 < sum(r < 1 for r in ratios) / len(ratios) < 0.6


@pytest.mark.parametrize("wav", [torch.zeros(4801), 0.05 * torch.randn(16001)],
                         ids=["silence", "noise"])
def test_unvoiced_input_keeps_length_and_stays_finite(wav):
    torch.manual_seed(0)
    assert median_f0(wav) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = perturb_speaker(wav, random.Random(0))
    assert view.shape == wav.shape and torch.isfinite(view).all()
    assert float(view.abs().max()) == pytest.approx(float(wav.abs().max()), abs=1e-6)


def test_input_too_short_to_analyse_comes_back_unchanged():
    wav = vowel(200)  # under three periods of the 75 Hz floor
    view = perturb_speaker(wav, random.Random(0))
    assert torch.equal(view, wav) and view is not wav
    assert median_f0(wav) == 0.0


@pytest.mark.parametrize("ranges", [
    {"formant": [0.0, 1.4]}, {"pitch": [2.0, 1.0]}, {"pitch_range": [1.5]},
    {"pitch": "high"}, {"pitch": ["1", "2"]}, {"formant": [-1.4, -1.0]},
    {"formant": [1.0, float("inf")]}, {"invert": 1.5}, {"invert": "half"},
    {"pitch_floor": 600.0, "pitch_ceiling": 75.0}, {"pitch_shift": [1.0, 2.0]},
])
def test_bad_ranges_are_option_errors(ranges):
    with pytest.raises(OptionError, match="perturb"):
        perturb_speaker(vowel(4800), random.Random(0), **ranges)


def test_yaml_lists_become_tuples():
    perturbation = SpeakerPerturbation(formant=[1, 1.2])
    assert perturbation.formant == (1.0, 1.2)


def test_pair_maker_perturb_pair():
    maker = PairMaker("perturb", seed=3, perturbation=SpeakerPerturbation())
    pair = maker("utt", vowel(12345))
    assert pair.kind == "perturb" and pair.positive.shape == pair.anchor.shape
    assert not torch.equal(pair.positive, pair.anchor)
    assert torch.equal(pair.positive, maker("utt", vowel(12345)).positive)
