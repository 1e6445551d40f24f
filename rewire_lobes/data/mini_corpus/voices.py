"""The synthetic speakers: espeak-ng accents and variants, and drawing distinct voices."""

import dataclasses

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

