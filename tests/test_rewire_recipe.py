"""The rewiring recipe: manifest and subset, YAMLs and profiles, run folders, CNN gradients,
resume and export."""

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "rewire"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(RECIPE))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(RECIPE))
    return module


prepare = _load("rewire_librispeech_prepare", RECIPE / "librispeech_prepare.py")
train_script = _load("rewire_train", RECIPE / "train.py")
NEUTRAL_REPORT = train_script.NEUTRAL_REPORT


def make_librispeech(root, transcripts=None, long_utterance=True, seconds=(0.4, 0.9)):
    """A LibriSpeech-layout folder of noise 'utterances' (two speakers, one chapter each)."""
    split = Path(root) / "train-clean-100"
    rng = np.random.default_rng(0)
    words = transcripts or ["HELLO WORLD", "GOOD MORNING", "A B C", "IT'S FINE", "NO WAY",
                            "THANK YOU", "SEE YOU", "ONE TWO"]
    for speaker in ("11", "22"):
        chapter = split / speaker / "100"
        chapter.mkdir(parents=True, exist_ok=True)
        lines = []
        for index, text in enumerate(words):
            utt = f"{speaker}-100-{index:04d}"
            length = int(16000 * rng.uniform(*seconds))
            if long_utterance and speaker == "22" and index == 0:
                length = 180_001  # over the paper's limit: left out
            soundfile.write(chapter / f"{utt}.flac", 0.1 * rng.standard_normal(length), 16000)
            lines.append(f"{utt} {text}")
        (chapter / f"{speaker}-100.trans.txt").write_text("\n".join(lines) + "\n")
    return str(root)


# ------------------------------------------------------------------------------ prepare


def test_prepare_filters_subsets_and_is_idempotent(tmp_path):
    data = make_librispeech(tmp_path / "LibriSpeech")
    csv_path = prepare.prepare_librispeech_rewire(data, tmp_path / "out")
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "ID,duration,wav,spk_id,wrd" and len(rows) == 1 + 15
    assert "22-100-0000" not in csv_path.read_text()
    assert "11-100-0003,0." in csv_path.read_text() and ",IT'S FINE" in csv_path.read_text()
    subset_file = tmp_path / "out" / prepare.SUBSET_NAME
    assert prepare.read_subset(subset_file) == [row.split(",")[0] for row in rows[1:]]

    stamp = csv_path.stat().st_mtime_ns
    prepare.prepare_librispeech_rewire(data, tmp_path / "out")
    assert csv_path.stat().st_mtime_ns == stamp, "same options: the CSV is kept"

    prepare.prepare_librispeech_rewire(data, tmp_path / "out", max_utterances=5, seed=3,
                                       subset="random")
    subset = csv_path.read_text().splitlines()[1:]
    assert len(subset) == 5
    assert prepare.read_subset(subset_file) == [row.split(",")[0] for row in subset]
    prepare.prepare_librispeech_rewire(data, tmp_path / "again", max_utterances=5, seed=3,
                                       subset="random")
    assert (tmp_path / "again" / "train.csv").read_text().splitlines()[1:] == subset
    prepare.prepare_librispeech_rewire(data, tmp_path / "other", max_utterances=5, seed=4,
                                       subset="random")
    assert (tmp_path / "other" / "train.csv").read_text().splitlines()[1:] != subset

    assert prepare.prepare_librispeech_rewire("/nonexistent", tmp_path / "skip", skip_prep=True)
    assert not (tmp_path / "skip" / "train.csv").exists()
    with pytest.raises(ValueError, match="--subset"):
        prepare.prepare_librispeech_rewire(data, tmp_path / "bad", subset="longest")


