"""The mini diarization set: two-speaker mixtures of the mini LibriSpeech, as Kaldi data dirs.

Laid out as SUPERB's Libri2Mix recipe leaves them (``wav.scp``, ``segments``,
``utt2spk``, ``spk2utt``, ``rttm``, ``reco2dur`` per split); ``wav.scp`` holds absolute
paths, which :func:`relocate_kaldi_paths` rewrites when the corpus is moved.
"""

import logging
from pathlib import Path

import numpy as np
import soundfile

from rewire_lobes.data.mini_corpus.context import random_seed
from rewire_lobes.data.mini_corpus.files import save_audio, write_lines
from rewire_lobes.data.mini_corpus.markers import read_marker
from rewire_lobes.data.mini_corpus.noise import add_noise, limit_peak, random_noise_color

logger = logging.getLogger(__name__)

DIARIZATION_SPLITS = {
    "train": ("train-clean-100", 32),
    "dev": ("dev-clean", 10),
    "test": ("test-clean", 10),
}


def write_diarization(ctx):
    """Two-speaker mixtures of the mini LibriSpeech utterances, as Libri2Mix is built."""
    rng = ctx.rng("diarization")
    folder = ctx.staging["diarization"]
    final = ctx.root / "diarization"
    libri = read_marker(ctx.root, "librispeech")["items"]

    jobs = []
    for split, (source_split, full) in DIARIZATION_SPLITS.items():
        pool = [item for item in libri if item["split"] == source_split]
        pairs = set()
        for _ in range(ctx.count(full, 2)):
            for _attempt in range(100):
                first, second = (pool[i] for i in rng.choice(len(pool), 2, replace=False))
                if (
                    first["speaker"] != second["speaker"]
                    and (first["id"], second["id"]) not in pairs
                ):
                    break
            pairs.add((first["id"], second["id"]))
            delay = float(rng.uniform(0.0, 0.6)) * first["duration"]
            jobs.append(
                {
                    "split": split,
                    "sources": (first, second),
                    "delays": (0.0, round(delay, 2)),
                    "gains_db": tuple(float(g) for g in rng.uniform(-2.5, 2.5, 2)),
                    "snr_db": float(rng.uniform(10, 20)),
                    "noise": random_noise_color(rng),
                    "seed": random_seed(rng),
                }
            )

    def mix(job):
        mixid = "_".join(source["id"] for source in job["sources"])
        tracks = []
        for source, delay, gain in zip(job["sources"], job["delays"], job["gains_db"]):
            wav, rate = soundfile.read(str(ctx.root / source["path"]), dtype="float32")
            tracks.append(
                np.concatenate(
                    [np.zeros(int(round(delay * rate)), np.float32), wav * 10 ** (gain / 20)]
                )
            )
        mixture = np.zeros(max(map(len, tracks)), dtype=np.float32)
        for track in tracks:
            mixture[: len(track)] += track
        mixture = add_noise(
            mixture, rate, job["snr_db"], job["noise"], np.random.default_rng(job["seed"])
        )
        save_audio(folder / "wav" / job["split"] / f"{mixid}.wav", limit_peak(mixture), rate)
        segments = [
            (source["speaker"], round(delay + start, 2), round(delay + end, 2))
            for source, delay in zip(job["sources"], job["delays"])
            for start, end in _merge_intervals(source["speech"], gap=0.4)
        ]
        return {
            "id": mixid,
            "split": job["split"],
            "duration": len(mixture) / rate,
            "segments": segments,
            "snr_db": round(job["snr_db"], 1),
            "delays": job["delays"],
        }

    items = ctx.map(mix, jobs)
    for split in DIARIZATION_SPLITS:
        _write_kaldi_dir(
            folder / split, final / "wav" / split, [i for i in items if i["split"] == split]
        )
    counts = {split: sum(1 for i in items if i["split"] == split) for split in DIARIZATION_SPLITS}
    return counts, items


def _merge_intervals(intervals, gap):
    """``intervals`` with pauses shorter than ``gap`` seconds bridged."""
    merged = []
    for start, end in intervals:
        if merged and start - merged[-1][1] < gap:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _seconds(value):
    """A time as Kaldi and RTTM files show it: ``0.42``, ``5.0``."""
    return repr(round(float(value), 2))


def _write_kaldi_dir(folder, wav_folder, mixtures):
    """wav.scp, segments, utt2spk, spk2utt, rttm and reco2dur, laid out as SUPERB's are."""
    wav_scp, segments, utt2spk, rttm, reco2dur, spk2utt = [], [], [], [], [], {}
    for mixture in mixtures:
        mixid = mixture["id"]
        wav_scp.append(f"{mixid} {wav_folder / f'{mixid}.wav'}")
        reco2dur.append(f"{mixid} {mixture['duration']:g}")
        for speaker, start, end in mixture["segments"]:
            segid = f"{mixid}_{round(start * 1000):06d}_{round(end * 1000):06d}"
            segments.append(f"{segid} {mixid} {_seconds(start)} {_seconds(end)}")
            utt2spk.append(f"{segid} {speaker}")
            rttm.append(
                "\t".join(
                    [
                        "SPEAKER",
                        mixid,
                        "1",
                        _seconds(start),
                        _seconds(end - start),
                        "<NA>",
                        "<NA>",
                        str(speaker),
                        "<NA>",
                    ]
                )
            )
            spk2utt.setdefault(str(speaker), []).append(mixid)
    write_lines(folder / "wav.scp", wav_scp)
    write_lines(folder / "segments", segments)
    write_lines(folder / "utt2spk", utt2spk)
    write_lines(folder / "spk2utt", [f"{spk} {' '.join(ids)}" for spk, ids in spk2utt.items()])
    write_lines(folder / "rttm", rttm)
    write_lines(folder / "reco2dur", reco2dur)


def relocate_kaldi_paths(root):
    """Points ``diarization/*/wav.scp`` at this root's wav files if the folder was moved.

    wav.scp holds absolute paths, as the real files do; when they do not point into
    ``root/diarization/wav`` (the folder was moved or copied), they are rewritten, atomically.
    A correct wav.scp is left untouched.

    Returns
    -------
    list of Path
        The wav.scp files rewritten.
    """
    rewritten = []
    for split in DIARIZATION_SPLITS:
        scp = Path(root) / "diarization" / split / "wav.scp"
        if not scp.exists():
            continue
        wav_folder = Path(root) / "diarization" / "wav" / split
        lines = scp.read_text(encoding="utf-8").splitlines()
        fixed = [
            f"{mixid} {wav_folder / f'{mixid}.wav'}"
            for mixid in (line.split(" ", 1)[0] for line in lines)
        ]
        if fixed != lines:
            write_lines(scp, fixed)
            rewritten.append(scp)
    if rewritten:
        logger.info("Rewrote %d wav.scp file(s) for the new location %s", len(rewritten), root)
    return rewritten

