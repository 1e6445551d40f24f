"""The frame-level feature cache: exact frames, one extraction per split, budgets, keys."""

import json
import os
import pickle

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch

from rewire_lobes.data.audio import load_audio
from rewire_lobes.data.fractions import subsample_rows
from rewire_lobes.data.manifests import read_manifest, write_manifest
from rewire_lobes.downstream import frame_cache as frame_cache_module
from rewire_lobes.downstream.frame_cache import (
    FrameCache,
    FrameCacheBudgetError,
    FrameCacheError,
    frame_batch,
    frame_feature_pipeline,
)
from rewire_lobes.upstream.encoder import SSLUpstream, WeightedLayerSum

COLUMNS = ["ID", "duration", "wav", "start", "stop", "label"]
# Two pairs of equal lengths, so that group-norm extraction batches too.
LENGTHS = [16000, 9000, 12345, 16000, 20000, 9000]


def write_wav(path, num_samples, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) + 0.05 * rng.standard_normal(num_samples)
    soundfile.write(path, wave.astype("float32"), 16000)


def write_dataset(folder, lengths=LENGTHS, name="data.csv"):
    rows = []
    for i, n in enumerate(lengths):
        path = folder / f"utt{i}.wav"
        write_wav(path, n, seed=i)
        rows.append({"ID": f"utt{i}", "duration": n / 16000, "wav": str(path), "start": "",
                     "stop": "", "label": "ab"[i % 2]})
    write_manifest(folder / name, rows, COLUMNS)
    return dataset_from(folder / name)


@sb.utils.data_pipeline.takes("wav")
@sb.utils.data_pipeline.provides("sig")
def read_sig(wav):
    return load_audio(wav)


def dataset_from(csv_path):
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(csv_path))
    sb.dataio.dataset.add_dynamic_item([dataset], read_sig)
    sb.dataio.dataset.set_output_keys([dataset], ["id", "sig"])
    return dataset


def count_forward_calls(upstream):
    """A list that grows by one at each upstream forward pass."""
    calls = []
    upstream.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls


def alone(upstream, dataset, data_id):
    """``[L+1, T, D]`` of ``data_id`` encoded on its own, and its frame count."""
    with dataset.output_keys_as(["id", "sig"]):
        sig = dataset[dataset.data_ids.index(data_id)]["sig"]
    hidden, frame_lens = upstream(sig[None], torch.ones(1))
    return hidden[:, 0], int(frame_lens[0])


def random_featurizer(num_states, layer_norm=False, seed=0):
    torch.manual_seed(seed)
    featurizer = WeightedLayerSum(num_states, layer_norm=layer_norm)
    with torch.no_grad():
        featurizer.weights.copy_(torch.randn(num_states))
    return featurizer