def test_the_shortest_subset_keeps_the_n_shortest_ties_broken_by_id(tmp_path):
    from rewire_lobes.data.audio import audio_info

    data = make_librispeech(tmp_path / "LibriSpeech")
    samples = {}
    for flac in Path(data).glob("train-clean-100/*/*/*.flac"):
        frames, _, _ = audio_info(flac)
        if frames <= 180_000:
            samples[flac.stem] = frames
    expected = sorted(sorted(samples, key=lambda uid: (samples[uid], uid))[:6])
    csv_path = prepare.prepare_librispeech_rewire(data, tmp_path / "out", max_utterances=6)
    kept = [row.split(",")[0] for row in csv_path.read_text().splitlines()[1:]]
    assert kept == expected and prepare.read_subset(tmp_path / "out" / prepare.SUBSET_NAME) == kept
    assert max(samples[uid] for uid in kept) <= min(
        samples[uid] for uid in samples if uid not in kept)
    # the default rule is shortest: not a seeded draw
    assert prepare.prepare_librispeech_rewire(data, tmp_path / "seed", max_utterances=6,
                                              seed=99).read_text() == csv_path.read_text()

    # Equal lengths: the lowest utterance IDs, the same on every machine.
    ties = make_librispeech(tmp_path / "Ties", long_utterance=False, seconds=(0.5, 0.5))
    tied = prepare.prepare_librispeech_rewire(ties, tmp_path / "ties", max_utterances=3)
    assert [row.split(",")[0] for row in tied.read_text().splitlines()[1:]] == [
        "11-100-0000", "11-100-0001", "11-100-0002"]


def test_prepare_generates_the_mini_corpus_only_for_the_embedded_default(
        tmp_path, monkeypatch, mini_corpus):
    from rewire_lobes.errors import DataFolderError, UserError
    from rewire_lobes.runs.defaults import repo_path

    calls = []

    def ensure_mini_corpus(output_folder=None, corpora=None):
        calls.append((str(output_folder), corpora))  # the real corpus is already there

    fake = types.ModuleType("rewire_lobes.data.mini_corpus")
    fake.ensure_mini_corpus = ensure_mini_corpus
    monkeypatch.setitem(sys.modules, "rewire_lobes.data.mini_corpus", fake)

    with pytest.raises(DataFolderError, match="--data_folder") as error:
        prepare.prepare_librispeech_rewire(tmp_path / "missing", tmp_path / "out")
    assert isinstance(error.value, UserError) and not calls, "a user's folder is never generated"
    with pytest.raises(DataFolderError, match="split"):
        prepare.prepare_librispeech_rewire(tmp_path, tmp_path / "out")

    monkeypatch.chdir(tmp_path)  # the embedded default is found from anywhere
    csv_path = prepare.prepare_librispeech_rewire("data/mini/LibriSpeech", tmp_path / "out")
    assert calls == [(str(repo_path("data/mini")), ["librispeech"])]
    assert len(csv_path.read_text().splitlines()) > 10
    assert str(repo_path("data/mini/LibriSpeech")) in csv_path.read_text()


# ------------------------------------------------------------------------------ YAMLs and folders


def _settings(path):
    """Non-comment lines of a YAML, without the keys that differ between strategies."""
    lines = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key = line.split(":")[0]
        if key not in ("strategy", "max_steps"):
            lines[len(lines)] = line
    return lines


def test_the_four_yamls_differ_only_in_strategy_and_max_steps():
    twin = _settings(REPO / "hparams" / "twin.yaml")
    for name in ("neutral", "mixed", "perturb"):
        assert twin == _settings(REPO / "hparams" / f"{name}.yaml"), name
    assert train_script.PAPER_UPDATES == {"twin": 1700, "neutral": 11600, "mixed": 5000}
    # Perturb is ours: the paper gives no budget; it gets Mixed's.
    for name, steps in {**train_script.PAPER_UPDATES, "perturb": 5000}.items():
        text = (REPO / "hparams" / f"{name}.yaml").read_text()
        assert f"\nstrategy: {name}\n" in text
        assert f"\nmax_steps: {steps} " in text
    twin_text = (REPO / "hparams" / "twin.yaml").read_text()
    for key in ("output_folder", "data_folder", "upstream_source", "max_steps", "batch_size",
                "seed", "run_profile", "embedded_profile", "run_identity_keys"):
        assert f"\n{key}:" in twin_text, key
    assert "embedded_data_folder" not in twin_text and "full_scale_max_steps" not in twin_text


def load(yaml, *args):
    """The recipe's hparams (profile applied, run folder claimed), without training."""
    hparams, *_ = train_script.load_hparams([str(REPO / "hparams" / yaml), *map(str, args)])
    return hparams


