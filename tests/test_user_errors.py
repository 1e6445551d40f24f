"""A user's mistake ends a recipe with one ``error:`` line and status 2, not a traceback.

Each case runs the rewiring recipe in a subprocess (as a user would) on a tiny encoder
and a small LibriSpeech-layout folder; ``rewire_lobes.runs.cli.user_errors`` prints the
:class:`rewire_lobes.errors.UserError`'s message. In-process checks cover the classes of
errors whose recipe runs take longer to reach.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_rewire_recipe import make_librispeech, prepare

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "rewire" / "train.py"


def rewire(*args, yaml="twin.yaml", path="/usr/bin:/bin"):
    command = [sys.executable, str(RECIPE), str(REPO / "hparams" / yaml),
               "--noprogressbar", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": path, "OMP_NUM_THREADS": "1"})


def assert_one_line_error(done, message):
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("data") / "LibriSpeech")


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--grad_accumulation_factor", "2"], "--grad_accumulation_factor must be 1, got 2"),
    (["--batch_size", "0"], "--batch_size must be a positive whole number of pairs, got 0"),
    (["--batch_size", "64"], "cannot fill one batch of --batch_size 64"),
    (["--bucket_batches", "-1"], "--bucket_batches must be null, 0"),
    (["--pool_layers", "middle"], "--pool_layers must be all or last, got 'middle'"),
    (["--tts_backend", "say"], "--tts_backend must be one of festival, espeak, got 'say'"),
    (["--data_folder", "/nonexistent/LibriSpeech"], "no such LibriSpeech folder"),
])
def test_rewiring_user_errors_are_one_line_messages(args, message, tiny_encoder, librispeech,
                                                    tmp_path):
    if "--data_folder" not in args:
        args = ["--data_folder", librispeech, *args]
    done = rewire("--upstream_source", tiny_encoder(feat_extract_norm="layer"),
                  "--output_root", tmp_path, "--max_steps", 2, *args)
    assert_one_line_error(done, message)


@pytest.mark.slow
def test_a_missing_tts_program_is_a_one_line_message(tiny_encoder, librispeech, tmp_path):
    (tmp_path / "bin").mkdir()  # a PATH without festival
    done = rewire("--data_folder", librispeech, "--upstream_source",
                  tiny_encoder(feat_extract_norm="layer"), "--output_root", tmp_path,
                  "--max_steps", 2, yaml="neutral.yaml", path=str(tmp_path / "bin"))
    assert_one_line_error(done, "festival is not installed (sudo apt-get install festival")


@pytest.mark.slow
def test_a_smaller_max_steps_does_not_export_the_longer_run(tiny_encoder, librispeech, tmp_path):
    common = ["--data_folder", librispeech, "--upstream_source",
              tiny_encoder(feat_extract_norm="layer"), "--output_folder", tmp_path / "run",
              "--max_utterances", 8, "--batch_size", 2]
    first = rewire(*common, "--max_steps", 4)
    assert first.returncode == 0, first.stderr[-3000:]
    record_file = tmp_path / "run" / "upstream" / "rewiring.json"
    exported = record_file.read_bytes()
    assert json.loads(exported)["updates"] == 4

    shorter = rewire(*common, "--max_steps", 2)
    assert_one_line_error(shorter, "holds a run of 4 updates, more than --max_steps 2")
    assert "pass --max_steps 4 or more" in shorter.stderr
    assert record_file.read_bytes() == exported, "the export of the 4-update run is kept"


# ---------------------------------------------------------------------- in process
def test_option_and_data_errors_are_user_errors_of_the_old_base_class(tmp_path):
    import torch

    from rewire_lobes.errors import DataFolderError, OptionError, UserError
    from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
    from rewire_lobes.rewiring.contrastive import PairMaker, pool_utterances
    from rewire_lobes.rewiring.neutral import BackendUnavailable, resolve_voice

    with pytest.raises(OptionError, match="--strategy must be one of twin, neutral, mixed"):
        PairMaker("quad")
    with pytest.raises(OptionError, match="--pool_layers"):
        pool_utterances(torch.zeros(2, 1, 3, 4), torch.tensor([3]), "middle")
    for batch_size in (0, -1, 2.5, "4"):
        with pytest.raises(OptionError, match="--batch_size"):
            LengthBucketBatchSampler([1, 2, 3], batch_size)
    with pytest.raises(OptionError, match="--bucket_batches"):
        LengthBucketBatchSampler([1, 2, 3], 1, "many")
    with pytest.raises(OptionError, match="--tts_backend"):
        resolve_voice("say")
    assert issubclass(OptionError, ValueError)
    assert issubclass(BackendUnavailable, UserError) and issubclass(BackendUnavailable,
                                                                     RuntimeError)

    with pytest.raises(DataFolderError, match="no such LibriSpeech folder"):
        prepare.prepare_librispeech_rewire(tmp_path / "missing", tmp_path / "out")


def test_a_prepare_step_names_the_data_folder(tmp_path):
    import importlib.util

    from rewire_lobes.errors import DataFolderError, OptionError

    def load(name, path):
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    fluent = load("user_errors_fluent_prepare", "recipes/IC/fluent_commands_prepare.py")
    data = tmp_path / "fsc" / fluent.DATASET_FOLDER / "data"
    data.mkdir(parents=True)
    for name in fluent.SPLITS.values():
        (data / name).write_text(",path,speakerId,transcription,action,object\n")
    with pytest.raises(DataFolderError, match=r"train_data\.csv has no rows") as error:
        fluent.prepare_fluent_commands(tmp_path / "fsc", tmp_path / "m")
    assert isinstance(error.value, ValueError), "still the ValueError it was"
    (data / "train_data.csv").write_text(",path,speakerId,transcription,action,object\n"
                                         "0,wavs/a.wav,s,t,activate,music\n")
    with pytest.raises(DataFolderError, match=r"train_data\.csv: no column 'location'"):
        fluent.prepare_fluent_commands(tmp_path / "fsc", tmp_path / "m")

    speech_commands = load("user_errors_ks_prepare", "recipes/KS/speech_commands_prepare.py")
    (tmp_path / "ks" / speech_commands.TRAIN_FOLDER / "yes").mkdir(parents=True)
    (tmp_path / "ks" / speech_commands.TEST_FOLDER).mkdir()
    with pytest.raises(DataFolderError, match=r"ks: the train split .* is empty: --data_folder"):
        speech_commands.prepare_speech_commands(tmp_path / "ks", tmp_path / "k")

    audio = load("user_errors_audio_folder_prepare", "recipes/pretrain/audio_folder_prepare.py")
    with pytest.raises(DataFolderError, match="--audio_folder"):
        audio.prepare_audio_folder(tmp_path / "nothing", tmp_path / "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match="--valid_files 32"):
        audio.prepare_audio_folder(tmp_path / "empty", tmp_path / "p")
