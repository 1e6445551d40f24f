"""The ASR pass that gives untranscribed audio its transcripts (Neutral/Mixed rewiring).

A tiny random ``Wav2Vec2ForCTC`` with a five-letter vocabulary stands for a user's CTC
model: its transcripts must be what transformers' own processor gives, whatever the
batch; one whose lm_head only has a bias spells a known letter. A real tiny run of the
ASR recipe (slow) must be reproduced: its dev and test hypotheses were decoded at the best
dev checkpoint.
"""

import json
import logging
import os
import random
import shutil

import numpy as np
import pytest
import soundfile
import torch
import transformers

from test_asr_sf_recipes import manifest, read_ark, run, run_folder

from rewire_lobes.data.audio import load_audio
from rewire_lobes.errors import OptionError, UserError
from rewire_lobes.rewiring import asr_transcripts
from rewire_lobes.rewiring.asr_transcripts import (
    Transcriber,
    UnfinishedRunError,
    cache_file,
    load_transcriber,
    transcribe_cached,
)
from rewire_lobes.upstream.encoder import random_encoder_config

VOCAB = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "A": 5, "B": 6, "C": 7, "D": 8,
         "E": 9}
LENGTHS = [16000, 5600, 11200, 8000, 20000, 6400]


def save_tiny_ctc(folder, norm="layer", letter=None):
    """A tiny ``Wav2Vec2ForCTC`` with its processor; ``letter``: an lm_head that always
    picks that letter (zero weights, its bias alone positive)."""
    config = random_encoder_config("tiny", "wav2vec2", norm)
    config.vocab_size, config.pad_token_id = len(VOCAB), VOCAB["<pad>"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():
        if letter is None:  # large logits, so that the arg-max changes from frame to frame
            model.lm_head.weight.mul_(50.0)
        else:
            model.lm_head.weight.zero_()
            model.lm_head.bias.zero_()
            model.lm_head.bias[VOCAB[letter]] = 1.0
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(VOCAB))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), unk_token="<unk>",
                                                  pad_token="<pad>", word_delimiter_token="|")
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
        return_attention_mask=norm == "layer")
    transformers.Wav2Vec2Processor(feature_extractor=extractor,
                                   tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory):
    made = {}

    def make(norm="layer", letter=None):
        if (norm, letter) not in made:
            folder = tmp_path_factory.mktemp("ctc") / f"{norm}-{letter}"
            made[norm, letter] = save_tiny_ctc(folder, norm, letter)
        return made[norm, letter]

    return make


def write_wavs(folder, lengths=LENGTHS, seed=0):
    """``rows`` of 16 kHz noise files, one per length."""
    generator = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, length in enumerate(lengths):
        path = folder / f"utt{index}.wav"
        soundfile.write(path, generator.normal(0, 0.1, length).astype(np.float32), 16000)
        rows.append({"ID": f"utt{index}", "wav": str(path)})
    return rows


def transformers_transcript(folder, wav):
    """What transformers' documented recipe gives for one unpadded utterance."""
    processor = transformers.Wav2Vec2Processor.from_pretrained(folder)
    model = transformers.Wav2Vec2ForCTC.from_pretrained(folder).eval()
    inputs = processor(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(dim=-1)
    return " ".join(processor.batch_decode(ids)[0].split())


def counting(transcriber):
    """Counts the utterances ``transcriber`` is asked to decode."""
    calls = []
    decode = transcriber.decode_batch

    def counted(wavs, wav_lens):
        calls.extend([len(wavs)])
        return decode(wavs, wav_lens)

    transcriber.decode_batch = counted
    return calls


# ---------------------------------------------------------------------- transformers CTC
def test_a_bias_only_head_spells_its_letter(ctc_model, tmp_path):
    folder = ctc_model(letter="C")
    wavs = [load_audio(row["wav"]) for row in write_wavs(tmp_path)]
    transcriber = load_transcriber(folder)
    assert transcriber.transcribe(wavs) == ["C"] * len(wavs)
    assert transformers_transcript(folder, wavs[0]) == "C"
    assert transcriber.identity["kind"] == "transformers_ctc"
    assert transcriber.identity["source"] == str(folder.resolve())


@pytest.mark.parametrize("norm", ["layer", "group"])
def test_transcripts_are_transformers_and_independent_of_the_batch(ctc_model, tmp_path, norm):
    folder = ctc_model(norm)
    wavs = [load_audio(row["wav"]) for row in write_wavs(tmp_path)]
    transcriber = load_transcriber(folder)
    batched = transcriber.transcribe(wavs)
    alone = [transcriber.transcribe([wav])[0] for wav in wavs]
    assert batched == alone == [transformers_transcript(folder, wav) for wav in wavs]
    assert len(set(batched)) == len(wavs)  # audio-dependent: the comparison can fail
    assert all(text == " ".join(text.split()) for text in batched)


def test_the_identity_hashes_the_model_files(ctc_model, tmp_path):
    folder = shutil.copytree(ctc_model(), tmp_path / "copy")
    before = load_transcriber(folder).identity
    json.dumps(before)
    vocab = json.loads((folder / "vocab.json").read_text())
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=1))
    assert load_transcriber(folder).identity["content_hash"] != before["content_hash"]


