"""Numbers that cannot be wrong: run identity, provenance, profiles, user errors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ruamel.yaml

from rewire_lobes.errors import OptionError
from rewire_lobes.runs.cli import load_recipe_hparams, run_overrides
from rewire_lobes.runs.defaults import choose_profile, is_embedded_data
from rewire_lobes.runs.identity import RunFolderError
from rewire_lobes.runs.provenance import RECORD_FILE, read_provenance
from test_user_errors import assert_one_line_error  # noqa: I001 (a sibling test module)

REPO = Path(__file__).resolve().parent.parent
KS_YAML = str(REPO / "hparams" / "ks.yaml")


def overrides_of(yaml_file, **given):
    text = "".join(f"{key}: {value}\n" for key, value in given.items())
    return dict(ruamel.yaml.YAML().load(run_overrides(yaml_file, text)))


@pytest.fixture
def real_encoder(tiny_encoder, tmp_path):
    """An encoder outside assets/ (a user's checkpoint, as far as the profile rule knows)."""
    folder = tmp_path / "wav2vec2-user"
    shutil.copytree(tiny_encoder(), folder)
    return folder


def rewired(encoder, tmp_path, strategy="mixed", profile="paper", **record):
    folder = tmp_path / f"rewired-{strategy}-{profile}-{len(record)}"
    shutil.copytree(encoder, folder)
    (folder / RECORD_FILE).write_text(json.dumps(
        {"strategy": strategy, "profile": profile, "source": str(encoder), "updates": 5,
         **record}))
    return folder


# ---------------------------------------------------------------------- 1. run identity
def test_a_rerun_with_another_lr_is_refused_naming_it(real_encoder, tmp_path):
    common = ["--upstream_source", str(real_encoder), "--data_folder", str(tmp_path / "data"),
              "--output_folder", str(tmp_path / "run"), "--max_steps", "4"]
    hparams, *_ = load_recipe_hparams([KS_YAML, *common, "--lr", "0.001"])
    identity = json.loads((tmp_path / "run" / "run_identity.json").read_text())
    assert identity["lr"] == 0.001 and identity["run_profile"] == "paper"
    assert len(identity["encoder_fingerprint"]) == 64
    load_recipe_hparams([KS_YAML, *common, "--lr", "0.001"])  # the same run resumes
    with pytest.raises(RunFolderError, match=r"lr: 0\.001 -> 0\.5"):
        load_recipe_hparams([KS_YAML, *common, "--lr", "0.5"])
    with pytest.raises(RunFolderError, match="grad_accumulation_factor: 1 -> 2"):
        load_recipe_hparams([KS_YAML, *common, "--lr", "0.001",
                             "--grad_accumulation_factor", "2"])


def test_a_folder_without_an_identity_record_is_not_continued(tmp_path):
    from rewire_lobes.runs.identity import claim_run_folder

    old_run = tmp_path / "old"
    (old_run / "save" / "CKPT+1").mkdir(parents=True)  # a run made by older code
    (old_run / "save" / "CKPT+1" / "head.ckpt").write_bytes(b"weights")
    with pytest.raises(RunFolderError, match="no run_identity.json"):
        claim_run_folder(old_run, {"lr": 0.001})
    (tmp_path / "new" / "save").mkdir(parents=True)  # empty folders (the yaml makes save/)
    claim_run_folder(tmp_path / "new", {"lr": 0.001})
    assert json.loads((tmp_path / "new" / "run_identity.json").read_text()) == {"lr": 0.001}


# ---------------------------------------------------------------------- 2. provenance
def test_strategy_is_read_from_the_rewiring_record(real_encoder, tmp_path):
    data = str(tmp_path / "data")
    assert overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data)["strategy"] \
        == "baseline"
    mixed = rewired(real_encoder, tmp_path)
    assert overrides_of(KS_YAML, upstream_source=mixed, data_folder=data)["strategy"] == "mixed"
    assert overrides_of(KS_YAML, upstream_source=mixed, data_folder=data,
                        strategy="mixed")["strategy"] == "mixed"
    with pytest.raises(OptionError, match="contradicts .*rewiring.json.*'mixed'"):
        overrides_of(KS_YAML, upstream_source=mixed, data_folder=data, strategy="twin")
    with pytest.raises(OptionError, match="no rewiring.json"):
        overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data, strategy="mixed")
    record = read_provenance(mixed)
    assert record["strategy"] == "mixed" and len(record["record_sha256"]) == 64


