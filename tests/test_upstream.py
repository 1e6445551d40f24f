"""SSLUpstream against plain transformers, on tiny random encoders of each family."""

import json
from pathlib import Path

import pytest
import torch
import transformers

from rewire_lobes.upstream.encoder import (
    SSLUpstream,
    UpstreamLoadError,
    ValidFrameGroupNormConvLayer,
    WeightedLayerSum,
    export_encoder,
    _ValidFrameGroupNorm,
    frame_count,
)
from rewire_lobes.upstream.pooling import masked_mean

FAMILIES = [
    ("wav2vec2", "group"),
    ("wav2vec2", "layer"),
    ("hubert", "group"),
    ("hubert", "layer"),
    ("wavlm", "group"),
    ("wavlm", "layer"),
    ("data2vec-audio", "layer"),
]
# What plain transformers (exact_padding=False) gets right: layer-norm front-ends with an
# attention mask; data2vec-audio's positional conv stack sees padded frames even then.
INVARIANT_WITHOUT_EXACT_PADDING = [
    f for f in FAMILIES if f[1] == "layer" and f[0] != "data2vec-audio"
]


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
    lengths = [8000, 5600]
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


@pytest.mark.parametrize("model_type,norm", FAMILIES)
def test_padding_changes_no_valid_output(tiny_encoder, model_type, norm):
    upstream = SSLUpstream(tiny_encoder(model_type, norm))
    wavs, _ = padded_batch([6400])
    alone, alone_lens = upstream(wavs, torch.ones(1))
    padded = torch.cat([wavs, torch.zeros(1, 4000)], dim=1)
    batch, batch_lens = upstream(padded, torch.tensor([6400 / 10400]))
    assert batch_lens.tolist() == alone_lens.tolist()
    torch.testing.assert_close(batch[:, :, : alone.shape[2]], alone, atol=1e-4, rtol=0)


def short_beside_long(seed=0):
    """A 1 s clip alone, and the same clip padded in a batch beside a 3 s clip."""
    generator = torch.Generator().manual_seed(seed)
    short = torch.randn(16000, generator=generator) * 0.1
    batch = torch.zeros(2, 48000)
    batch[0, :16000] = short
    batch[1] = torch.randn(48000, generator=generator) * 0.1
    return short[None], batch, torch.tensor([1 / 3, 1.0])


