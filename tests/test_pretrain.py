"""The pre-training recipe and the encoder it shipped (recipes/pretrain, assets/encoder)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "assets" / "encoder"
sys.path.insert(0, str(REPO / "recipes" / "pretrain"))
sys.path.insert(0, str(REPO / "utils"))


def speechlike(rng, seconds, sample_rate=16000):
    """Voiced 'syllables' (harmonic stacks with gliding pitch and formant-like peaks)
    between noise bursts: enough structure for the masked contrastive task to learn."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    wav = np.zeros(n)
    pos = 0
    while pos < n:
        end = min(n, pos + int(rng.uniform(0.08, 0.25) * sample_rate))
        tt = t[pos:end] - t[pos]
        if rng.random() < 0.7:
            f0, glide = rng.uniform(90, 250), rng.uniform(-0.5, 0.5)
            phase = 2 * np.pi * np.cumsum(f0 * (1 + glide * tt / max(tt[-1], 1e-3))) / sample_rate
            formants = rng.uniform([300, 900, 2000], [900, 2200, 3200])
            seg = sum(
                np.sin(k * phase) / k * sum(np.exp(-(((k * f0 - f) / 150) ** 2)) for f in formants)
                for k in range(1, 30)
            )
        else:
            seg = rng.normal(0, 0.3, len(tt))
        wav[pos:end] += seg * np.hanning(len(tt))
        pos = end
    return (0.3 * wav / np.abs(wav).max()).astype(np.float32)


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    """Four 1.5 s clips in nested folders, one of them flac, one excluded by a list."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    for index, name in enumerate(["a/clip0.wav", "a/b/clip1.flac", "clip2.wav", "clip3.WAV"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, speechlike(rng, 1.5), 16000)
    soundfile.write(root / "too_short.wav", speechlike(rng, 0.2), 16000)
    soundfile.write(root / "held_out.wav", speechlike(rng, 1.5), 16000)
    (root / "held_out_list.txt").write_text("held_out.wav\n")
    (root / "notes.txt").write_text("not audio\n")
    return root


def test_prepare_finds_audio_recursively_and_excludes_held_out(audio_folder, tmp_path):
    from audio_folder_prepare import prepare_audio_folder

    prepare_audio_folder(audio_folder, tmp_path, exclude_lists=["held_out_list.txt"],
                         valid_files=1, min_seconds=0.5)
    with open(tmp_path / "train.csv", encoding="utf-8") as f:
        train = list(csv.DictReader(f))
    with open(tmp_path / "valid.csv", encoding="utf-8") as f:
        valid = list(csv.DictReader(f))
    names = sorted(Path(row["wav"]).name for row in train + valid)
    assert names == ["clip0.wav", "clip1.flac", "clip2.wav", "clip3.WAV"]
    assert len(valid) == 1 and float(train[0]["duration"]) == pytest.approx(1.5)


def test_gumbel_schedule_is_scaled_to_the_run():
    from rewire_lobes.upstream.pretrain import gumbel_decay_for_run, gumbel_temperature

    decay = gumbel_decay_for_run(100, 2.0, 0.5, anneal_fraction=0.7)
    assert gumbel_temperature(0, 2.0, 0.5, decay) == 2.0
    assert gumbel_temperature(70, 2.0, 0.5, decay) == pytest.approx(0.5, rel=1e-6)
    assert gumbel_temperature(100, 2.0, 0.5, decay) == 0.5


def test_feature_grad_mult_scales_only_the_cnn_gradient():
    from rewire_lobes.upstream.pretrain import build_pretraining_model, scale_feature_encoder_gradients

    torch.manual_seed(0)
    model = build_pretraining_model("tiny", num_negatives=5).eval()
    wav = torch.randn(1, 8000)
    direction = torch.randn(1, 24, 32)  # a generic objective (a plain sum is ~0 after layer norm)
    grads = []
    for scale in (1.0, 0.1):
        hook = scale_feature_encoder_gradients(model, scale)
        model.zero_grad()
        (model.wav2vec2(wav).last_hidden_state * direction).sum().backward()
        grads.append(model.wav2vec2.feature_extractor.conv_layers[0].conv.weight.grad.clone())
        if hook is not None:
            hook.remove()
    assert grads[0].abs().max() > 1e-4
    assert (grads[1] - 0.1 * grads[0]).abs().max() < 1e-4 * grads[0].abs().max(), (grads[1] - 0.1 * grads[0]).abs().max()


def pretrain_command(audio_folder, output, *options):
    return [
        sys.executable, str(REPO / "recipes/pretrain/train.py"), str(REPO / "hparams/pretrain.yaml"),
        "--audio_folder", str(audio_folder), "--output_folder", str(output),
        "--encoder_size", "tiny", "--noprogressbar", *options,
    ]


def run_and_read_losses(command, key="loss"):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = Path(command[command.index("--output_folder") + 1])
    with open(output / "loss_history.csv", encoding="utf-8") as f:
        return [float(row[key]) for row in csv.DictReader(f)]


@pytest.mark.slow
def test_recipe_loss_goes_down_resumes_and_exports(audio_folder, tmp_path):
    """30 updates of a tiny encoder on 4 clips; then the same command resumes (no-op)."""
    output = tmp_path / "run"
    command = pretrain_command(
        audio_folder, output, "--exclude_lists", "[held_out_list.txt]",
        "--number_of_steps", "30", "--lr", "0.005", "--num_negatives", "10",
        "--crop_seconds", "1.5", "--valid_files", "0", "--ckpt_interval_steps", "10",
    )
    losses = run_and_read_losses(command)
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert (output / "loss_curve.png").stat().st_size > 0
    summary = json.loads((output / "pretraining_summary.json").read_text())
    assert summary["updates"] == 30

    from rewire_lobes.upstream.encoder import SSLUpstream

    upstream = SSLUpstream(str(output / "encoder"))
    hidden, frame_lens = upstream(torch.randn(2, 16000))
    assert hidden.shape[:3] == (upstream.num_states, 2, 49) and torch.isfinite(hidden).all()

    # Re-running the finished run recovers its last checkpoint and trains no further.
    assert len(run_and_read_losses(command)) == 30


@pytest.mark.slow
def test_recipe_trains_on_the_mini_corpus_without_its_evaluation_audio(mini_corpus, tmp_path):
    """The yaml's defaults on the real layouts: every dev/test clip a recipe scores on is
    left out of pre-training, and a few updates lower the loss."""
    output = tmp_path / "run"
    losses = run_and_read_losses(pretrain_command(
        mini_corpus, output, "--number_of_steps", "30", "--lr", "0.003",
        "--num_negatives", "20", "--valid_files", "0",
    ))
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])

    with open(output / "save" / "train.csv", encoding="utf-8") as f:
        seen = {Path(row["wav"]).resolve().relative_to(mini_corpus.resolve()).as_posix()
                for row in csv.DictReader(f)}
    commands = mini_corpus / "speech_commands_v0.01"
    held_out_clips = {
        line.strip() for name in ("testing_list.txt", "validation_list.txt")
        for line in (commands / name).read_text().splitlines() if line.strip()
    }
    assert any(path.startswith("speech_commands_v0.01/") for path in seen)
    assert not {f"speech_commands_v0.01/{path}" for path in held_out_clips} & seen
    for evaluation_prefix in ("LibriSpeech/dev-clean/", "LibriSpeech/test-clean/",
                              "speech_commands_test_set_v0.01/", "quesst14Database/",
                              "diarization/wav/test/", "SNIPS/test/"):
        assert not any(path.startswith(evaluation_prefix) for path in seen), evaluation_prefix
    assert any(path.startswith("LibriSpeech/train-clean-100/") for path in seen)


needs_shipped = pytest.mark.skipif(
    not (SHIPPED / "model.safetensors").exists(),
    reason="assets/encoder is not there (make it with recipes/pretrain/train.py)",
)


@needs_shipped
def test_shipped_encoder_loads_with_the_real_interface():
    import transformers

    from rewire_lobes.upstream.encoder import SSLUpstream

    assert (SHIPPED / "model.safetensors").stat().st_size < 20 * 2**20
    model = transformers.AutoModel.from_pretrained(str(SHIPPED))
    assert model.config.model_type == "wav2vec2"
    upstream = SSLUpstream(str(SHIPPED))
    assert next(upstream.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in upstream.parameters()) < 5_000_000
    hidden, frame_lens = upstream(torch.randn(2, 32000), torch.tensor([1.0, 0.5]))
    assert hidden.shape[:3] == (model.config.num_hidden_layers + 1, 2, 99)  # 20 ms frames
    assert frame_lens.tolist() == [99, 49]


@needs_shipped
def test_shipped_encoder_beats_random_init_on_a_keyword_probe():
    """Fixed seeds; a subset of the mini Speech Commands keeps it under a minute.

    Two random twins of the same config: transformers' init, and the lowpass CNN init the
    pre-training started from (so the margin over it is what pre-training added).
    """
    from probe_encoder import run_probe

    from rewire_lobes.data.mini_corpus import MissingToolError, ensure_embedded_data

    try:
        data_folder = ensure_embedded_data("data/mini/speech_commands_v0.01")
    except MissingToolError as err:
        pytest.skip(f"the mini corpus cannot be generated here: {err}")
    torch.set_num_threads(1)
    report = run_probe(SHIPPED, data_folder, compare_random=True, seeds=(0,), steps=200,
                       max_train_per_word=8, random_inits=("default", "lowpass"))
    shipped = report["encoder"]["held_out_accuracy"]
    assert shipped > report["random_init"]["held_out_accuracy"], report
    assert shipped > report["random_init_lowpass"]["held_out_accuracy"], report