# ---------------------------------------------------------------------- 3. profiles
def test_a_real_run_gets_the_papers_values_with_no_flag(real_encoder, tmp_path):
    data = str(tmp_path / "data")
    given = overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data)
    assert given["run_profile"] == "paper" and "lr" not in given  # the yaml's 1e-4
    assert given["max_steps"] == 20_000  # Table 3, KS at 1 %
    assert overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data,
                        fraction=0.05)["max_steps"] == 50_000
    assert overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data,
                        fraction=1.0)["max_steps"] == 200_000
    with pytest.raises(OptionError, match="no update budget .* pass --max_steps"):
        overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=data, fraction=0.3)
    yaml = ruamel.yaml.YAML().load(Path(KS_YAML).read_text())
    assert (yaml["lr"], yaml["batch_size"], yaml["eval_every_steps"]) == (1e-4, 32, 100)


def test_the_embedded_encoder_or_corpus_gets_the_embedded_profile(real_encoder, tmp_path):
    mini = str(REPO / "data" / "mini")  # an absolute path to the mini corpus counts too
    given = overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=mini)
    assert (given["run_profile"], given["max_steps"], given["lr"]) == ("embedded", 600, 0.001)
    assert overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=mini,
                        lr=0.5)["lr"] == 0.5  # the command line wins
    # Lineage, not the rewiring run's profile: a real encoder rewired on the mini corpus
    # stays a real encoder; one rewired from the embedded encoder is embedded.
    smoke = rewired(real_encoder, tmp_path, profile="embedded", embedded_encoder=False)
    assert choose_profile("auto", smoke, str(tmp_path))[0] == "paper"
    derived = rewired(real_encoder, tmp_path, embedded_encoder=True)
    assert choose_profile("auto", derived, str(tmp_path))[0] == "embedded"
    older = rewired(REPO / "assets" / "encoder", tmp_path)  # a record without the field
    assert choose_profile("auto", older, str(tmp_path))[0] == "embedded"
    assert choose_profile("auto", REPO / "assets" / "encoder", str(tmp_path))[0] == "embedded"
    forced = overrides_of(KS_YAML, upstream_source=real_encoder, data_folder=mini,
                          run_profile="paper")
    assert forced["max_steps"] == 20_000 and "lr" not in forced
    assert is_embedded_data("data/mini/speech_commands_v0.01")
    assert not is_embedded_data(tmp_path / "mini")


# ---------------------------------------------------------------------- 10. user errors
@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--fraction", "0"], "--fraction must be in (0, 1]"),
    (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
    (["--fraction", "abc"], "--fraction must be in (0, 1]"),
    (["--learning_rate", "0.1"], "--learning_rate is not an option"),
    (["--upstream_source", "facebook/wav2vec2-base"], "neither a local directory"),
    (["--data_folder", "/nonexistent/speech"], "speech_commands_v0.01"),
    (["--dev_metric", "f1"], "unknown metric 'f1'"),
    (["--max_steps", "0"], "max_steps (0)"),
    (["--keywords", "[yes, yes]"], "--keywords repeats ['yes']"),
])
def test_user_errors_are_one_line_messages(args, message, tiny_encoder, tmp_path):
    if "--upstream_source" not in args:
        args = ["--upstream_source", tiny_encoder(), *args]
    command = [sys.executable, "recipes/KS/train.py", "hparams/ks.yaml",
               "--output_root", str(tmp_path), *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert_one_line_error(done, message)


def test_a_value_given_to_a_speechbrain_flag_is_refused_not_joined_to_a_number(real_encoder,
                                                                                tmp_path):
    """``--max_steps 4 --compile True``: SpeechBrain's --compile takes no value, and its
    parser joins the stray word into max_steps ("4 True"), which used to fail much later
    as a comparison of an int with a str."""
    common = ["--upstream_source", str(real_encoder), "--data_folder", str(tmp_path / "data"),
              "--output_folder", str(tmp_path / "run")]
    with pytest.raises(OptionError, match="--compile is a flag and takes no value, got 'True'"):
        load_recipe_hparams([KS_YAML, *common, "--max_steps", "4", "--compile", "True"])
    with pytest.raises(OptionError, match="every value needs an --option before it"):
        load_recipe_hparams([KS_YAML, "True", *common])
    hparams, _, run_opts, _ = load_recipe_hparams(
        [KS_YAML, *common, "--max_steps", "4", "--compile", "--lr", "1e-3"])
    assert hparams["max_steps"] == 4 and hparams["lr"] == 0.001 and run_opts["compile"]
