"""KS ``_silence_`` as s3prl draws it: one item per noise file, a random 1 s crop per fetch.

Training crops change at every draw and repeat on resume (and in loader workers); dev
crops are fixed; in cached-feature mode the crops are encoded in the batch and give the
logits of on-the-fly mode.
"""

from pathlib import Path

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch
from speechbrain.dataio.batch import PaddedBatch

from rewire_lobes.data.manifests import read_manifest
from rewire_lobes.downstream.dataio import dataio_prepare, write_train_subset

# test_ks_ic puts recipes/KS on sys.path.
from test_ks_ic import build_speech_commands, ks_brain_in_process, write_wav  # noqa: E402, I001
from speech_commands_prepare import (  # noqa: E402
    SILENCE_CROP_SAMPLES,
    TRAIN_FOLDER,
    prepare_speech_commands,
)

NOISE_FILES = ["long_noise", "short_noise", "noise_2", "noise_3", "noise_4", "noise_5"]


@pytest.fixture
def data_folder(tmp_path):
    """The tiny Speech Commands tree with six noise files, as the real corpus has."""
    root = tmp_path / "data"
    build_speech_commands(root)  # long_noise (3 s) and short_noise (0.5 s)
    for k, name in enumerate(NOISE_FILES[2:]):
        write_wav(root / TRAIN_FOLDER / "_background_noise_" / f"{name}.wav", seconds=2.0,
                  seed=10 + k)
    return root


def prepared(data_folder, tmp_path, seed=1986, fraction=1.0):
    """The datasets of ``dataio_prepare`` (no gain, so crops compare exactly with the file)."""
    manifest_folder = prepare_speech_commands(data_folder, tmp_path / "manifests",
                                              keywords=["yes", "no"])
    output_folder = tmp_path / f"run_seed{seed}_fraction{fraction}"
    output_folder.mkdir(exist_ok=True)
    hparams = {
        "fraction": fraction, "seed": seed, "manifest_folder": str(manifest_folder),
        "output_folder": str(output_folder), "stratify_column": "label", "group_column": None,
        "label_columns": ["label"], "gain_db": 0.0,
    }
    return dataio_prepare(hparams)


def silence_sig(dataset, name):
    """The ``sig`` of the ``_silence_`` item of noise file ``name``."""
    data_id = next(i for i in dataset.data_ids if i.endswith(f"/{name}"))
    return dataset[dataset.data_ids.index(data_id)]["sig"]


def offset_in_file(sig, wav):
    """Where ``sig`` lies in ``wav``, found by matching samples (None when it does not)."""
    audio = soundfile.read(wav, dtype="float32")[0]
    sig = sig.numpy()
    for start in np.flatnonzero(audio == sig[0]):
        if np.array_equal(audio[start : start + len(sig)], sig):
            return int(start)
    return None


# ---------------------------------------------------------------------- manifests
def test_prepare_writes_one_silence_item_per_noise_file_per_split(data_folder, tmp_path):
    out = prepare_speech_commands(data_folder, tmp_path / "manifests", keywords=["yes", "no"])
    for split in ("train", "dev"):
        silence = [r for r in read_manifest(out / f"{split}.csv") if r["label"] == "_silence_"]
        assert sorted(Path(r["wav"]).stem for r in silence) == sorted(NOISE_FILES)
        assert {r["ID"] for r in silence} == {f"_silence_/{split}/{n}" for n in NOISE_FILES}
        for row in silence:
            assert (row["start"], row["stop"], row["random_crop"]) == ("", "", "16000")
            seconds = soundfile.info(row["wav"]).duration
            assert float(row["duration"]) == pytest.approx(min(1.0, seconds))
    # The test archive's _silence_ clips are 1 s files, read as they are.
    test_silence = [r for r in read_manifest(out / "test.csv") if r["label"] == "_silence_"]
    assert test_silence and {r["random_crop"] for r in test_silence} == {""}