@pytest.mark.parametrize("strategy", ["twin", "neutral", "mixed"])
def test_a_real_run_gets_the_papers_values_with_no_flag(tmp_path, tiny_encoder, strategy):
    data = make_librispeech(tmp_path / "LibriSpeech")  # outside data/mini
    hparams = load(f"{strategy}.yaml", "--data_folder", data,
                   "--upstream_source", tiny_encoder(), "--output_folder", tmp_path / "run")
    assert hparams["run_profile"] == "paper"
    assert hparams["lr"] == 1e-6 and hparams["opt_class"].keywords["lr"] == 1e-6
    assert hparams["max_steps"] == hparams["optimizer_step_limit"] == {
        "twin": 1700, "neutral": 11600, "mixed": 5000}[strategy]
    assert hparams["ckpt_interval_steps"] == 200
    # the paper's method: all parameters trained, random batches, the shortest 6.6k
    assert hparams["freeze_feature_encoder"] is False
    assert hparams["encoder_factory"].keywords["freeze_feature_encoder"] is False
    assert hparams["bucket_batches"] in (None, 0)
    assert hparams["subset"] == "shortest" and hparams["max_utterances"] == 6600
    assert hparams["max_failed_fraction"] == 0.01
    identity = json.loads((tmp_path / "run" / "run_identity.json").read_text())
    assert identity["run_profile"] == "paper" and identity["lr"] == 1e-6
    assert identity["tts_voice"] == "kal_diphone" and identity["precision"] == "fp32"
    # On a CPU the views go through the encoder one at a time (faster there), on CUDA in one.
    assert identity["forward_chunk_size"] == hparams["forward_chunk_size"] == 1
    assert "max_steps" not in identity
    for key in ("encoder_masking", "bucket_batches", "grad_cache_chunk_size",
                "gradient_checkpointing", "subset", "freeze_feature_encoder",
                "encoder_fingerprint", "data_folder", "world_size"):
        assert key in identity, key


def test_the_embedded_default_gets_the_embedded_profile(tmp_path, tiny_encoder):
    common = ["--upstream_source", tiny_encoder(), "--output_root", tmp_path]
    hparams = load("twin.yaml", *common, "--output_folder", tmp_path / "a")  # data/mini
    assert hparams["run_profile"] == "embedded" and "mini corpus" in hparams["profile_reason"]
    assert (hparams["lr"], hparams["max_steps"], hparams["ckpt_interval_steps"]) == (1e-4, 120, 40)
    assert hparams["optimizer_step_limit"] == 120 and hparams["freeze_feature_encoder"] is True
    # the command line wins over the profile; --run_profile forces one
    given = load("twin.yaml", *common, "--output_folder", tmp_path / "b", "--lr", 3e-5)
    assert (given["lr"], given["max_steps"]) == (3e-5, 120)
    forced = load("twin.yaml", *common, "--output_folder", tmp_path / "c", "--run_profile", "paper")
    assert (forced["lr"], forced["max_steps"]) == (1e-6, 1700)
    assert forced["freeze_feature_encoder"] is False  # the paper rewires the CNN too
    assert forced["profile_reason"] == "requested with --run_profile"


def test_a_rerun_with_other_settings_is_refused_naming_them(tmp_path, tiny_encoder):
    from rewire_lobes.errors import UserError
    from rewire_lobes.runs.identity import RunFolderError

    common = ["--upstream_source", tiny_encoder(), "--output_folder", tmp_path / "run"]
    load("twin.yaml", *common)
    load("twin.yaml", *common)  # the same run: resumes
    load("twin.yaml", *common, "--max_steps", 40)  # a larger budget continues the same run
    with pytest.raises(RunFolderError, match=r"lr: 0\.0001 -> 2e-05") as error:
        load("twin.yaml", *common, "--lr", 2e-5)
    assert isinstance(error.value, UserError)
    with pytest.raises(RunFolderError, match="bucket_batches"):
        load("twin.yaml", *common, "--bucket_batches", 16)
    with pytest.raises(RunFolderError, match="subset"):
        load("twin.yaml", *common, "--subset", "random")
    with pytest.raises(RunFolderError, match="forward_chunk_size: 1 -> None"):
        load("twin.yaml", *common, "--forward_chunk_size", "null")
    with pytest.raises(UserError, match="--forward_chunk_size must be auto, null or a positive"):
        load("twin.yaml", *common, "--forward_chunk_size", 0)


