"""The mini Speech Commands v0.01: word clips, background noise, hash-split lists, test archive.

Speaker ids are drawn until TensorFlow's hash split (:mod:`rewire_lobes.data.speech_commands`)
sends the wanted number of them to each part, so ``validation_list.txt`` and
``testing_list.txt`` hold what the real rule gives.
"""

import dataclasses
import shutil

import numpy as np
import soundfile

from rewire_lobes.data.mini_corpus.context import random_seed
from rewire_lobes.data.mini_corpus.files import save_audio, write_lines
from rewire_lobes.data.mini_corpus.noise import colored_noise, limit_peak, random_noise_color, rms
from rewire_lobes.data.mini_corpus.recording import SAMPLE_RATE, Take, record
from rewire_lobes.data.mini_corpus.text import sentence_clauses
from rewire_lobes.data.mini_corpus.voices import sample_voices
from rewire_lobes.data.speech_commands import hash_split
from rewire_lobes.io_utils import atomic_path, write_text_atomic

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_COMMAND_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "tree", "wow")
BACKGROUND_NOISES = {
    "white_noise": "white",
    "pink_noise": "pink",
    "brown_noise": "brown",
    "babble": None,
}
BACKGROUND_SECONDS = 12
SPEECH_COMMANDS_SPEAKERS = {"train": 14, "validation": 3, "testing": 3}


def _speaker_ids_by_split(rng, counts):
    """8-hex-digit speaker ids whose hash split fills ``counts`` (``{split: n}``)."""
    chosen = {split: [] for split in counts}
    while any(len(chosen[s]) < n for s, n in counts.items()):
        speaker = f"{int(rng.integers(2**32)):08x}"
        split = hash_split(f"{speaker}_nohash_0.wav")
        if len(chosen[split]) < counts[split]:
            chosen[split].append(speaker)
    return chosen


def write_speech_commands(ctx):
    """Writes both Speech Commands folders; returns ``(counts, manifest items)``."""
    rng = ctx.rng("speech_commands")
    main = ctx.staging["speech_commands_v0.01"]
    test = ctx.staging["speech_commands_test_set_v0.01"]
    counts = {split: ctx.count(n) for split, n in SPEECH_COMMANDS_SPEAKERS.items()}
    by_split = _speaker_ids_by_split(rng, counts)
    speakers = [s for split in ("train", "validation", "testing") for s in by_split[split]]
    voices = dict(zip(speakers, sample_voices(rng, len(speakers))))

    jobs, items = [], []
    for speaker in speakers:
        for word in KEYWORDS + OTHER_COMMAND_WORDS:
            takes = 1 if rng.random() < (0.95 if word in KEYWORDS else 0.6) else 0
            takes += int(takes and rng.random() < 0.25)
            for n in range(takes):
                voice = dataclasses.replace(
                    voices[speaker], speed=voices[speaker].speed + int(rng.integers(-15, 16))
                )
                take = Take(
                    phrases=(word,),
                    voice=voice,
                    seed=random_seed(rng),
                    snr_db=float(rng.uniform(5, 30)),
                    noise=random_noise_color(rng),
                    length=SAMPLE_RATE,
                )
                relative = f"{word}/{speaker}_nohash_{n}.wav"
                jobs.append((take, main / relative))
                items.append(
                    {
                        "path": f"speech_commands_v0.01/{relative}",
                        "word": word,
                        "speaker": speaker,
                        "split": hash_split(relative),
                    }
                )
    for item, meta in zip(items, ctx.render(jobs)):
        item.update(meta)

    noise_items = _write_background_noise(ctx, rng, main / "_background_noise_")
    for split, list_name in (
        ("validation", "validation_list.txt"),
        ("testing", "testing_list.txt"),
    ):
        listed = sorted(i["path"].split("/", 1)[1] for i in items if i["split"] == split)
        write_lines(main / list_name, listed)

    test_items = _write_speech_commands_test_set(rng, main, test, items)
    return (
        {
            "clips": len(items),
            "speakers": {split: len(ids) for split, ids in by_split.items()},
            "background_noise": len(noise_items),
            "test_set": len(test_items),
        },
        items + noise_items + test_items,
    )


def _write_background_noise(ctx, rng, folder):
    """Long noise recordings: coloured noises and a babble of several voices."""
    length = BACKGROUND_SECONDS * SAMPLE_RATE
    babble_voices = sample_voices(rng, 4)
    takes = [
        Take(
            phrases=(", ".join(" ".join(c) for c in sentence_clauses(rng, 30)),),
            voice=voice,
            seed=random_seed(rng),
            pad=(0.0, 0.5),
        )
        for voice in babble_voices
    ]
    voices = ctx.map(lambda take: record(take, ctx.tools).wav, takes)
    items = []
    for name, color in BACKGROUND_NOISES.items():
        if color:
            wav = 0.1 * colored_noise(rng, length, color)
        else:  # babble: every voice looped over the whole length, each from its own offset
            wav = np.zeros(length, dtype=np.float32)
            for voice in voices:
                looped = np.tile(voice, length // len(voice) + 2)
                start = int(rng.integers(len(voice)))
                wav += looped[start : start + length]
            wav *= np.float32(0.1 / (rms(wav, SAMPLE_RATE) or 1e-4))
        save_audio(folder / f"{name}.wav", limit_peak(wav), SAMPLE_RATE)
        items.append(
            {"path": f"speech_commands_v0.01/_background_noise_/{name}.wav", "noise": name}
        )
    write_text_atomic(
        folder / "README.md",
        "Background noise for the mini Speech Commands corpus: synthetic white, pink and brown "
        "noise and a babble of espeak-ng voices, each 12 s at 16 kHz.\n",
    )
    return items


def _write_speech_commands_test_set(rng, main, test, items):
    """The v0.01 test archive: 'testing' speakers' clips per keyword, _unknown_, _silence_."""
    test_items = []
    for item in items:
        if item["split"] != "testing":
            continue
        word, name = item["path"].split("/")[1:]
        label, target = (word, name) if word in KEYWORDS else ("_unknown_", f"{word}_{name}")
        with atomic_path(test / label / target) as tmp:
            shutil.copyfile(main / word / name, tmp)
        test_items.append(
            {
                "path": f"speech_commands_test_set_v0.01/{label}/{target}",
                "label": label,
                "word": word,
                "speaker": item["speaker"],
            }
        )
    noises = sorted((main / "_background_noise_").glob("*.wav"))
    for index in range(max(2, len(test_items) // 10)):
        source = noises[index % len(noises)]
        noise, _ = soundfile.read(str(source), dtype="float32")
        start = int(rng.integers(len(noise) - SAMPLE_RATE))
        gain = 10 ** (rng.uniform(-30, 0) / 20)
        target = f"{source.stem}_nohash_{index}.wav"
        save_audio(
            test / "_silence_" / target, noise[start : start + SAMPLE_RATE] * gain, SAMPLE_RATE
        )
        test_items.append(
            {"path": f"speech_commands_test_set_v0.01/_silence_/{target}", "label": "_silence_"}
        )
    for label in KEYWORDS + ("_unknown_", "_silence_"):
        (test / label).mkdir(parents=True, exist_ok=True)
    return test_items

