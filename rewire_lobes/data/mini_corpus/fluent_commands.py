"""The mini Fluent Speech Commands: one folder of WAVs per speaker, and a CSV per split."""

import csv
import io
import string
import uuid

from rewire_lobes.data.mini_corpus.context import random_seed
from rewire_lobes.data.mini_corpus.noise import random_noise_color
from rewire_lobes.data.mini_corpus.recording import Take
from rewire_lobes.data.mini_corpus.text import pick
from rewire_lobes.data.mini_corpus.voices import sample_voices
from rewire_lobes.io_utils import write_text_atomic

FSC_COMMANDS = {  # (action, object, location): transcriptions, as in the real 31 intents
    ("change language", "none", "none"): (
        "Change language",
        "Language settings",
        "Switch the language",
    ),
    ("change language", "Chinese", "none"): ("Switch to Chinese", "Set the language to Chinese"),
    ("change language", "Korean", "none"): ("Use Korean", "Set my device to Korean"),
    ("change language", "English", "none"): ("Switch to English", "Set the language to English"),
    ("change language", "German", "none"): ("Use German", "Change the language to German"),
    ("activate", "music", "none"): ("Play music", "Put on some music", "Start the music"),
    ("activate", "lights", "none"): ("Turn on the lights", "Lights on"),
    ("activate", "lights", "kitchen"): (
        "Turn on the kitchen lights",
        "Switch on the lights in the kitchen",
    ),
    ("activate", "lights", "bedroom"): ("Turn on the bedroom lights", "Lights on in the bedroom"),
    ("activate", "lights", "washroom"): (
        "Turn on the washroom lights",
        "Switch on the lights in the washroom",
    ),
    ("activate", "lamp", "none"): ("Turn on the lamp", "Switch the lamp on"),
    ("deactivate", "music", "none"): ("Stop the music", "Pause music"),
    ("deactivate", "lights", "none"): ("Turn off the lights", "Lights off"),
    ("deactivate", "lights", "kitchen"): (
        "Turn off the kitchen lights",
        "Switch off the lights in the kitchen",
    ),
    ("deactivate", "lights", "bedroom"): (
        "Turn off the bedroom lights",
        "Lights off in the bedroom",
    ),
    ("deactivate", "lights", "washroom"): (
        "Turn off the washroom lights",
        "Switch off the lights in the washroom",
    ),
    ("deactivate", "lamp", "none"): ("Turn off the lamp", "Switch the lamp off"),
    ("increase", "volume", "none"): ("Turn up the volume", "Louder please", "Increase the volume"),
    ("decrease", "volume", "none"): (
        "Turn down the volume",
        "Make it quieter",
        "Decrease the volume",
    ),
    ("increase", "heat", "none"): ("Turn up the heat", "Make it warmer"),
    ("increase", "heat", "kitchen"): ("Turn up the heat in the kitchen", "Make the kitchen warmer"),
    ("increase", "heat", "bedroom"): ("Turn up the heat in the bedroom", "Heat up the bedroom"),
    ("increase", "heat", "washroom"): (
        "Turn up the heat in the washroom",
        "Make the washroom warmer",
    ),
    ("decrease", "heat", "none"): ("Turn the heat down", "Make it cooler"),
    ("decrease", "heat", "kitchen"): (
        "Turn down the heat in the kitchen",
        "Make the kitchen cooler",
    ),
    ("decrease", "heat", "bedroom"): ("Turn down the heat in the bedroom", "Cool down the bedroom"),
    ("decrease", "heat", "washroom"): (
        "Turn down the heat in the washroom",
        "Make the washroom cooler",
    ),
    ("bring", "newspaper", "none"): ("Bring me the newspaper", "Get me the newspaper"),
    ("bring", "juice", "none"): ("Bring me some juice", "Fetch me a glass of juice"),
    ("bring", "socks", "none"): ("Bring me my socks", "Get my socks"),
    ("bring", "shoes", "none"): ("Bring me my shoes", "Fetch my shoes"),
}
FSC_SPLITS = {"train": (8, 16), "valid": (3, 12), "test": (3, 12)}  # speakers, utterances each
FSC_COLUMNS = ("", "path", "speakerId", "transcription", "action", "object", "location")


def write_fluent_speech_commands(ctx):
    """Writes the three Fluent Speech Commands splits; returns ``(counts, manifest items)``."""
    rng = ctx.rng("fluent_speech_commands")
    folder = ctx.staging["fluent_speech_commands_dataset"]
    phrases = [(text, *labels) for labels, texts in FSC_COMMANDS.items() for text in texts]
    speakers = {split: ctx.count(n) for split, (n, _) in FSC_SPLITS.items()}
    voices = sample_voices(rng, sum(speakers.values()))
    alphabet = string.ascii_letters + string.digits

    jobs, rows = [], {split: [] for split in FSC_SPLITS}
    for split, (_, per_speaker) in FSC_SPLITS.items():
        # train cycles through every phrase so that every label value appears in it
        order = rng.permutation(len(phrases)).tolist() * (
            1 + speakers[split] * per_speaker // len(phrases)
        )
        if split != "train":
            order = rng.choice(len(phrases), speakers[split] * per_speaker).tolist()
        for _ in range(speakers[split]):
            speaker = "".join(pick(rng, alphabet) for _ in range(16))
            voice = voices.pop(0)
            for _ in range(per_speaker):
                text, action, obj, location = phrases[order.pop(0)]
                relative = (
                    f"wavs/speakers/{speaker}/{uuid.UUID(bytes=rng.bytes(16), version=1)}.wav"
                )
                take = Take(
                    phrases=(text,),
                    voice=voice,
                    seed=random_seed(rng),
                    snr_db=float(rng.uniform(10, 35)),
                    noise=random_noise_color(rng),
                    pad=(0.2, 0.8),
                )
                jobs.append((take, folder / relative))
                rows[split].append([relative, speaker, text, action, obj, location])

    metas = iter(ctx.render(jobs))
    items = []
    for split, split_rows in rows.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(FSC_COLUMNS)
        for index, row in enumerate(split_rows):
            writer.writerow([index] + row)
            items.append({"split": split, **dict(zip(FSC_COLUMNS[1:], row)), **next(metas)})
        write_text_atomic(folder / "data" / f"{split}_data.csv", buffer.getvalue())
    counts = {split: len(r) for split, r in rows.items()}
    counts.update({f"{split}_speakers": n for split, n in speakers.items()})
    return counts, items