def test_random_batches_by_default_length_buckets_as_an_option():
    from rewire_lobes.rewiring.batching import LengthBucketBatchSampler

    lengths = list(range(40))
    random_batches = list(LengthBucketBatchSampler(lengths, 4, None, seed=1))
    assert random_batches == list(LengthBucketBatchSampler(lengths, 4, 0, seed=1))
    assert not LengthBucketBatchSampler(lengths, 4, 1, seed=1).bucketed
    bucketed = LengthBucketBatchSampler(lengths, 4, 10, seed=1)
    assert bucketed.bucketed and list(bucketed) != random_batches
    spread = [max(b) - min(b) for b in random_batches]
    assert sum(spread) / len(spread) > 8, "random batches mix lengths"
    with pytest.raises(ValueError, match="bucket_batches"):
        LengthBucketBatchSampler(lengths, 4, -1)


def _views(count=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3200 + 800 * i, generator=generator) for i in range(count)]


def _loss_and_grads(upstream, views):
    from rewire_lobes.rewiring.contrastive import encode_views, global_info_nce, pool_utterances

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    upstream.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same draws of the dropouts that dropout=0.0 leaves on
    embeddings = encode_views(encode, views)
    half = len(views) // 2
    loss = global_info_nce(embeddings[:half], embeddings[half:], 0.04)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in upstream.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_cnn_gets_gradients_by_default(tmp_path, tiny_encoder, norm):
    """The paper's profile rewires the CNN front-end too (the embedded one keeps it fixed)."""
    from rewire_lobes.upstream.encoder import trainable_parameters

    source = tiny_encoder(feat_extract_norm=norm)
    hparams = load("twin.yaml", "--upstream_source", source, "--output_folder", tmp_path / "run",
                   "--run_profile", "paper")
    upstream = hparams["encoder_factory"](source, dropout=0.0).train()
    trainable = trainable_parameters(upstream)
    names = {id(p): n for n, p in upstream.named_parameters()}
    trained = {names[id(p)] for p in trainable}
    cnn = {n for n in names.values() if ".feature_extractor." in f".{n}"}
    assert cnn and cnn <= trained, "the CNN front-end is rewired"
    assert {n for n in names.values() if "masked_spec_embed" not in n} == trained, (
        "every parameter but masked_spec_embed (encoder masking is off)")
    loss, grads = _loss_and_grads(upstream, _views())
    assert set(grads) == trained, "every trained parameter gets a gradient"
    first_conv = next(n for n in grads if "conv_layers.0.conv.weight" in n)
    assert grads[first_conv].abs().sum() > 0

    # Gradient checkpointing (the CNN's conv layers too) gives the same gradients.
    checkpointed = hparams["encoder_factory"](source, dropout=0.0, gradient_checkpointing=True)
    checkpointed.train()
    assert all(layer.gradient_checkpointing
               for layer in checkpointed.model.feature_extractor.conv_layers)
    assert all(layer.gradient_checkpointing for layer in checkpointed.model.encoder.layers)
    trainable_parameters(checkpointed)
    loss_ckpt, grads_ckpt = _loss_and_grads(checkpointed, _views())
    assert loss_ckpt == pytest.approx(loss, rel=1e-5) and set(grads_ckpt) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    # With the encoder's own masking on, masked_spec_embed is read and trained too.
    masking = hparams["encoder_factory"](source, spec_augment=True)
    assert masking.config.apply_spec_augment and masking.config.mask_time_prob > 0
    assert len(trainable_parameters(masking)) == len(list(masking.parameters()))
    # --freeze_feature_encoder True, the option: the CNN is left out.
    frozen_cnn = hparams["encoder_factory"](source, freeze_feature_encoder=True)
    kept = {id(p) for p in trainable_parameters(frozen_cnn)}
    assert not any(id(p) in kept for p in frozen_cnn.model.feature_extractor.parameters())


# ------------------------------------------------------------------------------ end to end


def run_recipe(yaml, *args):
    command = [sys.executable, str(RECIPE / "train.py"), str(REPO / "hparams" / yaml),
               "--noprogressbar", "--batch_size", "2", "--log_interval", "1", *map(str, args)]
    # Logs go to stdout, tracebacks to stderr: one stream, .output, holds both.
    result = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)
    result.output = result.stdout
    return result


