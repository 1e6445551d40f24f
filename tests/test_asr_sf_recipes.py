"""SUPERB ASR and SF recipes end to end on the mini corpus and a tiny random encoder.

Each run is a subprocess, as a user starts it (recipes/ASR and recipes/rewire both hold
a module named ``librispeech_prepare``, which one process could not import twice). The budgets are tiny (tens of updates of a 32-unit
BLSTM), so the character and slot scores sit at their untrained values (WER 100 %, slot
F1 0); where a test compares two runs it also compares the trained head's weights, which
follow every dropout and SpecAugment draw and every feature value.

The frame cache and the manifests are shared by every run of this module (both are keyed
by their inputs), so each utterance is encoded once per mode.
"""

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.utils.checkpoints import (
    Checkpointer,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)

from recipe_runs import (
    assert_only_whole_checkpoints,
    assert_same_training,
    kill_during_second_checkpoint,
    printed,
    results_of,
    round_lines,
)
from test_user_errors import assert_one_line_error

from rewire_lobes.runs.checkpoints import CrashSafeCheckpointer
from rewire_lobes.runs.provenance import RECORD_FILE
from rewire_lobes.text.slots import spoken_words

REPO = Path(__file__).resolve().parents[1]
HEAD = ["--rnn_dim", "32", "--projector_dim", "32"]
ASR_BUDGET = ["--max_steps", "60", "--eval_every_steps", "20"]
SF_BUDGET = ["--max_steps", "30", "--eval_every_steps", "15"]
# Exclusion runs only need the training set: one update, one evaluation.
TINY_BUDGET = ["--max_steps", "1", "--eval_every_steps", "1"]
YAMLS = {"ASR": "asr.yaml", "SF": "sf.yaml"}
DATA = {"ASR": "LibriSpeech", "SF": "SNIPS"}


# ---------------------------------------------------------------------- running recipes
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Frame cache and manifest folders for every run of this module."""
    return tmp_path_factory.mktemp("shared")


def recipe_command(task, encoder, output_root, shared, *extra, data_folder=None):
    task_folder = Path(shared) / task
    return [
        sys.executable, f"recipes/{task}/train.py", f"hparams/{YAMLS[task]}",
        "--upstream_source", str(encoder), "--output_root", str(output_root),
        "--data_folder", str(data_folder or REPO / "data" / "mini" / DATA[task]),
        "--frame_cache_folder", str(task_folder / "frame_cache"),
        "--manifest_root", str(task_folder / "manifests"),
        "--noprogressbar", *HEAD, *map(str, extra),
    ]


def run(task, encoder, output_root, shared, *extra, data_folder=None, ok=True):
    command = recipe_command(task, encoder, output_root, shared, *extra,
                             data_folder=data_folder)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def run_folder(output_root, task):
    """The one run folder under ``output_root`` (it holds run_identity.json)."""
    (identity,) = Path(output_root).glob(f"{task}/*/*/*/run_identity.json")
    return identity.parent


def manifest(shared, task, split):
    (path,) = (Path(shared) / task / "manifests").glob(f"*/{split}.csv")
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def read_ark(path):
    """``{uttid: string}`` of an s3prl ark; every line is ``<uttid> <string>``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    entries = {}
    for line in lines:
        utt_id, space, text = line.partition(" ")
        assert utt_id and space == " ", (path, line)
        assert utt_id not in entries, (path, utt_id)
        entries[utt_id] = text
    return entries


def subset_ids(folder):
    """The ids of the run's training set (``train_subset.csv``)."""
    with open(Path(folder) / "train_subset.csv", newline="", encoding="utf-8") as fin:
        return [row["ID"] for row in csv.DictReader(fin)]


@pytest.fixture(scope="module")
def asr_run(tiny_encoder, mini_corpus, shared, tmp_path_factory):
    """The run folder of one uninterrupted ASR run (60 updates, dev every 20)."""
    root = tmp_path_factory.mktemp("asr")
    run("ASR", tiny_encoder(), root, shared, *ASR_BUDGET)
    return run_folder(root, "ASR")


