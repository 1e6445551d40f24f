"""Cached pooled features give the same logits as running the encoder at every step."""

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch

from rewire_lobes.downstream.features import FeatureCache, manifest_fingerprint, pool_states
from rewire_lobes.downstream.heads import UtteranceLevelHead
from rewire_lobes.data.manifests import write_manifest
from rewire_lobes.upstream.encoder import SSLUpstream, WeightedLayerSum
from rewire_lobes.upstream.pooling import masked_mean
from rewire_lobes.downstream.dataio import audio_pipeline, audio_pipeline_tag

COLUMNS = ["ID", "duration", "wav", "start", "stop"]


def write_dataset(folder, lengths, crop=None, seed=0):
    """Wavs of the given sample counts plus a manifest; ``crop=(start, stop)`` on the last."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, n in enumerate(lengths):
        path = folder / f"utt{i}.wav"
        soundfile.write(path, (rng.standard_normal(n) * 0.1).astype("float32"), 16000)
        start, stop = ("", "")
        if crop is not None and i == len(lengths) - 1:
            start, stop = (str(crop[0]), str(crop[1]))
        rows.append({"ID": f"utt{i}", "duration": n / 16000, "wav": str(path),
                     "start": start, "stop": stop})
    write_manifest(folder / "data.csv", rows, COLUMNS)
    return dataset_from(folder / "data.csv")


def dataset_from(csv_path, gain_db=0.0):
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(csv_path))
    sb.dataio.dataset.add_dynamic_item([dataset], audio_pipeline(gain_db))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig"])
    return dataset


def padded_batch(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    batch = sb.dataio.batch.PaddedBatch(items)
    return batch.id, batch.sig.data, batch.sig.lengths


def on_the_fly_logits(upstream, featurizer, head, wavs, lens):
    hidden, frame_lens = upstream(wavs, lens)
    return head(featurizer(hidden), frame_lens)


def cached_logits(cache_features, ids, featurizer, head):
    pooled = torch.stack([cache_features[i] for i in ids])  # [B, L+1, D]
    return head(featurizer(pooled.transpose(0, 1)))


def test_head_pool_first_equals_frames():
    torch.manual_seed(0)
    head = UtteranceLevelHead(16, 5, projector_dim=8)
    frames, lengths = torch.randn(3, 7, 16), torch.tensor([7, 4, 1])
    assert torch.allclose(head(frames, lengths), head(masked_mean(frames, lengths)), atol=1e-6)
    # padded frames never count
    noisy = frames.clone()
    noisy[1, 4:] = 1e3
    assert torch.allclose(head(noisy, lengths), head(frames, lengths), atol=1e-5)
    with pytest.raises(ValueError):
        head(torch.randn(2, 3, 4, 16))


def test_pool_states_matches_per_utterance_mean():
    hidden = torch.randn(3, 2, 6, 4)
    lens = torch.tensor([6, 2])
    pooled = pool_states(hidden, lens)
    assert pooled.shape == (2, 3, 4)
    assert torch.allclose(pooled[1], hidden[:, 1, :2].mean(dim=1), atol=1e-6)


def count_forward_passes(upstream, monkeypatch):
    calls = []
    forward = upstream.forward

    def counted(wavs, wav_lens=None):
        calls.append(wavs.shape[0])
        return forward(wavs, wav_lens)

    monkeypatch.setattr(upstream, "forward", counted)
    return calls


@pytest.mark.parametrize("model_type,norm", [("wav2vec2", "layer"), ("wav2vec2", "group"),
                                             ("data2vec-audio", "layer")])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_cached_equals_on_the_fly_with_padding(tiny_encoder, tmp_path, monkeypatch, layer_norm,
                                               model_type, norm):
    """Variable lengths in one padded batch, on the fly and in the cache's batches."""
    upstream = SSLUpstream(tiny_encoder(model_type, norm))
    dataset = write_dataset(tmp_path, [16000, 9000, 12345, 20000], crop=(3000, 11000))
    torch.manual_seed(0)
    featurizer = WeightedLayerSum(upstream.num_states, layer_norm=layer_norm)
    with torch.no_grad():
        featurizer.weights.copy_(torch.randn(upstream.num_states))
    head = UtteranceLevelHead(upstream.hidden_size, 12, projector_dim=8)

    ids, wavs, lens = padded_batch(dataset)
    with torch.no_grad():
        reference = on_the_fly_logits(upstream, featurizer, head, wavs, lens)
    cache = FeatureCache(tmp_path / "cache", upstream, layer_norm=layer_norm, batch_size=3)
    forward_passes = count_forward_passes(upstream, monkeypatch)
    features = cache.load(dataset, progressbar=False)
    assert forward_passes == [3, 1], "utterances of different lengths share a batch"
    featurizer.layer_norm = False  # the cache holds means of normalised frames already
    with torch.no_grad():
        logits = cached_logits(features, ids, featurizer, head)
    assert torch.allclose(logits, reference, atol=1e-5), (logits - reference).abs().max()