@pytest.mark.slow
def test_twin_recipe_resumes_and_exports(tmp_path, tiny_encoder):
    from transformers import AutoModel

    from rewire_lobes.upstream.encoder import SSLUpstream

    data = make_librispeech(tmp_path / "LibriSpeech")
    source = tiny_encoder(feat_extract_norm="layer")
    # Data and encoder outside data/mini and assets: the paper's profile (lr 1e-6).
    common = ["--data_folder", data, "--upstream_source", source,
              "--output_folder", tmp_path / "run", "--ckpt_interval_steps", "2"]
    first = run_recipe("twin.yaml", *common, "--max_steps", "2")
    assert first.returncode == 0, first.output[-3000:]
    record = json.loads((tmp_path / "run" / "upstream" / "rewiring.json").read_text())
    assert record["updates"] == 2 and len(record["loss_curve"]) == 2

    second = run_recipe("twin.yaml", *common, "--max_steps", "4")
    assert second.returncode == 0, second.output[-3000:]
    assert "Resuming from update 2" in second.output
    record2 = json.loads((tmp_path / "run" / "upstream" / "rewiring.json").read_text())
    assert record2["updates"] == 4
    assert [s for s, _ in record2["loss_curve"]] == [1, 2, 3, 4]
    assert record2["loss_curve"][:2] == record["loss_curve"], "the first updates were not redone"
    assert record2["strategy"] == "twin"
    assert record2["source_content_hash"] != record2["content_hash"]
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert "update: 4" in (tmp_path / "run" / "train_log.txt").read_text()
    assert list((tmp_path / "run" / "save").glob("CKPT+*/encoder.ckpt"))

    export = tmp_path / "run" / "upstream"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in export.iterdir()}
    rewired = AutoModel.from_pretrained(export)
    original = AutoModel.from_pretrained(source)
    assert next(rewired.parameters()).dtype == torch.float32
    assert rewired.config.to_dict()["hidden_dropout"] == original.config.to_dict()["hidden_dropout"]
    changed = [name for name, p in rewired.state_dict().items()
               if not torch.equal(p, original.state_dict()[name])]
    assert any("encoder.layers" in name for name in changed)
    assert any(name.startswith("feature_extractor") for name in changed), "the CNN is rewired"
    assert not any("masked_spec_embed" in name for name in changed)
    upstream = SSLUpstream(str(export))
    assert upstream.content_hash() == record2["content_hash"]

    # What the record says: the paper's profile (a real-looking run), its settings, the
    # subset (its ID list beside the record, and its hash), the run identity.
    assert record2["profile"] == "paper" and record2["paper_updates"] == 1700
    settings = record2["hyperparameters"]
    assert settings["lr"] == 1e-6 and settings["freeze_feature_encoder"] is False
    for key in ("encoder_masking", "bucket_batches", "grad_cache_chunk_size",
                "gradient_checkpointing", "subset"):
        assert key in settings, key
    subset_file = export / "rewiring_subset.txt"
    ids = subset_file.read_text().splitlines()
    assert len(ids) == 15 and record2["data"]["subset_utterances"] == 15
    assert record2["data"]["subset_file"] == "rewiring_subset.txt"
    assert record2["data"]["subset_sha256"] == hashlib.sha256(subset_file.read_bytes()).hexdigest()
    assert record2["data"]["subset_rule"] == "shortest" and record2["data"]["utterances"] == 15
    assert record2["neutral_failures"] is None
    identity = json.loads((tmp_path / "run" / "run_identity.json").read_text())
    assert record2["run_identity"] == identity

    # Other settings in the same folder are refused rather than resumed, on one line.
    clash = run_recipe("twin.yaml", *common, "--max_steps", "4", "--lr", "0.5")
    assert clash.returncode == 2 and "holds a run with other settings" in clash.output
    assert "lr: 1e-06 -> 0.5" in clash.output and "Traceback" not in clash.output