@pytest.fixture(scope="module")
def sf_run(tiny_encoder, mini_corpus, shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    run("SF", tiny_encoder(), root, shared, *SF_BUDGET)
    return run_folder(root, "SF")


# ---------------------------------------------------------------------- 1. smoke runs
def check_common_results(results, task, metric, steps, every):
    assert results["task"] == task and results["metric"] == metric
    assert results["test"] == results["test_scores"][metric]
    assert results["dev_rescored_matches_best"] is True
    assert results["feature_mode"] == {"train": "cached", "dev": "cached", "test": "cached"}
    evaluations = list(range(every, steps + 1, every))
    assert results["steps"] == steps and [s for s, _ in results["dev_curve"]] == evaluations
    assert dict(results["dev_curve"])[results["best_step"]] == results["best_dev"]
    assert results["dev_scores"][metric] == results["dev_curve"]
    assert results["dev_scores_at_best"][metric] == results["best_dev"]
    assert results["train_items"] == results["train_drawn"] - results["train_excluded"]


def check_arks(folder, shared, task):
    """Four arks, one line per utterance of the split's manifest; returns them."""
    arks = {}
    for split in ("dev", "test"):
        ids = [row["ID"] for row in manifest(shared, task, split)]
        for kind in ("hyp", "ref"):
            entries = read_ark(folder / f"{split}-{kind}.ark")
            assert sorted(entries) == sorted(ids), (split, kind)
            arks[split, kind] = entries
    return arks


@pytest.mark.slow
def test_asr_smoke(asr_run, shared):
    folder = asr_run
    results = results_of(folder)
    check_common_results(results, "ASR", "wer", steps=60, every=20)
    assert {"wer", "cer"} <= set(results["test_scores"])
    assert all(results["test_scores"][name] >= 0.0 for name in ("wer", "cer"))
    assert [s for s, _ in results["dev_scores"]["cer"]] == [20, 40, 60]
    assert results["train_items"] == len(subset_ids(folder)) == results["train_drawn"]
    assert results["exclusions"] == {"rule": "auto", "excluded_source": None}

    arks = check_arks(folder, shared, "ASR")
    for split in ("dev", "test"):
        words = {row["ID"]: row["wrd"] for row in manifest(shared, "ASR", split)}
        assert arks[split, "ref"] == words  # the targets decode back to the transcripts
        # s3prl's sclite-style summary agrees with the score in results.json.
        summary = (folder / f"{split}-wer.txt").read_text().splitlines()[0].split()
        score = results["test_scores" if split == "test" else "dev_scores_at_best"]["wer"]
        assert summary[0] == "%WER" and float(summary[1]) == pytest.approx(score, abs=0.005)
    assert (folder / "dev_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def tagged_spans(text, slot_types):
    """``(words without tags, [slot types in order])`` of a tagged SF string; asserts that
    every ``B-x`` is closed by ``E-x`` before the next tag, x a known slot type."""
    words, spans, open_slot = [], [], None
    for token in text.split():
        if token[:2] in ("B-", "E-") and token[2:] in slot_types:
            if token.startswith("B-"):
                assert open_slot is None, text
                open_slot = token[2:]
                spans.append(open_slot)
            else:
                assert open_slot == token[2:], text
                open_slot = None
        else:
            words.append(token)
    assert open_slot is None, text
    return words, spans


def without_tags(text, slot_types):
    """``text`` less every tag as decoding writes it (``"B-x "``, ``" E-x"``); no SF
    character is a hyphen, so one left over is a malformed tag."""
    text += " "
    for slot in sorted(slot_types, key=len, reverse=True):  # "E-city" after "E-city_x"
        text = text.replace(f"B-{slot} ", " ").replace(f" E-{slot}", " ")
    return text


@pytest.mark.slow
def test_sf_smoke(sf_run, shared):
    folder = sf_run
    results = results_of(folder)
    check_common_results(results, "SF", "slot_type_f1", steps=30, every=15)
    scores = results["test_scores"]
    assert 0.0 <= scores["slot_type_f1"] <= 100.0 and scores["slot_value_cer"] >= 0.0
    assert results["exclusions"] == {"rule": "none"}

    slot_types = set(json.loads(next((shared / "SF" / "manifests").glob("*/labels.json"))
                                .read_text())["slot_types"])
    arks = check_arks(folder, shared, "SF")
    tagged = 0
    for split in ("dev", "test"):
        for row in manifest(shared, "SF", split):
            words, spans = tagged_spans(arks[split, "ref"][row["ID"]], slot_types)
            assert words == [spelling for _, spelling in spoken_words(row["wrd"].split())]
            assert set(spans) <= set(row["slots"].split()) - {"O"}
            tagged += bool(spans)
        for text in arks[split, "hyp"].values():  # a hypothesis may leave a span open
            assert "-" not in without_tags(text, slot_types), text
    assert tagged > 0


# ---------------------------------------------------------------------- 2. resume
@pytest.mark.slow
@pytest.mark.parametrize("task, finished_run, budget", [("ASR", "asr_run", ASR_BUDGET),
                                                        ("SF", "sf_run", SF_BUDGET)])
def test_rerun_resumes_the_finished_run(task, finished_run, budget, request, tiny_encoder,
                                        shared):
    folder = request.getfixturevalue(finished_run)
    before = results_of(folder)
    rounds = round_lines(folder)
    arks = {name: (folder / name).read_text() for name in ("dev-hyp.ark", "test-hyp.ark")}
    done = run(task, tiny_encoder(), folder.parents[3], shared, *budget)
    assert f"resuming at update {before['steps']}" in printed(done)
    assert round_lines(folder) == rounds  # no training round was done again
    after = results_of(folder)
    for key in ("test_scores", "dev_curve", "best_step", "steps", "dev_rescored_matches_best"):
        assert after[key] == before[key], key
    assert {name: (folder / name).read_text() for name in arks} == arks


# ---------------------------------------------------------------------- 3. killed run
@register_checkpoint_hooks
class DiesWhileSaved:
    """A recoverable whose save stops half-way once ``dying`` is set (a killed process)."""

    def __init__(self):
        self.dying = False
        self.value = 0

    @mark_as_saver
    def _save(self, path):
        Path(path).write_text(str(self.value) if not self.dying else "")
        if self.dying:
            raise KeyboardInterrupt("killed while saving")

    @mark_as_loader
    def _load(self, path, end_of_epoch=True):
        self.value = int(Path(path).read_text())


def die_while_saving(checkpointer_class, folder):
    """Saves a checkpoint at step 1 and dies while saving step 2. Returns the recoverables
    and the steps of what a new checkpointer on ``folder`` takes for checkpoints."""
    layer, state = torch.nn.Linear(2, 2), DiesWhileSaved()
    checkpointer = checkpointer_class(folder, {"layer": layer, "state": state})
    state.value = 7
    checkpointer.save_checkpoint(meta={"step": 1})
    state.dying = True
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save_checkpoint(meta={"step": 2})
    assert len(list(Path(folder).glob("CKPT+*"))) == 2
    state.dying, state.value = False, 0
    listed = checkpointer_class(folder).list_checkpoints()
    return {"layer": layer, "state": state}, sorted(c.meta["step"] for c in listed)


def test_speechbrain_checkpointer_trusts_a_save_that_died(tmp_path):
    """Why CrashSafeCheckpointer exists (SpeechBrain 1.1.2 writes CKPT.yaml first)."""
    _, steps = die_while_saving(Checkpointer, tmp_path)
    assert steps == [1, 2]


def test_crash_safe_checkpointer_resumes_from_the_last_whole_save(tmp_path):
    recoverables, steps = die_while_saving(CrashSafeCheckpointer, tmp_path)
    assert steps == [1]
    CrashSafeCheckpointer(tmp_path, recoverables).recover_if_possible()
    assert recoverables["state"].value == 7


@pytest.mark.slow
def test_asr_killed_run_resumes_to_the_uninterrupted_result(asr_run, tiny_encoder, shared,
                                                            tmp_path):
    """Killed while saving its update-40 checkpoint, the run resumes from the last complete
    one (update 20, or 40 when the save got through) and ends as the uninterrupted run,
    to the bit: dropout and SpecAugment draw from the global generators, so this needs
    them restored from the checkpoint."""
    reference = asr_run
    root = tmp_path / "killed"
    command = recipe_command("ASR", tiny_encoder(), root, shared, *ASR_BUDGET)
    folder = root / reference.relative_to(reference.parents[3])
    status = kill_during_second_checkpoint(command, folder / "save", tmp_path / "killed.log")
    assert status == -signal.SIGKILL, "the run ended before it could be killed"
    assert_only_whole_checkpoints(folder, reference)
    assert not (folder / "results.json").exists()
    assert not list(folder.glob("*.ark"))

    done = run("ASR", tiny_encoder(), root, shared, *ASR_BUDGET)
    resumed = [step for step in (20, 40) if f"resuming at update {step}" in printed(done)]
    assert len(resumed) == 1, printed(done)[-3000:]
    expected, got = results_of(reference), results_of(folder)
    for key in ("dev_curve", "dev_scores", "best_step", "test_scores", "steps"):
        assert got[key] == expected[key], key
    # The training losses too; the killed run logged its round before saving it, and the
    # rerun did that round again: the same line twice.
    assert list(dict.fromkeys(round_lines(folder))) == round_lines(reference)
    assert_same_training(folder, reference)
    assert (folder / "test-hyp.ark").read_text() == (reference / "test-hyp.ark").read_text()


# ---------------------------------------------------------------------- 4. exclusions
def mini_train_ids():
    """The training utterance ids of the mini LibriSpeech, read from its transcripts."""
    split = REPO / "data" / "mini" / "LibriSpeech" / "train-clean-100"
    return sorted(line.split(" ", 1)[0] for path in split.glob("*/*/*.trans.txt")
                  for line in path.read_text().splitlines() if line.strip())


def mini_dev_id():
    split = REPO / "data" / "mini" / "LibriSpeech" / "dev-clean"
    return next(split.glob("*/*/*.trans.txt")).read_text().split(" ", 1)[0]


@pytest.fixture(scope="module")
def rewired_encoder(tiny_encoder, mini_corpus, tmp_path_factory):
    """``(encoder dir, listed train ids, subset file)``: a copy of the tiny encoder with a
    rewiring record as recipes/rewire/train.py writes it; the subset also lists a dev id,
    which no training draw holds."""
    folder = tmp_path_factory.mktemp("rewired") / "wav2vec2-rewired"
    shutil.copytree(tiny_encoder(), folder)
    listed = mini_train_ids()[::40]
    subset = folder / "rewiring_subset.txt"
    subset.write_text("".join(f"{uid}\n" for uid in [*listed, mini_dev_id()]))
    (folder / RECORD_FILE).write_text(json.dumps({
        "method": "contrastive rewiring (Yang et al., 2022)", "strategy": "twin",
        "profile": "embedded", "source": tiny_encoder(), "updates": 3,
        "data": {"subset_file": subset.name,
                 "subset_sha256": hashlib.sha256(subset.read_bytes()).hexdigest(),
                 "subset_utterances": len(listed) + 1},
    }))
    return folder, listed, subset


def check_exclusion(root, excluded):
    """The run at fraction 1.0 drew every training utterance and left out ``excluded``."""
    folder = run_folder(root, "ASR")
    results = results_of(folder)
    everything = mini_train_ids()
    assert results["train_drawn"] == len(everything)
    assert results["train_excluded"] == len(excluded)
    assert results["train_items"] == len(everything) - len(excluded)
    assert sorted(subset_ids(folder)) == sorted(set(everything) - set(excluded))
    return results


@pytest.mark.slow
def test_asr_leaves_out_the_rewiring_subset(rewired_encoder, shared, tmp_path):
    encoder, listed, subset = rewired_encoder
    run("ASR", encoder, tmp_path, shared, "--fraction", "1.0", *TINY_BUDGET)
    results = check_exclusion(tmp_path, listed)
    assert results["strategy"] == "twin"
    assert results["exclusions"]["rule"] == "auto"
    assert results["exclusions"]["excluded_source"] == str(subset.resolve())
    assert results["exclusions"]["excluded_utterances"] == len(listed) + 1


@pytest.mark.slow
def test_asr_refuses_a_changed_rewiring_subset(rewired_encoder, shared, tmp_path):
    encoder, _, subset = rewired_encoder
    changed = tmp_path / encoder.name
    shutil.copytree(encoder, changed)
    with open(changed / subset.name, "a") as fout:
        fout.write("19-198-0000\n")
    done = run("ASR", changed, tmp_path / "out", shared, "--fraction", "1.0", *TINY_BUDGET,
               ok=False)
    assert_one_line_error(done, f"{changed / subset.name}: sha256")
    assert not list((tmp_path / "out").glob("ASR/*/*/*/save/CKPT+*"))


@pytest.mark.slow
def test_asr_exclude_utterances_file_and_none(rewired_encoder, tiny_encoder, shared,
                                              tmp_path):
    encoder, listed, subset = rewired_encoder
    # The baseline given the rewired encoder's subset trains on the same utterances.
    run("ASR", tiny_encoder(), tmp_path / "file", shared, "--fraction", "1.0",
        "--exclude_utterances", subset, *TINY_BUDGET)
    results = check_exclusion(tmp_path / "file", listed)
    assert results["strategy"] == "baseline"
    assert results["exclusions"]["rule"] == "file"
    assert results["exclusions"]["listed"] == len(listed) + 1
    # none: the rewired encoder's record is not read for exclusions.
    run("ASR", encoder, tmp_path / "none", shared, "--fraction", "1.0",
        "--exclude_utterances", "none", *TINY_BUDGET)
    results = check_exclusion(tmp_path / "none", [])
    assert results["exclusions"] == {"rule": "none"}


# ---------------------------------------------------------------------- 5. cache or not
@pytest.mark.slow
def test_asr_on_the_fly_trains_as_the_cached_run(asr_run, tiny_encoder, shared, tmp_path):
    """The tiny encoder's padding is exact (``SSLUpstream(exact_padding=True)``, so
    ``padding_invariant``): a frame is the same encoded alone for the cache or in a padded
    batch of 16, to float rounding; the same batches then train the same head."""
    reference = asr_run
    run("ASR", tiny_encoder(), tmp_path, shared, *ASR_BUDGET, "--cache_features", "False")
    folder = run_folder(tmp_path, "ASR")
    results, expected = results_of(folder), results_of(reference)
    assert results["feature_mode"] == {"train": "on_the_fly", "dev": "on_the_fly",
                                       "test": "on_the_fly"}
    assert [s for s, _ in results["dev_curve"]] == [s for s, _ in expected["dev_curve"]]
    for (_, value), (_, cached) in zip(results["dev_curve"], expected["dev_curve"]):
        assert value == pytest.approx(cached, abs=1e-3)
    assert results["test"] == pytest.approx(expected["test"], abs=1e-3)
    assert_same_training(folder, reference, atol=1e-3)


# ---------------------------------------------------------------------- 6. bad transcript
LIBRI_SPEAKERS = {"train-clean-100": "19", "dev-clean": "84", "test-clean": "61"}


def write_librispeech(root, bad_split, bad_text):
    """Two utterances per split in the LibriSpeech layout; ``bad_split``'s second one is
    transcribed ``bad_text``. Returns that utterance's id."""
    rng = np.random.default_rng(0)
    for split, speaker in LIBRI_SPEAKERS.items():
        chapter = Path(root) / split / speaker / "198"
        chapter.mkdir(parents=True)
        lines = []
        for n, text in enumerate(["HELLO WORLD", bad_text if split == bad_split else "GOOD"]):
            utt = f"{speaker}-198-{n:04d}"
            soundfile.write(chapter / f"{utt}.flac", 0.1 * rng.standard_normal(8000), 16000)
            lines.append(f"{utt} {text}")
        (chapter / f"{speaker}-198.trans.txt").write_text("\n".join(lines) + "\n",
                                                          encoding="utf-8")
    return f"{LIBRI_SPEAKERS[bad_split]}-198-0001"


@pytest.mark.slow
@pytest.mark.parametrize("bad_split, bad_text", [("dev-clean", "CAFÉ NOIR"),
                                                 ("train-clean-100", "ROOM 101")])
def test_asr_out_of_vocabulary_transcript_stops_before_training(bad_split, bad_text,
                                                                tiny_encoder, shared,
                                                                tmp_path):
    data = tmp_path / "LibriSpeech"
    bad_id = write_librispeech(data, bad_split, bad_text)
    done = run("ASR", tiny_encoder(), tmp_path / "out", shared, "--fraction", "1.0",
               "--batch_size", "2", *ASR_BUDGET, data_folder=data, ok=False)
    assert_one_line_error(done, f"utterance {bad_id}: characters")
    assert not list((tmp_path / "out").glob("ASR/*/*/*/save/CKPT+*"))
    assert "Going into epoch" not in printed(done)