@pytest.mark.parametrize("model_type,norm", FAMILIES)
def test_pooled_states_of_a_clip_batched_equal_alone(tiny_encoder, model_type, norm):
    upstream = SSLUpstream(tiny_encoder(model_type, norm))
    assert upstream.padding_invariant
    short, batch, batch_lens = short_beside_long()
    hidden, frame_lens = upstream(short)
    alone = masked_mean(hidden, frame_lens)[:, 0]
    hidden, frame_lens = upstream(batch, batch_lens)
    batched = masked_mean(hidden, frame_lens)[:, 0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type,norm", FAMILIES)
def test_inexact_padding_is_plain_transformers(tiny_encoder, model_type, norm):
    """``exact_padding=False``: padding does change the features where transformers lets it."""
    folder = tiny_encoder(model_type, norm)
    upstream = SSLUpstream(folder, exact_padding=False)
    invariant = (model_type, norm) in INVARIANT_WITHOUT_EXACT_PADDING
    assert upstream.padding_invariant == invariant
    short, batch, batch_lens = short_beside_long()
    hidden, frame_lens = upstream(short)
    alone = masked_mean(hidden, frame_lens)[:, 0]
    hidden, frame_lens = upstream(batch, batch_lens)
    batched = masked_mean(hidden, frame_lens)[:, 0]
    assert torch.allclose(batched, alone, atol=1e-5) == invariant
    # Without padding both modes are transformers itself.
    exact = SSLUpstream(folder)
    wavs, wav_lens = padded_batch([8000, 8000])
    torch.testing.assert_close(exact(wavs, wav_lens)[0], upstream(wavs, wav_lens)[0],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["wav2vec2", "data2vec-audio"])
def test_exact_padding_keeps_state_dict_and_export(tiny_encoder, tmp_path, model_type):
    folder = tiny_encoder(model_type, "layer" if model_type == "data2vec-audio" else "group")
    exact, plain = SSLUpstream(folder), SSLUpstream(folder, exact_padding=False)
    if model_type == "wav2vec2":
        assert isinstance(exact.model.feature_extractor.conv_layers[0],
                          ValidFrameGroupNormConvLayer)
    assert list(exact.model.state_dict()) == list(plain.model.state_dict())
    assert list(exact.state_dict()) == list(plain.state_dict())
    assert exact.content_hash() == plain.content_hash()
    for upstream, name in ((exact, "exact"), (plain, "plain")):
        upstream.save_pretrained(tmp_path / name)
    for file in ("config.json", "model.safetensors", "preprocessor_config.json"):
        assert (tmp_path / "exact" / file).read_bytes() == (tmp_path / "plain" / file).read_bytes()


def test_valid_frame_group_norm_matches_group_norm_and_its_gradients(tiny_encoder):
    layer = SSLUpstream(tiny_encoder("wav2vec2", "group")).model.feature_extractor.conv_layers[0]
    layer = layer.double()
    waveform = torch.randn(3, 1, 600, dtype=torch.double)
    valid_samples = torch.tensor([600, 420, 100])
    layer.valid_samples = valid_samples
    batched = layer(waveform)
    for row, samples in enumerate(valid_samples.tolist()):
        layer.valid_samples = None  # transformers' GroupNorm over an unpadded clip
        alone = layer(waveform[row:row + 1, :, :samples])
        torch.testing.assert_close(batched[row:row + 1, :, : alone.shape[-1]], alone)

    # The hand-written backward, padded frames' gradients included (they reach the stats).
    conv_output = torch.randn(3, 4, 11, dtype=torch.double, requires_grad=True)
    weight = torch.randn(4, dtype=torch.double, requires_grad=True)
    bias = torch.randn(4, dtype=torch.double, requires_grad=True)
    valid_frames = torch.tensor([11, 7, 2])
    assert torch.autograd.gradcheck(
        lambda *inputs: _ValidFrameGroupNorm.apply(*inputs, valid_frames, 1e-5),
        (conv_output, weight, bias))


def test_exact_padding_gradients_are_those_of_each_clip_alone(tiny_encoder):
    """The trainable CNN (valid-frame group norm included) gets exact gradients in a batch."""
    upstream = SSLUpstream(tiny_encoder("hubert", "group"), freeze=False,
                           freeze_feature_encoder=False).eval()  # no dropout: same masks
    short, batch, batch_lens = short_beside_long()
    targets = torch.randn(2, upstream.num_states, upstream.hidden_size,
                          generator=torch.Generator().manual_seed(1))

    def loss_of(wavs, wav_lens, rows):
        hidden, frame_lens = upstream(wavs, wav_lens)
        return (masked_mean(hidden, frame_lens).transpose(0, 1) * targets[rows]).sum()

    loss_of(batch, batch_lens, [0, 1]).backward()
    batched = {n: p.grad.clone() for n, p in upstream.named_parameters() if p.grad is not None}
    upstream.zero_grad()
    loss_of(short, None, [0]).backward()
    loss_of(batch[1:], None, [1]).backward()
    alone = {n: p.grad for n, p in upstream.named_parameters() if p.grad is not None}
    assert batched.keys() == alone.keys()
    assert batched["model.feature_extractor.conv_layers.0.layer_norm.weight"].abs().sum() > 0
    for name in alone:
        torch.testing.assert_close(batched[name], alone[name], atol=1e-5, rtol=1e-4, msg=name)


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


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_encoder, norm):
    """Two batches of other paddings before one backward: each recomputation uses its own."""
    folder = tiny_encoder("wav2vec2", norm)
    batches = [padded_batch([4000, 3000]), padded_batch([2400, 5000, 3600], seed=1)]
    grads = []
    for checkpointing in (False, True):
        upstream = SSLUpstream(folder, freeze=False, dropout=0.0, freeze_feature_encoder=False,
                               gradient_checkpointing=checkpointing)
        upstream.train()  # checkpointing is off in eval mode
        torch.manual_seed(0)  # activation dropout stays on; checkpointing replays its masks
        loss = sum(upstream(wavs, wav_lens)[0].pow(2).mean() for wavs, wav_lens in batches)
        loss.backward()
        grads.append({n: p.grad for n, p in upstream.named_parameters()})
    for name in ("model.encoder.layers.1.feed_forward.output_dense.weight",
                 "model.feature_extractor.conv_layers.0.conv.weight"):
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-5)


def test_the_compiled_encoder_gives_the_eager_states_and_gradients(tiny_encoder):
    """torch.compile (dynamic shapes, as the rewiring yamls ask) traces the encoder,
    valid-frame group norm included, over batches of other lengths and paddings. The
    aot_eager backend runs the traced graphs without generating code, so this checks the
    tracing in seconds; inductor only changes the kernels."""
    folder = tiny_encoder("wav2vec2", "group")
    upstream = SSLUpstream(folder, freeze=False, dropout=0.0, freeze_feature_encoder=False).eval()
    compiled = torch.compile(upstream, backend="aot_eager", dynamic=True)
    for lengths in ([4000, 3000], [2400, 5000, 3600]):
        wavs, wav_lens = padded_batch(lengths)
        results = []
        for model in (upstream, compiled):
            hidden, frame_lens = model(wavs, wav_lens)
            hidden.pow(2).mean().backward()
            grad = upstream.model.feature_extractor.conv_layers[0].conv.weight.grad.clone()
            upstream.zero_grad(set_to_none=True)
            results.append((hidden.detach(), frame_lens, grad))
        torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-4)
        assert torch.equal(results[1][1], results[0][1])
        torch.testing.assert_close(results[1][2], results[0][2], atol=1e-6, rtol=1e-4)


def test_masked_mean_ignores_padded_frames_and_keeps_leading_dims():
    frames = torch.randn(3, 2, 6, 4)
    frames[:, 1, 2:] = 1e3  # padding need not be zero
    pooled = masked_mean(frames, torch.tensor([6, 2]))
    assert pooled.shape == (3, 2, 4)
    torch.testing.assert_close(pooled[:, 1], frames[:, 1, :2].mean(dim=1))
    torch.testing.assert_close(masked_mean(frames[0], torch.tensor([6, 2])), pooled[0])
    assert torch.equal(masked_mean(frames[0], torch.tensor([0, 2]))[0], torch.zeros(4))


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