def test_fraction_keeps_or_drops_whole_noise_files(data_folder, tmp_path):
    out = prepare_speech_commands(data_folder, tmp_path / "manifests", keywords=["yes", "no"])
    subset = write_train_subset(out / "train.csv", tmp_path / "subset.csv", 0.5, seed=1,
                                stratify_column="label")
    kept = [r for r in subset if r["label"] == "_silence_"]
    assert len(kept) == 3  # half of the six files, each one item
    assert len({r["wav"] for r in kept}) == 3


# ---------------------------------------------------------------------- the crops
def test_training_crops_change_at_every_draw_and_repeat_on_resume(data_folder, tmp_path):
    train = prepared(data_folder, tmp_path)["train"]
    wav = str(data_folder / TRAIN_FOLDER / "_background_noise_" / "long_noise.wav")
    with pytest.raises(RuntimeError, match="needs its draw"):
        silence_sig(train, "long_noise")  # read without its draw position

    by_draw = {}
    for draw in (0, 1, 7):
        train.random_crops.draw = draw
        by_draw[draw] = silence_sig(train, "long_noise")
        assert torch.equal(silence_sig(train, "long_noise"), by_draw[draw])
    offsets = {d: offset_in_file(sig, wav) for d, sig in by_draw.items()}
    assert None not in offsets.values() and len(set(offsets.values())) == 3
    for sig in by_draw.values():
        assert sig.shape == (SILENCE_CROP_SAMPLES,)

    # A resumed run builds its datasets anew: draw 7 reads draw 7's crop again.
    resumed = prepared(data_folder, tmp_path)["train"]
    resumed.random_crops.draw = 7
    assert torch.equal(silence_sig(resumed, "long_noise"), by_draw[7])
    # Another seed, another crop.
    other_seed = prepared(data_folder, tmp_path, seed=7)["train"]
    other_seed.random_crops.draw = 7
    assert offset_in_file(silence_sig(other_seed, "long_noise"), wav) != offsets[7]


def test_dev_crops_are_the_same_at_every_evaluation(data_folder, tmp_path):
    datasets = prepared(data_folder, tmp_path)
    dev = datasets["dev"]
    assert not dev.random_crops.per_draw and datasets["test"].random_crops is None
    wav = str(data_folder / TRAIN_FOLDER / "_background_noise_" / "long_noise.wav")
    first = silence_sig(dev, "long_noise")
    datasets["train"].random_crops.draw = 5  # a later draw changes nothing in dev
    assert torch.equal(silence_sig(dev, "long_noise"), first)
    assert torch.equal(silence_sig(prepared(data_folder, tmp_path)["dev"], "long_noise"), first)
    assert first.shape == (SILENCE_CROP_SAMPLES,) and offset_in_file(first, wav) is not None
    # Dev's crop is not one of training's (another key), though both are seeded.
    datasets["train"].random_crops.draw = 1
    assert not torch.equal(silence_sig(datasets["train"], "long_noise"), first)


def test_a_file_shorter_than_the_crop_is_read_whole(data_folder, tmp_path):
    train = prepared(data_folder, tmp_path)["train"]
    train.random_crops.draw = 1
    sig = silence_sig(train, "short_noise")
    wav = data_folder / TRAIN_FOLDER / "_background_noise_" / "short_noise.wav"
    assert torch.equal(sig, torch.from_numpy(soundfile.read(wav, dtype="float32")[0]))


def test_a_resampled_noise_file_is_cropped_at_16khz(data_folder, tmp_path):
    noise = data_folder / TRAIN_FOLDER / "_background_noise_" / "long_noise.wav"
    write_wav(noise, seconds=3.0, rate=8000)
    train = prepared(data_folder, tmp_path)["train"]
    train.random_crops.draw = 1
    assert silence_sig(train, "long_noise").shape == (SILENCE_CROP_SAMPLES,)


# ---------------------------------------------------------------------- the Brain
def make_brain(encoder, data_folder, output_root, cache_features=True, layer_norm=False,
               num_workers=0):
    """A KS ``UtteranceBrain`` on the tiny tree, and its datasets (inputs chosen)."""
    from rewire_lobes.downstream.utterance import UtteranceBrain

    brain, _, datasets = ks_brain_in_process(
        UtteranceBrain, encoder, data_folder, output_root, fraction=1.0, max_steps=10,
        eval_every_steps=5, batch_size=8, cache_features=cache_features,
        layer_norm=layer_norm, num_workers=num_workers)
    brain.use_cached_features(datasets)
    return brain, datasets


