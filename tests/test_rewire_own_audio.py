"""Rewiring on the user's own audio: any folder layout, transcripts from a file or an ASR
pass, nothing dropped without a count, and clear errors.

Real speech: the LJ Speech sample of ``../shared/data`` (22.05 kHz, no corpus layout),
copied (a few files) into a nested folder beside an unreadable and an all-silent file.
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_asr_transcripts import save_tiny_ctc
from test_rewire_recipe import REPO, needs_festival, run_recipe
from test_user_errors import assert_one_line_error

from rewire_lobes.data.audio import load_audio
from rewire_lobes.rewiring.neutral import neutral_path, tts_text

LJSPEECH = REPO.parent / "shared" / "data" / "ljspeech_sample"
needs_ljspeech = pytest.mark.skipif(not LJSPEECH.is_dir(), reason="../shared/data is absent")
CLIPS = ["LJ001-0002", "LJ001-0003", "LJ001-0005", "LJ001-0006", "LJ001-0007", "LJ001-0008"]
BUDGET = ["--max_steps", "2"]  # run_recipe passes --batch_size 2


@pytest.fixture(scope="module")
def own_audio(tmp_path_factory):
    """A nested folder: six LJ Speech clips (two as FLAC), a broken and a silent file."""
    root = tmp_path_factory.mktemp("own") / "my audio"
    for index, clip in enumerate(CLIPS):
        folder = root / ("day1" if index < 3 else "day2/evening")
        folder.mkdir(parents=True, exist_ok=True)
        source = LJSPEECH / "wavs" / f"{clip}.wav"
        if index % 3 == 2:
            data, rate = soundfile.read(source)
            soundfile.write(folder / f"{clip}.flac", data, rate)
        else:
            shutil.copy(source, folder / f"{clip}.wav")
    (root / "day1" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    soundfile.write(root / "day2" / "silent.wav", np.zeros(16000), 16000)
    (root / "notes.txt").write_text("not audio\n")
    return root


def ljspeech_transcripts(path):
    """LJ Speech's own metadata.csv rows for the clips (``id|raw|normalised``)."""
    rows = [line for line in (LJSPEECH / "metadata.csv").read_text(encoding="utf-8").splitlines()
            if line.split("|")[0] in CLIPS]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {row.split("|")[0]: row.split("|")[-1] for row in rows}


def run_folder(output_root, strategy):
    (identity,) = Path(output_root).glob(f"rewire/*/{strategy}/seed_*/run_identity.json")
    return identity.parent


def manifest_texts(folder):
    with open(folder / "train.csv", newline="", encoding="utf-8") as handle:
        return {row["ID"]: row["wrd"] for row in csv.DictReader(handle)}


def check_nothing_silently_dropped(folder, kept):
    """Every file of the folder was trained on or is counted and named as skipped."""
    record = json.loads((folder / "upstream" / "rewiring.json").read_text())
    report = record["data"]["audio_folder_report"]
    assert report == json.loads((folder / "audio_folder_report.json").read_text())
    skipped = json.dumps(report)
    assert "broken.wav" in skipped and "silent.wav" in skipped
    subset = (folder / "upstream" / "rewiring_subset.txt").read_text().split()
    assert sorted(subset) == sorted(kept) and record["data"]["utterances"] == len(kept)
    return record


@pytest.mark.slow
@needs_ljspeech
def test_twin_rewires_a_folder_of_real_speech_in_no_corpus_layout(own_audio, tmp_path,
                                                                  tiny_encoder):
    audio = tmp_path / "my audio"  # a copy: this test adds a file to it
    shutil.copytree(own_audio, audio)
    command = ["twin.yaml", "--audio_folder", audio, "--upstream_source",
               tiny_encoder(feat_extract_norm="layer"), "--output_root", tmp_path, *BUDGET]
    done = run_recipe(*command)
    assert done.returncode == 0, done.output[-3000:]
    folder = run_folder(tmp_path, "twin")
    assert folder.name.startswith("seed_1986_my_audio-")  # never a LibriSpeech run's folder
    ids = [f"day1/{CLIPS[0]}", f"day1/{CLIPS[1]}", f"day1/{CLIPS[2]}",
           f"day2/evening/{CLIPS[3]}", f"day2/evening/{CLIPS[4]}", f"day2/evening/{CLIPS[5]}"]
    record = check_nothing_silently_dropped(folder, ids)
    assert record["data"]["corpus"] == "audio_folder" and record["data"]["transcripts"] is None
    assert record["updates"] == 2 and record["strategy"] == "twin"
    # 22.05 kHz clips counted at 16 kHz: durations follow the resampled audio.
    with open(folder / "train.csv", newline="", encoding="utf-8") as handle:
        row = next(r for r in csv.DictReader(handle) if r["ID"] == ids[0])
    assert float(row["duration"]) == pytest.approx(len(load_audio(row["wav"])) / 16000, abs=1e-3)

    # Other files in the folder: another run, refused rather than resumed on other data.
    shutil.copy(audio / "day1" / f"{CLIPS[0]}.wav", audio / "day1" / "new.wav")
    changed = run_recipe(*command)
    assert changed.returncode == 2 and "holds a run with other settings" in changed.output
    assert "audio_files:" in changed.output


