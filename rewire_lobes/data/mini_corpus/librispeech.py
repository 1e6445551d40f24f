"""The mini LibriSpeech: FLAC per speaker and chapter, chapter transcripts, SPEAKERS.TXT."""

import dataclasses

import numpy as np

from rewire_lobes.data.mini_corpus.context import describe_take, random_seed
from rewire_lobes.data.mini_corpus.files import save_audio, write_lines
from rewire_lobes.data.mini_corpus.noise import random_noise_color
from rewire_lobes.data.mini_corpus.recording import Take, record
from rewire_lobes.data.mini_corpus.text import sentence_clauses
from rewire_lobes.data.mini_corpus.voices import sample_voices

LIBRISPEECH_SPLITS = {  # split: (speakers, utterances per speaker)
    "train-clean-100": (24, 9),
    "dev-clean": (6, 5),
    "test-clean": (6, 5),
}
LIBRISPEECH_SECONDS = (2.0, 8.0)


def write_librispeech(ctx):
    """Writes the three LibriSpeech splits; returns ``(counts, manifest items)``."""
    rng = ctx.rng("librispeech")
    folder = ctx.staging["LibriSpeech"]
    speakers = {split: ctx.count(n, 2) for split, (n, _) in LIBRISPEECH_SPLITS.items()}
    total = sum(speakers.values())
    speaker_ids = rng.choice(np.arange(19, 9000), total, replace=False).tolist()
    chapter_ids = rng.choice(np.arange(1000, 300000), 2 * total, replace=False).tolist()
    voices = sample_voices(rng, total)

    jobs, speaker_lines = [], []
    for split, (_, per_speaker) in LIBRISPEECH_SPLITS.items():
        for _ in range(speakers[split]):
            speaker, voice = speaker_ids.pop(0), voices.pop(0)
            speaker_lines.append(
                f"{speaker:<5}| {voice.sex} | {split:<16} | espeak-ng {voice.describe()}"
            )
            chapters = [chapter_ids.pop(0) for _ in range(2 if rng.random() < 0.3 else 1)]
            for index in range(per_speaker):
                chapter = chapters[index % len(chapters)]
                utt = f"{speaker}-{chapter}-{index // len(chapters):04d}"
                target_words = rng.uniform(2.6, 6.5) * voice.speed / 60
                take = Take(
                    phrases=(),
                    voice=voice,
                    seed=random_seed(rng),
                    snr_db=float(rng.uniform(20, 40)),
                    noise=random_noise_color(rng),
                    gap=(0.1, 0.7),
                    min_seconds=LIBRISPEECH_SECONDS[0],
                )
                clauses = sentence_clauses(rng, int(target_words))
                path = folder / split / str(speaker) / str(chapter) / f"{utt}.flac"
                jobs.append((utt, split, speaker, chapter, take, clauses, path))

    def render(job):
        utt, split, speaker, chapter, take, clauses, path = job
        for keep in range(len(clauses), 0, -1):  # drop trailing clauses until it fits 8 s
            take = dataclasses.replace(
                take, phrases=tuple(" ".join(words) for words in clauses[:keep])
            )
            recording = record(take, ctx.tools)
            if recording.duration <= LIBRISPEECH_SECONDS[1] or keep == 1:
                break
        save_audio(path, recording.wav, recording.sample_rate)
        words = " ".join(" ".join(c) for c in clauses[:keep]).upper()
        item = {"id": utt, "split": split, "speaker": speaker, "chapter": chapter, "words": words}
        item["path"] = f"LibriSpeech/{path.relative_to(folder).as_posix()}"
        return {**item, **describe_take(recording, take)}

    items = ctx.map(render, jobs)
    chapters = {}
    for item in items:
        chapters.setdefault((item["split"], item["speaker"], item["chapter"]), []).append(item)
    for (split, speaker, chapter), utts in chapters.items():
        write_lines(
            folder / split / str(speaker) / str(chapter) / f"{speaker}-{chapter}.trans.txt",
            [f"{u['id']} {u['words']}" for u in sorted(utts, key=lambda u: u["id"])],
        )
    write_lines(
        folder / "SPEAKERS.TXT",
        [
            "; Synthetic speakers of the embedded mini corpus (rewire_lobes.data.mini_corpus)",
            ";ID  |SEX| SUBSET           | VOICE",
        ]
        + speaker_lines,
    )
    counts = {split: sum(1 for i in items if i["split"] == split) for split in LIBRISPEECH_SPLITS}
    counts.update({f"{split}_speakers": n for split, n in speakers.items()})
    return counts, items