@pytest.mark.slow
def test_a_run_stopped_at_an_epoch_end_resumes_to_the_uninterrupted_result(tmp_path, tiny_encoder):
    """Resumed from an end-of-epoch checkpoint, the next epoch draws the same dropout masks
    as in one run (its random state was saved before that epoch's loader iterator drew)."""
    data = make_librispeech(tmp_path / "LibriSpeech")
    common = ["--data_folder", data, "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
              "--lr", "1e-3"]
    stopped = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / "resumed",
                         "--max_steps", "100", "--number_of_epochs", "1")
    assert stopped.returncode == 0, stopped.output[-3000:]
    per_epoch = json.loads((tmp_path / "resumed" / "upstream" / "rewiring.json").read_text())["updates"]
    assert 0 < per_epoch < 100

    records = {}
    for name in ("resumed", "uninterrupted"):
        run = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / name,
                         "--max_steps", str(2 * per_epoch))
        assert run.returncode == 0, run.output[-3000:]
        assert (f"Resuming from update {per_epoch}" in run.output) == (name == "resumed")
        records[name] = json.loads((tmp_path / name / "upstream" / "rewiring.json").read_text())
    assert records["resumed"]["updates"] == records["uninterrupted"]["updates"] == 2 * per_epoch
    assert records["resumed"]["loss_curve"] == records["uninterrupted"]["loss_curve"]
    assert records["resumed"]["content_hash"] == records["uninterrupted"]["content_hash"]


def test_loader_options_auto_follow_the_device_and_the_processes_per_machine(monkeypatch):
    auto = {"num_workers": "auto", "pin_memory": "auto"}
    monkeypatch.setattr(train_script.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert train_script.loader_options(auto, {"device": "cpu"}) == {
        "num_workers": 0, "pin_memory": False}
    assert train_script.loader_options(auto, {"device": "cuda:0"}) == {
        "num_workers": 4, "pin_memory": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun, 8 processes sharing 16 CPUs
    assert train_script.loader_options(auto, {"device": "cuda:3"})["num_workers"] == 2
    given = {"num_workers": 3, "pin_memory": False}
    assert train_script.loader_options(given, {"device": "cuda:0"}) == given
    with pytest.raises(train_script.OptionError, match="--pin_memory must be auto, True or False"):
        train_script.loader_options({"num_workers": 0, "pin_memory": "yes"}, {"device": "cpu"})


@pytest.mark.slow
def test_loader_workers_change_nothing_drawn_and_the_wait_is_recorded(tmp_path, tiny_encoder):
    """Two loader processes give the run of none (pairs come from per-utterance seeds,
    redrawn each epoch), and rewiring.json says how long the loop waited for audio."""
    data = make_librispeech(tmp_path / "LibriSpeech")
    common = ["--data_folder", data, "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
              "--lr", "1e-3", "--max_steps", "10"]  # 7 batches an epoch: two epochs
    records = {}
    for workers in ("0", "2"):
        run = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / workers,
                         "--num_workers", workers)
        assert run.returncode == 0, run.output[-3000:]
        assert "data_wait_share" in run.output
        records[workers] = json.loads((tmp_path / workers / "upstream" / "rewiring.json").read_text())
    assert records["0"]["loss_curve"] == records["2"]["loss_curve"]
    assert records["0"]["content_hash"] == records["2"]["content_hash"]
    for workers, record in records.items():
        loading = record["data_loading"]
        assert loading["num_workers"] == int(workers) and loading["pin_memory"] is False
        assert loading["batches"] >= 10 and 0 < loading["wait_share"] < 1
        assert loading["wait_s"] > 0 and loading["busy_s"] > 0

    bad = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / "bad",
                     "--num_workers", "many")
    assert bad.returncode == 2 and "--num_workers must be auto" in bad.output


needs_festival = pytest.mark.skipif(
    shutil.which("festival") is None, reason="festival is not installed (make system-tools)")


