"""The mini Audio-SNIPS as SUPERB's preprocessing leaves it: per-split WAVs, IOB file, slot list.

SUPERB's Polly voices are stood in for by espeak-ng voices of the same names, the
train, valid and test voices distinct as in SUPERB.
"""

from rewire_lobes.data.mini_corpus.context import random_seed
from rewire_lobes.data.mini_corpus.files import write_lines
from rewire_lobes.data.mini_corpus.recording import Take
from rewire_lobes.data.mini_corpus.text import pick
from rewire_lobes.data.mini_corpus.voices import Voice

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
        value = pick(rng, SNIPS_SLOT_VALUES[slot]) if slot else token
        for word in value.split():
            words.append(word.upper())
            slots.append(slot or "O")
    return words, slots, intent


def write_snips(ctx):
    """Writes the three SNIPS splits; returns ``(counts, manifest items)``."""
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
                    seed=random_seed(rng),
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