def test_inexact_group_norm_is_extracted_one_length_at_a_time(tiny_encoder, tmp_path,
                                                              monkeypatch):
    """``exact_padding=False``: padding changes the features, so none is added."""
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"), exact_padding=False)
    dataset = write_dataset(tmp_path, [16000, 9000, 16000, 12345])
    forward_passes = count_forward_passes(upstream, monkeypatch)
    features = FeatureCache(tmp_path / "cache", upstream, batch_size=3).load(
        dataset, progressbar=False)
    assert sorted(forward_passes) == [1, 1, 2]
    for index, data_id in enumerate(dataset.data_ids):
        sig = dataset[index]["sig"]
        with torch.no_grad():
            alone = pool_states(*upstream(sig[None]))[0]
        assert torch.allclose(features[data_id], alone, atol=1e-5), data_id


def test_cached_equals_on_the_fly_group_norm_equal_lengths(tiny_encoder, tmp_path):
    """Plain transformers' group norm: exact when no padding is involved (1 s clips)."""
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"), exact_padding=False)
    dataset = write_dataset(tmp_path, [16000] * 3 + [32000], crop=(5000, 21000))
    featurizer = WeightedLayerSum(upstream.num_states)
    head = UtteranceLevelHead(upstream.hidden_size, 3, projector_dim=8)
    ids, wavs, lens = padded_batch(dataset)
    assert torch.all(lens == 1.0)  # the crop makes the last item 1 s too
    with torch.no_grad():
        reference = on_the_fly_logits(upstream, featurizer, head, wavs, lens)
        features = FeatureCache(tmp_path / "cache", upstream).load(dataset, progressbar=False)
        logits = cached_logits(features, ids, featurizer, head)
    assert torch.allclose(logits, reference, atol=1e-5)


def test_cache_is_reused_and_keyed(tiny_encoder, tmp_path, monkeypatch):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "layer"))
    dataset = write_dataset(tmp_path, [8000, 8000])
    cache = FeatureCache(tmp_path / "cache", upstream)
    first = cache.load(dataset, progressbar=False)
    files = list((tmp_path / "cache").rglob("*.pt"))
    assert len(files) == 1 and upstream.features_hash()[:16] in str(files[0])

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(FeatureCache, "extract", no_extraction)
    again = cache.load(dataset_from(tmp_path / "data.csv"), progressbar=False)
    assert torch.equal(again.vectors, first.vectors)

    # Another audio pipeline, a rewritten file, or another layer-norm setting: a new key.
    tag_a = manifest_fingerprint(dataset, audio_pipeline_tag(0.0))
    assert tag_a != manifest_fingerprint(dataset, audio_pipeline_tag(-3.0))
    soundfile.write(tmp_path / "utt0.wav", np.zeros(8001, dtype="float32"), 16000)
    assert manifest_fingerprint(dataset, audio_pipeline_tag(0.0)) != tag_a
    assert FeatureCache(tmp_path / "cache", upstream, layer_norm=True).path_for("x") != \
        cache.path_for("x")


def test_foreign_or_broken_cache_file_is_rebuilt(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "layer"))
    dataset = write_dataset(tmp_path, [8000])
    cache = FeatureCache(tmp_path / "cache", upstream)
    path = cache.path_for(manifest_fingerprint(dataset))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a torch file")
    features = cache.load(dataset, progressbar=False)
    assert len(features) == 1 and features["utt0"].shape == (upstream.num_states,
                                                              upstream.hidden_size)


def test_cache_key_follows_the_input_treatment_not_only_the_weights(tiny_encoder, tmp_path):
    """Same weights, another do_normalize or padding rule: another cache file."""
    plain = SSLUpstream(tiny_encoder())
    normalized = SSLUpstream(tiny_encoder())
    normalized.do_normalize = not plain.do_normalize
    inexact = SSLUpstream(tiny_encoder(), exact_padding=False)
    assert plain.content_hash() == normalized.content_hash() == inexact.content_hash()
    paths = {FeatureCache(tmp_path, upstream).path_for("m" * 16)
             for upstream in (plain, normalized, inexact)}
    assert len(paths) == 3
    assert FeatureCache(tmp_path, plain).path_for("m" * 16) == \
        FeatureCache(tmp_path, SSLUpstream(tiny_encoder())).path_for("m" * 16)