def test_each_draw_gets_its_crop_in_the_loader_workers(tiny_encoder, data_folder, tmp_path):
    brain, datasets = make_brain(tiny_encoder(), data_folder, tmp_path, cache_features=False,
                                 num_workers=1)
    loader = brain.make_dataloader(datasets["train"], sb.Stage.TRAIN,
                                   **brain.hparams.train_dataloader_opts)
    reference = prepared(data_folder, tmp_path / "reference")["train"]  # read without gain
    gain = 10.0 ** (brain.hparams.gain_db / 20.0)
    batch_size = brain.hparams.train_dataloader_opts["batch_size"]
    crops = []
    for round_index in (2, 3):
        brain.on_stage_start(sb.Stage.TRAIN, round_index)
        keys = list(brain.step_sampler)  # (index, draw) in loader order
        for b, batch in enumerate(loader):  # read in a worker process
            for row, data_id in enumerate(batch.id):
                if data_id == "_silence_/train/long_noise":
                    reference.random_crops.draw = keys[b * batch_size + row][1]
                    expected = silence_sig(reference, "long_noise")
                    sig = batch.sig.data[row, : SILENCE_CROP_SAMPLES]
                    torch.testing.assert_close(sig, expected * gain)
                    crops.append(expected)
    assert len(crops) >= 2
    assert len({tuple(crop[:8].tolist()) for crop in crops}) == len(crops)  # one per draw


# A group-norm wav2vec2's hidden states come out of a layer norm already; a layer-norm
# (lv60-style) encoder's do not, so only there does --layer_norm change the logits.
@pytest.mark.parametrize("norm,layer_norm", [("group", False), ("layer", False), ("layer", True)])
def test_cached_mode_encodes_crops_as_on_the_fly_mode(tiny_encoder, data_folder, tmp_path,
                                                      norm, layer_norm):
    encoder = tiny_encoder("wav2vec2", norm)
    cached, cached_sets = make_brain(encoder, data_folder, tmp_path / "cached", True, layer_norm)
    on_the_fly, fly_sets = make_brain(encoder, data_folder, tmp_path / "fly", False, layer_norm)
    torch.manual_seed(0)
    torch.nn.init.normal_(cached.modules.featurizer.weights)
    on_the_fly.modules.featurizer.load_state_dict(cached.modules.featurizer.state_dict())
    on_the_fly.modules.head.load_state_dict(cached.modules.head.state_dict())

    for split, stage in (("train", sb.Stage.TRAIN), ("dev", sb.Stage.VALID)):
        batches = []
        for brain, datasets in ((cached, cached_sets), (on_the_fly, fly_sets)):
            dataset = datasets[split]
            brain.on_stage_start(stage, 4)
            # Words, both noise files (a 1 s crop and a short file read whole), and the
            # first crop again (in training: the same draw, as DrawKeyed would give it).
            ids = [i for i in dataset.data_ids if not i.startswith("_silence_")][:3]
            ids += [f"_silence_/{split}/long_noise", f"_silence_/{split}/short_noise",
                    f"_silence_/{split}/long_noise"]
            items = []
            for data_id, draw in zip(ids, [0, 1, 2, 3, 4, 3]):
                if split == "train":
                    dataset.random_crops.draw = draw
                items.append(dataset[dataset.data_ids.index(data_id)])
            batch = PaddedBatch(items)
            with torch.no_grad():
                batches.append(brain.compute_forward(batch, stage))
        assert cached.crop_counts[f"{split}_draws"] == 3
        assert cached.crop_counts[f"{split}_encoded"] == 2  # the repeated crop once
        assert not torch.equal(batches[0][3], batches[0][4])
        torch.testing.assert_close(batches[0], batches[1], rtol=1e-4, atol=1e-5)