def cache_files(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- 1. cached == on the fly
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_cached_frames_equal_each_utterance_encoded_alone(tiny_encoder, tmp_path, norm):
    """Group norm batches only equal lengths, layer norm pads: both give the alone frames."""
    upstream = SSLUpstream(tiny_encoder("wav2vec2", norm))
    dataset = write_dataset(tmp_path)
    calls = count_forward_calls(upstream)
    features = FrameCache(tmp_path / "cache", upstream, batch_size=3).load(
        dataset, progressbar=False)
    assert len(calls) < len(LENGTHS), "extraction should batch utterances"
    # The padding share counts every batch's rows at its longest (sorted: 9000, 9000, 12345,
    # 16000, 16000, 20000; batches of 3, or of equal lengths where padding is not exact).
    shapes = [9000, 9000, 12345, 16000, 16000, 20000]
    batches = ([[0, 1, 2], [3, 4, 5]] if upstream.padding_invariant
               else [[0, 1], [2], [3, 4], [5]])
    padded = sum(len(b) * max(shapes[i] for i in b) for b in batches)
    assert features.padding_share == pytest.approx(1 - sum(shapes) / padded)
    for data_id in dataset.data_ids:
        expected, frames = alone(upstream, dataset, data_id)
        cached = features[data_id]
        assert cached.dtype == torch.float32
        assert cached.shape == (upstream.num_states, frames, upstream.hidden_size)
        assert features.num_frames(data_id) == frames
        torch.testing.assert_close(cached, expected, atol=1e-5, rtol=0,
                                   msg=f"{norm}: frames of {data_id}")


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("norm", ["layer", "group"])
def test_padded_cached_batch_gives_the_on_the_fly_logits(tiny_encoder, tmp_path, norm,
                                                         layer_norm):
    """The on-the-fly side runs one padded batch, so it is exact only where padding is.

    Layer-norm encoders always are; a group-norm one only once ``SSLUpstream`` normalises
    over valid frames (``padding_invariant``); before that the comparison is skipped
    (its cache is still exact per utterance, see the test above).
    """
    upstream = SSLUpstream(tiny_encoder("wav2vec2", norm))
    if not upstream.padding_invariant:
        pytest.skip("this SSLUpstream's group-norm padded batches are not exact")
    dataset = write_dataset(tmp_path)
    features = FrameCache(tmp_path / "cache", upstream, batch_size=2).load(
        dataset, progressbar=False)
    featurizer = random_featurizer(upstream.num_states, layer_norm)
    head = torch.nn.Linear(upstream.hidden_size, 7)

    on_the_fly = sb.dataio.batch.PaddedBatch([dataset[i] for i in range(len(dataset))])
    sb.dataio.dataset.add_dynamic_item([dataset], frame_feature_pipeline(features))
    sb.dataio.dataset.set_output_keys([dataset], ["id", "feats", "frame_len"])
    cached = sb.dataio.batch.PaddedBatch([dataset[i] for i in range(len(dataset))])
    assert cached.id == on_the_fly.id

    with torch.no_grad():
        hidden, frame_lens = upstream(*on_the_fly.sig)
        reference = head(featurizer(hidden))
        cached_hidden, cached_lens = frame_batch(cached.feats, cached.frame_len)
        logits = head(featurizer(cached_hidden))
    assert cached_lens.tolist() == frame_lens.tolist()
    assert frame_batch(cached.feats)[1].tolist() == frame_lens.tolist()  # from relative lengths
    assert cached_hidden.shape == hidden.shape
    torch.testing.assert_close(logits, reference, atol=1e-5, rtol=0)
    # The padded batch holds each utterance's cached tensor, then zeros.
    for row, data_id in enumerate(cached.id):
        valid = int(cached_lens[row])
        assert torch.equal(cached_hidden[:, row, :valid], features[data_id])
        assert torch.all(cached_hidden[:, row, valid:] == 0)


# ---------------------------------------------------------------- 2. fraction subsets
def test_fraction_subset_reads_the_full_split_cache(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    full = write_dataset(tmp_path, name="train.csv")
    cache = FrameCache(tmp_path / "cache", upstream)
    calls = count_forward_calls(upstream)
    first = cache.load(full, progressbar=False)
    extraction_calls = len(calls)
    assert extraction_calls > 0

    subset_rows = subsample_rows(read_manifest(tmp_path / "train.csv"), 0.5, seed=3)
    write_manifest(tmp_path / "subset.csv", subset_rows, COLUMNS)
    subset = dataset_from(tmp_path / "subset.csv")
    assert 0 < len(subset) < len(full)
    features = cache.load(dataset_from(tmp_path / "train.csv"), progressbar=False)
    features.check_covers(subset)
    sb.dataio.dataset.add_dynamic_item([subset], frame_feature_pipeline(features))
    sb.dataio.dataset.set_output_keys([subset], ["id", "feats", "frame_len"])
    for i, row in enumerate(subset_rows):
        item = subset[i]
        assert item["id"] == row["ID"]
        assert torch.equal(item["feats"].transpose(0, 1), first[row["ID"]])
        assert item["frame_len"] == first.num_frames(row["ID"])
    assert len(calls) == extraction_calls, "the subset must not run the encoder"


def test_subset_outside_the_cache_is_a_clear_error(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    features = FrameCache(tmp_path / "cache", upstream).load(
        write_dataset(tmp_path, LENGTHS[:2]), progressbar=False)
    other = tmp_path / "other"
    other.mkdir()
    stranger = write_dataset(other, LENGTHS[:3])  # utt0, utt1 at other paths, utt2 unknown
    with pytest.raises(FrameCacheError, match=r"1 ids it does not hold.*utt2.*2 ids with other"):
        features.check_covers(stranger)
    with pytest.raises(KeyError, match="full training split"):
        features["utt2"]


def test_features_pickle_without_their_data(tiny_encoder, tmp_path):
    """DataLoader workers get the index, then map the file themselves."""
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    features = FrameCache(tmp_path / "cache", upstream).load(
        write_dataset(tmp_path), progressbar=False)
    expected = features["utt4"]
    copy = pickle.loads(pickle.dumps(features))
    assert torch.equal(copy["utt4"], expected)
    assert len(pickle.dumps(features)) < features.data_path.stat().st_size


# ---------------------------------------------------------------- 3. disk budget
def test_budget_error_fires_before_extraction_and_names_the_sizes(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    needed = FrameCache(tmp_path / "cache", upstream).required_bytes(dataset)
    allowed_gb = needed / 2 / 1e9
    cache = FrameCache(tmp_path / "cache", upstream, max_disk_gb=allowed_gb)
    calls = count_forward_calls(upstream)
    with pytest.raises(FrameCacheBudgetError) as error:
        cache.load(dataset, progressbar=False)
    message = str(error.value)
    assert str(tmp_path / "cache") in message
    assert f"{needed / 1e9:.4g} GB" in message and f"{allowed_gb:.4g} GB" in message
    assert "max_disk_gb" in message and "float16" in message and "on the fly" in message
    assert calls == [] and cache_files(tmp_path / "cache") == []

    # The computed size is the size written: a budget of exactly that passes.
    exact = FrameCache(tmp_path / "cache", upstream, max_disk_gb=needed / 1e9)
    features = exact.load(dataset, progressbar=False)
    assert features.data_path.stat().st_size == needed


def test_free_disk_space_is_checked_before_extraction(tiny_encoder, tmp_path, monkeypatch):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    usage = frame_cache_module.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(frame_cache_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))
    calls = count_forward_calls(upstream)
    with pytest.raises(FrameCacheBudgetError, match=f"{1000 / 1e9:.4g} GB are free"):
        FrameCache(tmp_path / "cache", upstream).load(dataset, progressbar=False)
    assert calls == [] and cache_files(tmp_path / "cache") == []


# ---------------------------------------------------------------- 4. keys and integrity
def test_second_load_hits_and_changed_audio_or_encoder_misses(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    cache = FrameCache(tmp_path / "cache", upstream)
    calls = count_forward_calls(upstream)
    first = cache.load(dataset, progressbar=False)
    extraction_calls = len(calls)

    again = cache.load(dataset_from(tmp_path / "data.csv"), progressbar=False)
    assert len(calls) == extraction_calls, "a second load must be a cache hit"
    assert again.folder == first.folder and torch.equal(again["utt2"], first["utt2"])

    stat = os.stat(tmp_path / "utt1.wav")
    os.utime(tmp_path / "utt1.wav", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = cache.load(dataset_from(tmp_path / "data.csv"), progressbar=False)
    assert len(calls) > extraction_calls and touched.folder != first.folder

    calls.clear()
    write_wav(tmp_path / "utt1.wav", 4800, seed=9)  # same manifest row, another file
    resized = cache.load(dataset_from(tmp_path / "data.csv"), progressbar=False)
    assert calls and resized.folder not in (first.folder, touched.folder)
    assert resized.num_frames("utt1") == alone(upstream, dataset, "utt1")[1] != \
        first.num_frames("utt1")

    other = SSLUpstream(tiny_encoder("wav2vec2", "layer"))
    other_calls = count_forward_calls(other)
    elsewhere = FrameCache(tmp_path / "cache", other).load(dataset, progressbar=False)
    assert other_calls and elsewhere.folder.parent != first.folder.parent


@pytest.mark.parametrize("damage", ["truncate_data", "truncate_index", "foreign_index",
                                    "delete_data"])
def test_damaged_or_foreign_cache_is_rebuilt_never_read(tiny_encoder, tmp_path, damage):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    cache = FrameCache(tmp_path / "cache", upstream)
    first = cache.load(dataset, progressbar=False)
    expected = {data_id: first[data_id] for data_id in dataset.data_ids}
    index_path = first.folder / "index.json"
    if damage == "truncate_data":
        with open(first.data_path, "r+b") as data:
            data.truncate(first.data_path.stat().st_size - 4)
    elif damage == "truncate_index":
        text = index_path.read_text()
        index_path.write_text(text[: len(text) // 2])
    elif damage == "foreign_index":
        index = json.loads(index_path.read_text())
        index["dtype"] = "float16"
        index_path.write_text(json.dumps(index))
    else:
        first.data_path.unlink()

    calls = count_forward_calls(upstream)
    rebuilt = cache.load(dataset, progressbar=False)
    assert calls, f"{damage}: the damaged cache was read"
    for data_id, tensor in expected.items():
        assert torch.equal(rebuilt[data_id], tensor)
    data_files = [name for name in cache_files(first.folder) if name.endswith(".bin")]
    assert data_files == [rebuilt.data_path.name], "stale data files are removed"


def test_a_crash_during_extraction_leaves_no_cache(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    calls = count_forward_calls(upstream)

    def crash_on_second_batch(module, args, output):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")

    hook = upstream.register_forward_hook(crash_on_second_batch)
    cache = FrameCache(tmp_path / "cache", upstream, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        cache.load(dataset, progressbar=False)
    assert cache_files(tmp_path / "cache") == []
    hook.remove()
    assert len(cache.load(dataset, progressbar=False)) == len(LENGTHS)


# ---------------------------------------------------------------- 5. fp16
def test_fp16_cache_within_fp16_rounding_of_fp32(tiny_encoder, tmp_path):
    """Stated tolerance: fp16 keeps 11 significant bits, so each stored value is off by at
    most u = 2**-11 of itself (round to nearest), or 2**-25 absolute below fp16's normal
    range (subnormals). The weighted sum ``y = sum_l w_l h_l`` (w >= 0, sum 1, computed in
    fp32 both ways) is therefore off by at most

        |y16 - y32| <= u * sum_l w_l |h_l| + 2**-25 + 2 * (L+2) * 2**-24 * sum_l w_l |h_l|

    elementwise, the last term being fp32's own rounding of the two sums.
    """
    upstream = SSLUpstream(tiny_encoder("wav2vec2", "group"))
    dataset = write_dataset(tmp_path)
    exact = FrameCache(tmp_path / "cache", upstream).load(dataset, progressbar=False)
    half = FrameCache(tmp_path / "cache", upstream, dtype="float16").load(
        dataset, progressbar=False)
    assert half.folder != exact.folder
    assert half.data_path.stat().st_size * 2 == exact.data_path.stat().st_size
    featurizer = random_featurizer(upstream.num_states)
    weights = torch.softmax(featurizer.weights.detach(), dim=0)
    unit_roundoff = 2.0 ** -11
    fp32_slack = 2 * (upstream.num_states + 1) * 2.0 ** -24
    worst_abs = worst_rel = 0.0
    with torch.no_grad():
        for data_id in dataset.data_ids:
            reference, approx = featurizer(exact[data_id]), featurizer(half[data_id])
            magnitude = torch.einsum("l,ltd->td", weights, exact[data_id].abs())
            error = (approx - reference).abs()
            bound = (unit_roundoff + fp32_slack) * magnitude + 2.0 ** -25
            assert torch.all(error <= bound), f"{data_id}: {(error - bound).max()} over the bound"
            assert half[data_id].dtype == torch.float32
            worst_abs = max(worst_abs, error.max().item())
            worst_rel = max(worst_rel, (error / magnitude.clamp(min=2.0 ** -14)).max().item())
    assert worst_abs > 0, "the fp16 cache should differ from fp32"
    print(f"fp16 vs fp32 weighted sum: max abs error {worst_abs:.3g}, "
          f"max error / sum_l w_l|h_l| {worst_rel:.3g} (bound {unit_roundoff + fp32_slack:.3g})")
