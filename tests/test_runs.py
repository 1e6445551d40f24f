"""Run identity: the embedded-default fallback and the encoder-named run folders."""

import shutil
from pathlib import Path

import ruamel.yaml

import rewire_lobes.embedded
import rewire_lobes.upstream.encoder
from rewire_lobes.runs import defaults
from rewire_lobes.runs.cli import encoder_fingerprint, encoder_id, run_overrides

YAML = """
seed: 1
upstream_source: assets/encoder
output_root: results
encoder_id: !PLACEHOLDER
output_folder: !ref <output_root>/<encoder_id>
"""


def overrides_dict(text):
    return dict(ruamel.yaml.YAML().load(text))


def test_existing_encoder_is_used_as_an_absolute_path(tiny_encoder, tmp_path):
    assert defaults.resolve_upstream_source(tiny_encoder(), tmp_path) == \
        str(Path(tiny_encoder()).resolve())
    # a hub id or a wrong path is left for SSLUpstream to judge
    assert defaults.resolve_upstream_source("facebook/wav2vec2-base", tmp_path) == \
        "facebook/wav2vec2-base"


def test_missing_embedded_encoder_falls_back_once(tmp_path, monkeypatch, caplog, tiny_encoder):
    monkeypatch.setattr(rewire_lobes.embedded, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    made = []

    def fake_save(directory, size="tiny", **kwargs):
        made.append(size)
        shutil.copytree(tiny_encoder(), directory)

    monkeypatch.setattr(rewire_lobes.upstream.encoder, "save_random_encoder", fake_save)
    first = defaults.resolve_upstream_source("assets/encoder", tmp_path / "out")
    again = defaults.resolve_upstream_source("assets/encoder", tmp_path / "out")
    assert first == again == str((tmp_path / "out" / defaults.FALLBACK_NAME).resolve())
    assert made == ["small"]
    assert "RANDOMLY INITIALISED" in caplog.text


def test_fingerprint_follows_the_weights(tiny_encoder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder(), copy)
    assert encoder_fingerprint(copy) == encoder_fingerprint(tiny_encoder())
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert encoder_fingerprint(copy) != encoder_fingerprint(tiny_encoder())
    assert encoder_id(copy).startswith("copy-")


def test_run_overrides_name_the_encoder(tiny_encoder, tmp_path):
    hparams = tmp_path / "task.yaml"
    hparams.write_text(YAML)
    given = overrides_dict(run_overrides(str(hparams), f"upstream_source: {tiny_encoder()}\nseed: 3\n"))
    assert given["seed"] == 3
    assert given["upstream_source"] == str(Path(tiny_encoder()).resolve())
    assert given["encoder_id"] == encoder_id(given["upstream_source"])
    # a user's own encoder_id wins
    mine = overrides_dict(run_overrides(
        str(hparams), f"upstream_source: {tiny_encoder()}\nencoder_id: mine\n"))
    assert mine["encoder_id"] == "mine"


def test_optimizer_step_limit_from_the_command_line_is_a_number():
    import pytest

    from rewire_lobes.errors import OptionError
    from rewire_lobes.runs.cli import parse_arguments

    _, run_opts, overrides = parse_arguments(
        ["hparams/ks.yaml", "--optimizer_step_limit", "7", "--seed", "3"]
    )
    assert run_opts["optimizer_step_limit"] == 7 and overrides == "seed: 3"
    _, run_opts, _ = parse_arguments(["hparams/ks.yaml"])
    assert run_opts["optimizer_step_limit"] is None
    with pytest.raises(OptionError, match="optimizer_step_limit.*'seven'"):
        parse_arguments(["hparams/ks.yaml", "--optimizer_step_limit", "seven"])
