"""SSLUpstream against plain transformers, on tiny random encoders of each family."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from rewire_lobes.upstream.encoder import (
    SSLUpstream,
    UpstreamLoadError,
    WeightedLayerSum,
    export_encoder,
    frame_count,
)

FAMILIES = [
    ("wav2vec2", "group"),
    ("wav2vec2", "layer"),
    ("hubert", "group"),
    ("hubert", "layer"),
    ("wavlm", "group"),
    ("wavlm", "layer"),
    ("data2vec-audio", "layer"),
]
# data2vec-audio's positional conv stack sees padded frames even with a mask.
PADDING_INVARIANT = [f for f in FAMILIES if f[1] == "layer" and f[0] != "data2vec-audio"]


def reference_states(folder, wav):
    """What a user of plain transformers gets for one unpadded utterance."""
    extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    inputs = extractor(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        out = model(inputs.input_values, output_hidden_states=True)
    return list(out.hidden_states[:-1]) + [out.last_hidden_state], out


def padded_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = torch.randn(n, generator=generator) * 0.1 + 0.05
    return wavs, torch.tensor(lengths, dtype=torch.float) / max(lengths)


@pytest.mark.parametrize("model_type,norm", FAMILIES)
def test_matches_transformers_per_state(tiny_encoder, model_type, norm):
    folder = tiny_encoder(model_type, norm)
    upstream = SSLUpstream(folder)
    # The others see the padding, so they are compared on an unpadded batch.
    lengths = [8000, 5600] if (model_type, norm) in PADDING_INVARIANT else [8000, 8000]
    wavs, wav_lens = padded_batch(lengths)
    hidden, frame_lens = upstream(wavs, wav_lens)

    assert hidden.shape[0] == upstream.config.num_hidden_layers + 1
    for i, n in enumerate(lengths):
        expected, _ = reference_states(folder, wavs[i, :n])
        valid = int(frame_lens[i])
        assert valid == expected[0].shape[1]
        for layer, state in enumerate(expected):
            torch.testing.assert_close(
                hidden[layer, i, :valid], state[0], atol=1e-4, rtol=0,
                msg=f"{model_type}/{norm} state {layer} of utterance {i}",
            )
        assert torch.all(hidden[:, i, valid:] == 0), "padded frames are zeroed"


@pytest.mark.parametrize("model_type,norm", PADDING_INVARIANT)
def test_padding_changes_no_valid_output(tiny_encoder, model_type, norm):
    upstream = SSLUpstream(tiny_encoder(model_type, norm))
    wavs, _ = padded_batch([6400])
    alone, alone_lens = upstream(wavs, torch.ones(1))
    padded = torch.cat([wavs, torch.zeros(1, 4000)], dim=1)
    batch, batch_lens = upstream(padded, torch.tensor([6400 / 10400]))
    assert batch_lens.tolist() == alone_lens.tolist()
    torch.testing.assert_close(batch[:, :, : alone.shape[2]], alone, atol=1e-4, rtol=0)


def test_last_state_is_encoder_output_after_final_norm(tiny_encoder):
    folder = tiny_encoder("wav2vec2", "layer")  # stable layer norm, as the Large models
    wavs, wav_lens = padded_batch([7000])
    hidden, _ = SSLUpstream(folder)(wavs, wav_lens)
    expected, raw = reference_states(folder, wavs[0])
    torch.testing.assert_close(hidden[-1, 0], raw.last_hidden_state[0], atol=1e-5, rtol=0)
    # transformers 5 hands the last layer over before the norm: that is not what we return.
    assert not torch.allclose(hidden[-1, 0], raw.hidden_states[-1][0], atol=1e-3)


def test_frozen_stays_eval_after_train(tiny_encoder):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    upstream.train()
    assert not upstream.model.training
    wavs, wav_lens = padded_batch([4000, 3000])
    first, _ = upstream(wavs, wav_lens)
    second, _ = upstream(wavs, wav_lens)
    assert torch.equal(first, second)
    assert not first.requires_grad
    assert not any(p.requires_grad for p in upstream.parameters())


def test_trainable_mode_gradients_skip_cnn(tiny_encoder):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "layer"), freeze=False, dropout=0.1)
    upstream.train()
    wavs, wav_lens = padded_batch([4000, 3000])
    hidden, _ = upstream(wavs, wav_lens)
    hidden.mean(dim=(0, 2)).pow(2).sum().backward()
    model = upstream.model
    assert all(p.grad is None for p in model.feature_extractor.parameters())
    assert model.encoder.layers[0].attention.q_proj.weight.grad.abs().sum() > 0
    assert model.feature_projection.projection.weight.grad.abs().sum() > 0
    # Dropout is active in trainable mode, layerdrop never is.
    again, _ = upstream(wavs, wav_lens)
    assert not torch.allclose(hidden, again)
    assert upstream.config.layerdrop == 0.0
    assert upstream.config.hidden_dropout == 0.1


def test_trainable_cnn_gets_gradients_when_asked(tiny_encoder):
    upstream = SSLUpstream(tiny_encoder("hubert", "group"), freeze=False,
                           freeze_feature_encoder=False)
    wavs, wav_lens = padded_batch([4000])
    hidden, _ = upstream(wavs, wav_lens)
    hidden.sum().backward()
    assert upstream.model.feature_extractor.conv_layers[0].conv.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_encoder):
    folder = tiny_encoder("wav2vec2", "layer")
    wavs, wav_lens = padded_batch([4000, 3000])
    grads = []
    for checkpointing in (False, True):
        upstream = SSLUpstream(folder, freeze=False, dropout=0.0,
                               gradient_checkpointing=checkpointing)
        upstream.train()
        hidden, _ = upstream(wavs, wav_lens)
        hidden.pow(2).mean().backward()
        grads.append(upstream.model.encoder.layers[1].feed_forward.output_dense.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_weighted_sum_starts_as_layer_mean():
    hidden = torch.randn(5, 2, 7, 3)
    featurizer = WeightedLayerSum(5)
    torch.testing.assert_close(featurizer(hidden), hidden.mean(dim=0))
    pooled = hidden.mean(dim=2)
    torch.testing.assert_close(featurizer(pooled), pooled.mean(dim=0))


def test_weighted_sum_layer_norm_is_per_frame_and_parameter_free():
    hidden = torch.randn(3, 2, 4, 6) * 5 + 2
    featurizer = WeightedLayerSum(3, layer_norm=True)
    assert [name for name, _ in featurizer.named_parameters()] == ["weights"]
    out = featurizer(hidden)
    expected = torch.nn.functional.layer_norm(hidden, (6,)).mean(dim=0)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="expected 3 hidden states"):
        featurizer(hidden[:2])


def test_export_round_trip_keeps_weights_and_source_config(tiny_encoder, tmp_path):
    folder = tiny_encoder("wavlm", "layer")
    upstream = SSLUpstream(folder, freeze=False, dropout=0.3)
    with torch.no_grad():
        upstream.model.encoder.layers[0].attention.q_proj.weight.add_(1.0)
    exported = upstream.save_pretrained(tmp_path / "exported")

    names = sorted(p.name for p in exported.iterdir())
    assert names == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((exported / "config.json").read_text())
    source = json.loads((Path(folder) / "config.json").read_text())
    for key in ("hidden_dropout", "layerdrop", "apply_spec_augment", "mask_time_prob"):
        assert config[key] == source[key], key
    assert upstream.config.hidden_dropout == 0.3  # the live model keeps the run's values

    plain = transformers.AutoModel.from_pretrained(exported)
    for name, tensor in upstream.model.state_dict().items():
        torch.testing.assert_close(plain.state_dict()[name], tensor, atol=0, rtol=0)
    reloaded = SSLUpstream(exported)
    assert reloaded.content_hash() == upstream.content_hash()
    assert reloaded.content_hash() != SSLUpstream(folder).content_hash()
    assert reloaded.do_normalize == upstream.do_normalize


def test_bf16_checkpoint_loads_in_fp32(tiny_encoder, tmp_path):
    model = transformers.AutoModel.from_pretrained(tiny_encoder("wav2vec2", "group"))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(tmp_path)
    upstream = SSLUpstream(tmp_path)
    assert next(upstream.parameters()).dtype == torch.float32


def test_export_writes_nothing_on_failure(tiny_encoder, tmp_path, monkeypatch):
    model = transformers.AutoModel.from_pretrained(tiny_encoder("wav2vec2", "group"))

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.Wav2Vec2FeatureExtractor, "save_pretrained", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_encoder(model, tmp_path / "out", do_normalize=True)
    assert list(tmp_path.iterdir()) == []


def test_do_normalize_is_per_utterance_over_valid_samples(tiny_encoder, tmp_path):
    model = transformers.AutoModel.from_pretrained(tiny_encoder("wav2vec2", "layer"))
    export_encoder(model, tmp_path / "norm", do_normalize=True)
    upstream = SSLUpstream(tmp_path / "norm")
    wavs, _ = padded_batch([6000])
    scaled, _ = upstream(wavs * 7.0 + 0.3, torch.ones(1))
    plain, _ = upstream(wavs, torch.ones(1))
    torch.testing.assert_close(scaled, plain, atol=1e-4, rtol=0)


def test_frame_lengths_follow_the_cnn(tiny_encoder):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    lengths = torch.tensor([16000, 48000, 400])
    assert frame_count(upstream.config, lengths).tolist() == [49, 149, 1]
    wavs, wav_lens = padded_batch([16000, 12345])
    hidden, frame_lens = upstream(wavs, wav_lens)
    assert frame_lens.tolist() == [49, 38]
    assert hidden.shape[2] == 49


def test_hub_id_offline_says_to_pass_a_directory():
    with pytest.raises(UpstreamLoadError, match="Pass a local encoder directory"):
        SSLUpstream("facebook/wav2vec2-large-lv60")


def test_missing_directory_and_wrong_model_are_named(tmp_path):
    with pytest.raises(UpstreamLoadError, match="no such encoder directory"):
        SSLUpstream(str(tmp_path / "absent" / "dir"))
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(UpstreamLoadError, match="model_type 'bert' is not a supported"):
        SSLUpstream(tmp_path)


def test_spec_augment_is_opt_in_and_never_when_frozen(tmp_path):
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        mask_time_prob=0.5, mask_time_length=2, layerdrop=0.0, activation_dropout=0.0,
    )
    export_encoder(transformers.Wav2Vec2Model(config), tmp_path / "enc", do_normalize=False)
    wavs, wav_lens = padded_batch([8000])
    for options, masks in [(dict(freeze=False, dropout=0.0), False),
                           (dict(freeze=False, dropout=0.0, spec_augment=True), True),
                           (dict(freeze=True, spec_augment=True), False)]:
        upstream = SSLUpstream(tmp_path / "enc", **options).train()
        with torch.no_grad():
            first, _ = upstream(wavs, wav_lens)
            second, _ = upstream(wavs, wav_lens)
        assert torch.equal(first, second) != masks, options