@pytest.mark.slow
@needs_ljspeech
@needs_festival
def test_mixed_reads_a_transcript_file_and_synthesises_its_text(own_audio, tmp_path,
                                                                tiny_encoder):
    texts = ljspeech_transcripts(tmp_path / "metadata.csv")
    done = run_recipe("mixed.yaml", "--audio_folder", own_audio, "--transcripts",
                      tmp_path / "metadata.csv", "--upstream_source",
                      tiny_encoder(feat_extract_norm="layer"), "--output_root", tmp_path,
                      "--neutral_folder", tmp_path / "neutral", *BUDGET)
    assert done.returncode == 0, done.output[-3000:]
    folder = run_folder(tmp_path, "mixed")
    record = check_nothing_silently_dropped(folder, list(manifest_texts(folder)))
    source = record["data"]["transcripts"]
    assert source["source"] == "file" and len(source["sha256"]) == 64
    assert len(manifest_texts(folder)) == len(CLIPS)
    for uid, text in manifest_texts(folder).items():
        assert text == texts[Path(uid).name]
        assert neutral_path(tmp_path / "neutral", tts_text(text)).is_file()


@pytest.mark.slow
@needs_ljspeech
@needs_festival
def test_without_transcripts_the_asr_text_is_what_the_tts_reads(own_audio, tmp_path,
                                                                tiny_encoder):
    from rewire_lobes.rewiring.asr_transcripts import load_transcriber

    model = save_tiny_ctc(tmp_path / "ctc")
    done = run_recipe("neutral.yaml", "--audio_folder", own_audio, "--asr_source", model,
                      "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
                      "--output_root", tmp_path, "--neutral_folder", tmp_path / "neutral",
                      "--max_failed_fraction", "0.5", *BUDGET)
    assert done.returncode == 0, done.output[-3000:]
    folder = run_folder(tmp_path, "neutral")
    texts = manifest_texts(folder)
    record = check_nothing_silently_dropped(folder, list(texts))
    assert record["data"]["transcripts"]["source"] == "asr"
    transcriber = load_transcriber(str(model))
    assert record["data"]["transcripts"]["model"] == transcriber.identity
    assert record["data"]["audio_folder_report"]["transcripts"] == record["data"]["transcripts"]
    with open(folder / "train.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    heard = transcriber.transcribe([load_audio(row["wav"]) for row in rows])
    assert [row["wrd"] for row in rows] == heard and all(heard)
    for text in heard:
        assert neutral_path(tmp_path / "neutral", tts_text(text)).is_file()
    assert list((tmp_path / "neutral" / "transcripts").glob("*.json")), "the ASR cache"


def test_bad_folders_and_missing_transcripts_get_one_line_errors(tmp_path, tiny_encoder):
    encoder = ["--upstream_source", tiny_encoder(feat_extract_norm="layer"),
               "--output_root", tmp_path]

    def run(yaml, *args):
        return subprocess.run([sys.executable, "recipes/rewire/train.py", f"hparams/{yaml}",
                               *map(str, args), *encoder], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    assert_one_line_error(run("twin.yaml", "--audio_folder", tmp_path / "nowhere"),
                          "--audio_folder")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no audio here")
    assert_one_line_error(run("twin.yaml", "--audio_folder", empty), str(empty))
    silent = tmp_path / "silent"
    silent.mkdir()
    soundfile.write(silent / "quiet.wav", np.zeros(8000), 16000)
    assert_one_line_error(run("twin.yaml", "--audio_folder", silent), "silent")
    noise = tmp_path / "noise"
    noise.mkdir()
    soundfile.write(noise / "hiss.wav", np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    assert_one_line_error(run("mixed.yaml", "--audio_folder", noise), "--transcripts FILE")
    assert_one_line_error(run("twin.yaml", "--audio_folder", noise, "--data_folder",
                              tmp_path), "exclude each other")
    assert_one_line_error(run("mixed.yaml", "--transcripts", tmp_path / "t.csv"),
                          "--transcripts and --asr_source are for --audio_folder")