def test_the_cache_is_reused_and_a_changed_file_transcribed_again(ctc_model, tmp_path):
    rows = write_wavs(tmp_path / "audio")
    transcriber = load_transcriber(ctc_model())
    calls = counting(transcriber)
    first = transcribe_cached(rows, transcriber, tmp_path / "cache", batch_size=4)
    assert sum(calls) == len(rows) and set(first) == {row["ID"] for row in rows}
    assert cache_file(tmp_path / "cache", transcriber.identity).is_file()

    calls.clear()
    assert transcribe_cached(rows, transcriber, tmp_path / "cache") == first
    assert calls == []

    # utt0 rewritten at its size: only the modification time tells
    changed = write_wavs(tmp_path / "audio", lengths=LENGTHS[:1], seed=7)[0]
    stat = os.stat(changed["wav"])
    os.utime(changed["wav"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = transcribe_cached(rows, transcriber, tmp_path / "cache")
    assert calls == [1]
    assert again["utt0"] == transcriber.transcribe([load_audio(changed["wav"])])[0]
    assert {k: v for k, v in again.items() if k != "utt0"} == {
        k: v for k, v in first.items() if k != "utt0"}


def test_unreadable_audio_and_failing_transcription_give_empty_texts(tmp_path, caplog):
    rows = write_wavs(tmp_path, lengths=[8000, 9600, 11200])
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    rows += [{"ID": "broken", "wav": str(tmp_path / "broken.wav")},
             {"ID": "missing", "wav": str(tmp_path / "missing.wav")}]

    def decode(wavs, wav_lens):
        lengths = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        if 9600 in lengths:
            raise RuntimeError("out of memory")
        return [f"  length\n{n} " for n in lengths]

    transcriber = Transcriber({"kind": "fake"}, decode)
    with caplog.at_level(logging.WARNING):
        texts = transcribe_cached(rows, transcriber, tmp_path / "cache")
    assert texts == {"utt0": "length 8000", "utt1": "", "utt2": "length 11200", "broken": "",
                     "missing": ""}
    for data_id in ("utt1", "broken", "missing"):
        assert data_id in caplog.text
    cached = json.loads(cache_file(tmp_path / "cache", {"kind": "fake"}).read_text())["texts"]
    assert sorted(cached.values()) == ["length 11200", "length 8000"]


def test_a_killed_pass_resumes_from_what_it_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(asr_transcripts, "FLUSH_SECONDS", 0.0)  # after every batch
    rows = write_wavs(tmp_path, lengths=[4000 + 800 * i for i in range(7)])
    decoded = []

    def decode(wavs, wav_lens):
        if len(decoded) == 5:
            raise KeyboardInterrupt
        decoded.append(len(wavs))
        return ["x"] * len(wavs)

    transcriber = Transcriber({"kind": "fake"}, decode)
    with pytest.raises(KeyboardInterrupt):
        transcribe_cached(rows, transcriber, tmp_path / "cache", batch_size=1)
    decoded.clear()
    assert transcribe_cached(rows, transcriber, tmp_path / "cache", batch_size=1) == {
        row["ID"]: "x" for row in rows}
    assert len(decoded) == 7 - 5


@pytest.mark.parametrize("source", ["facebook/wav2vec2-base-960h", "empty", "encoder"])
def test_a_source_that_is_no_transcriber_is_refused(tmp_path, tiny_encoder, source):
    (tmp_path / "empty").mkdir()
    path = {"empty": tmp_path / "empty", "encoder": tiny_encoder()}.get(source, source)
    with pytest.raises(OptionError, match="CTC model directory"):
        load_transcriber(path)


def test_an_unfinished_run_is_refused(tmp_path):
    (tmp_path / "run_identity.json").write_text("{}")
    with pytest.raises(UnfinishedRunError, match="no results.json") as caught:
        load_transcriber(tmp_path)
    assert isinstance(caught.value, UserError)


# ---------------------------------------------------------------------- the ASR recipe
# A 20-update head is nearly untrained: its character hypotheses hold a few letters at the
# best checkpoint and none at the latest; the sub-word one says nothing yet, so that run
# checks that the run's SentencePiece model is found and used.
UNITS = {"characters": [], "sentencepiece": ["--unit", "sentencepiece",
                                              "--sentencepiece_vocab_size", "40"]}


@pytest.mark.slow
@pytest.mark.parametrize("unit", UNITS)
def test_a_run_folder_reproduces_its_dev_and_test_hypotheses(tiny_encoder, mini_corpus, tmp_path,
                                                             unit):
    shared = tmp_path / "shared"
    run("ASR", tiny_encoder(), tmp_path / "out", shared,
        "--max_steps", "20", "--eval_every_steps", "10", *UNITS[unit])
    folder = run_folder(tmp_path / "out", "ASR")
    random.seed(5)
    expected = random.random()
    random.seed(5)
    transcriber = load_transcriber(folder)
    assert random.random() == expected  # the run's seed was not applied to the caller's
    results = json.loads((folder / "results.json").read_text())
    assert transcriber.identity["best_step"] == results["best_step"]
    assert transcriber.identity["unit"] == unit
    json.dumps(transcriber.identity)
    for split in ("dev", "test"):
        texts = transcribe_cached(manifest(shared, "ASR", split), transcriber, tmp_path / "cache")
        hypotheses = read_ark(folder / f"{split}-hyp.ark")
        assert texts == hypotheses
        assert any(hypotheses.values()) or unit == "sentencepiece"
    if unit == "sentencepiece":
        return

    unfinished = shutil.copytree(folder, tmp_path / "unfinished")
    (unfinished / "results.json").unlink()
    with pytest.raises(UnfinishedRunError):
        load_transcriber(unfinished)
    # The run's encoder folder overwritten by another encoder: refused, not decoded.
    moved = shutil.copytree(folder, tmp_path / "moved")
    yaml_file = moved / "hyperparams.yaml"
    yaml_file.write_text(yaml_file.read_text().replace(
        f"upstream_source: {tiny_encoder()}", f"upstream_source: {tiny_encoder('hubert')}"))
    with pytest.raises(OptionError, match="has changed since the run"):
        load_transcriber(moved)