@pytest.mark.slow
@needs_festival
def test_neutral_recipe_counts_failed_synthesis_or_stops_over_the_limit(tmp_path, tiny_encoder):
    transcripts = ["HELLO WORLD", "...", "GOOD MORNING", "THANK YOU"]
    data = make_librispeech(tmp_path / "LibriSpeech", transcripts, long_utterance=False)
    common = ["--data_folder", data, "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
              "--neutral_folder", tmp_path / "neutral", "--max_steps", "2"]

    # 2 of 8 utterances (25 %) fail, over the default max_failed_fraction (1 %): stop.
    stopped = run_recipe("neutral.yaml", *common, "--output_folder", tmp_path / "stopped")
    assert stopped.returncode != 0
    assert "Neutral TTS failed for 2 utterances (25.00%), over max_failed_fraction 1.00%" in (
        stopped.output)
    assert "failed texts: '...'" in stopped.output
    assert str(tmp_path / "stopped" / "neutral_synthesis.json") in stopped.output
    assert not (tmp_path / "stopped" / "save").exists() or not list(
        (tmp_path / "stopped" / "save").iterdir())

    # Under the limit they are left out and counted.
    result = run_recipe("neutral.yaml", *common, "--output_folder", tmp_path / "run",
                        "--max_failed_fraction", "0.3")
    assert result.returncode == 0, result.output[-3000:]
    report = json.loads((tmp_path / "run" / "neutral_synthesis.json").read_text())
    assert list(report["failed"]) == ["..."] and report["cached"] == 3
    assert "2 of 8 utterances have no neutral audio and are left out" in result.output
    record = json.loads((tmp_path / "run" / "upstream" / "rewiring.json").read_text())
    assert record["data"]["utterances"] == 6 and record["updates"] == 2
    assert record["data"]["subset_utterances"] == 8, "the subset lists every chosen utterance"
    assert record["neutral_failures"] == {"utterances": 2, "share": 0.25, "texts": 1}
    assert record["hyperparameters"]["max_failed_fraction"] == 0.3


@pytest.mark.slow
def test_perturb_recipe_draws_the_same_pairs_in_every_run(tmp_path, tiny_encoder):
    """Praat's resynthesis draws from its own generator: seeded per utterance, two runs of
    Perturb (and a Mixed of Twin and Perturb) give the same loss curve, another seed not."""
    data = make_librispeech(tmp_path / "LibriSpeech", long_utterance=False)
    common = ["--data_folder", data, "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
              "--max_steps", "3"]
    curves = {}
    for name, yaml, extra in [("a", "perturb.yaml", []), ("b", "perturb.yaml", []),
                              ("seed", "perturb.yaml", ["--seed", "7"]),
                              ("mix", "mixed.yaml", ["--mix", "{twin: 1, perturb: 3}"])]:
        done = run_recipe(yaml, *common, *extra, "--output_folder", tmp_path / name)
        assert done.returncode == 0, done.output[-3000:]
        record = json.loads((tmp_path / name / "upstream" / "rewiring.json").read_text())
        curves[name] = record["loss_curve"]
        assert "perturb" in record["hyperparameters"]["mix"]
    assert curves["a"] == curves["b"] and curves["a"] != curves["seed"]
    assert record["strategy"] == "mixed" and record["paper_updates"] == 5000
    assert record["hyperparameters"]["mix"] == {"twin": 0.25, "perturb": 0.75}
    assert record["hyperparameters"]["perturb"]["perturb_pitch"] == [1.0, 2.0]
    assert not (tmp_path / "mix" / NEUTRAL_REPORT).exists(), "no TTS without a Neutral weight"


@pytest.mark.slow
@needs_festival
def test_transcript_hard_negatives_run_and_are_recorded(tmp_path, tiny_encoder):
    data = make_librispeech(tmp_path / "LibriSpeech", long_utterance=False)
    common = ["--data_folder", data, "--upstream_source", tiny_encoder(feat_extract_norm="layer"),
              "--neutral_folder", tmp_path / "neutral", "--max_steps", "2"]
    plain = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / "plain")
    hard = run_recipe("twin.yaml", *common, "--output_folder", tmp_path / "hard",
                      "--hard_negatives", "transcript")
    assert plain.returncode == 0 and hard.returncode == 0, hard.output[-3000:]
    records = {name: json.loads((tmp_path / name / "upstream" / "rewiring.json").read_text())
               for name in ("plain", "hard")}
    assert records["hard"]["hyperparameters"]["hard_negatives"] == "transcript"
    assert records["plain"]["hyperparameters"]["hard_negatives"] is None
    # Same pairs, more candidates in every view's denominator: a larger first loss.
    assert records["hard"]["loss_curve"][0][1] > records["plain"]["loss_curve"][0][1]
    assert (tmp_path / "hard" / NEUTRAL_REPORT).exists(), "the negatives' TTS audio"


def test_forward_chunk_size_follows_the_device():
    def resolve(size, device="cpu"):
        return train_script.run_forward_chunk_size(
            {"forward_chunk_size": size}, {"device": device})

    assert (resolve("auto"), resolve("auto", "cuda:0"), resolve(3), resolve(None)) == (
        1, None, 3, None)
