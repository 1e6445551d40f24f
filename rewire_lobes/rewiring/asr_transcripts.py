"""Transcripts for audio that has none: a greedy-CTC ASR pass, cached.

Neutral and Mixed rewiring read each utterance's transcript aloud (the TTS positive); for
a user's own audio the paper (footnote 2) transcribes it with an ASR first. A transcriber
is one of

* a finished run folder of this project's ASR recipe (``recipes/ASR``): its encoder
  (``upstream_source``), featurizer and BLSTM-CTC head at the best dev checkpoint
  (``results.json``'s ``best_step``, the one its test was decoded at), greedy CTC and the
  run's tokenizer, as the recipe decodes dev and test;
* a local transformers CTC model directory (``Wav2Vec2ForCTC`` or another
  ``AutoModelForCTC``, with its ``Wav2Vec2Processor``): per-frame arg-max, then the
  tokenizer's ``batch_decode``.

:func:`transcribe_cached` keeps the texts in one JSON file per transcriber, keyed by each
audio file's path, size and modification time, so that a rerun, or another rewiring run,
transcribes only what it has not seen, and a changed file is transcribed again.
"""

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.data_utils import batch_pad_right

from rewire_lobes.data.audio import SAMPLE_RATE, AudioError, load_audio
from rewire_lobes.downstream.ctc import add_head, build_tokenizer
from rewire_lobes.downstream.ctc_decoding import greedy_ctc
from rewire_lobes.errors import DataFolderError, OptionError
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.runs.cli import encoder_fingerprint
from rewire_lobes.text.subwords import SubwordTokenizer
from rewire_lobes.upstream.encoder import quiet_transformers, uses_layer_norm_extractor

logger = logging.getLogger(__name__)

# A killed pass loses at most this much work; each write rewrites the whole file.
FLUSH_SECONDS = 30.0


class UnfinishedRunError(DataFolderError):
    """An ASR run folder without ``results.json``: it has no best checkpoint yet."""


class Transcriber:
    """Texts of 16 kHz waveforms from ``decode_batch(padded [B, N], relative lengths [B])``.

    ``identity`` (JSON-able: ``kind``, ``source``, ``content_hash`` ...) names the model and
    keys the cache. A model whose output depends on the padding (a group-norm CNN
    front-end, data2vec-audio) is given one utterance at a time.
    """

    def __init__(self, identity, decode_batch, device="cpu", pads_exactly=True):
        self.identity = identity
        self.decode_batch = decode_batch
        self.device = torch.device(device)
        self.pads_exactly = pads_exactly

    def transcribe(self, wavs):
        """One normalised text per 1-D float32 waveform of ``wavs`` (16 kHz)."""
        if not self.pads_exactly:
            return [text for wav in wavs for text in self._decode([wav])]
        return self._decode(wavs) if wavs else []

    def _decode(self, wavs):
        padded, lengths = batch_pad_right([torch.as_tensor(w, dtype=torch.float32) for w in wavs])
        with torch.no_grad():
            texts = self.decode_batch(padded.to(self.device), lengths.to(self.device))
        return [" ".join(text.split()) for text in texts]


def load_transcriber(source, device="cpu"):
    """The :class:`Transcriber` of an ASR run folder or a transformers CTC model directory.

    Arguments
    ---------
    source : str or Path
        A finished run folder of ``recipes/ASR`` (``run_identity.json``, ``results.json``,
        ``hyperparams.yaml``, ``save/``; its encoder still at its ``upstream_source``), or
        a local directory that ``AutoModelForCTC`` and ``Wav2Vec2Processor`` load. Hub ids
        are refused (:class:`OptionError`), an unfinished run too
        (:class:`UnfinishedRunError`).
    device : str
        Where the model runs, e.g. ``"cuda:0"``.
    """
    folder = Path(str(source)).expanduser()
    if (folder / "run_identity.json").is_file():
        return _run_transcriber(folder.resolve(), device)
    if (folder / "config.json").is_file():
        return _transformers_transcriber(folder.resolve(), device)
    raise OptionError(
        f"{source}: neither a run folder of recipes/ASR (run_identity.json) nor a local "
        "transformers CTC model directory (config.json, weights, vocab.json, "
        "preprocessor_config.json); hub ids are not fetched: save the model with "
        "save_pretrained on a machine with network access and pass that folder")


def _run_transcriber(folder, device):
    hparams, best_step = _load_run_hparams(folder)
    unit_file = folder / "tokenizer" / "units.model"  # where build_tokenizer keeps it
    if hparams["unit"] != "sentencepiece":
        tokenizer = build_tokenizer(hparams, None)
    elif unit_file.is_file():  # build_tokenizer would want the training set to read it
        tokenizer = SubwordTokenizer(unit_file)
    else:
        raise DataFolderError(f"{unit_file}: the run's SentencePiece model is missing")
    head = add_head(hparams, tokenizer)
    checkpointer = hparams["checkpointer"]
    checkpoint = checkpointer.find_checkpoint(
        ckpt_predicate=lambda ckpt: ckpt.meta.get("step") == best_step)
    if checkpoint is None:
        raise DataFolderError(f"{folder / 'save'}: no checkpoint of update {best_step}, the best "
                              "dev checkpoint results.json names")
    checkpointer.load_checkpoint(checkpoint)
    upstream, featurizer = hparams["upstream"], hparams["featurizer"]
    for module in (upstream, featurizer, head):
        module.to(device).eval()
    gain = 10.0 ** (float(hparams["gain_db"]) / 20.0)

    def decode_batch(wavs, wav_lens):  # CTCBrain.compute_forward at a non-training stage
        hidden, frame_lens = upstream(wavs * gain, wav_lens)
        log_probs = F.log_softmax(head(featurizer(hidden), frame_lens).float(), dim=-1)
        return [tokenizer.decode(ids)[1]
                for ids in greedy_ctc(log_probs, frame_lens, tokenizer.blank_index)]

    files = [checkpoint.path / "featurizer.ckpt", checkpoint.path / "head.ckpt"]
    files += [unit_file] if hparams["unit"] == "sentencepiece" else []
    identity = {"kind": "asr_run", "source": str(folder), "best_step": best_step,
                "checkpoint": checkpoint.path.name, "unit": hparams["unit"],
                "gain_db": float(hparams["gain_db"]),
                "content_hash": files_hash(files, encoder_fingerprint(hparams["upstream_source"]))}
    return Transcriber(identity, decode_batch, device)


def _load_run_hparams(folder):
    """The run's hyperparameters (its encoder checked unchanged) and best dev update."""
    results_file = folder / "results.json"
    if not results_file.is_file():
        raise UnfinishedRunError(
            f"{folder}: no results.json, so its training did not finish and there is no best "
            "checkpoint to transcribe with; rerun the recipe with the same options to finish it")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    if results.get("task") != "ASR":
        raise OptionError(f"{folder}: a {results.get('task')} run; transcripts need an ASR run")
    overrides = {"__set_seed": None,  # loading must not reseed the caller's generators
                 "checkpointer": {"checkpoints_dir": str(folder / "save")}}
    with open(folder / "hyperparams.yaml", encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides, overrides_must_match=False)
    run_identity = json.loads((folder / "run_identity.json").read_text(encoding="utf-8"))
    trained_with = run_identity.get("encoder_fingerprint")
    fingerprint = encoder_fingerprint(hparams["upstream_source"])
    if trained_with and fingerprint != trained_with:
        raise OptionError(f"{folder}: its encoder {hparams['upstream_source']} has changed "
                          f"since the run (fingerprint {fingerprint[:8]}, trained with "
                          f"{trained_with[:8]})")
    return hparams, results["best_step"]


def _transformers_transcriber(folder, device):
    import transformers

    try:
        with quiet_transformers():
            processor = transformers.Wav2Vec2Processor.from_pretrained(str(folder))
            model = transformers.AutoModelForCTC.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as err:
        raise OptionError(f"{folder}: not a transformers CTC model directory with its processor "
                          f"(config.json, weights, vocab.json, preprocessor_config.json): {err}"
                          ) from err
    rate = processor.feature_extractor.sampling_rate
    if rate != SAMPLE_RATE:
        raise OptionError(f"{folder}: a model of {rate} Hz audio; transcripts are made at 16 kHz")
    model.to(device).eval()
    blank = processor.tokenizer.pad_token_id  # the CTC blank of Wav2Vec2CTCTokenizer

    def decode_batch(wavs, wav_lens):
        sample_lens = torch.round(wav_lens * wavs.shape[1]).long()
        inputs = processor.feature_extractor(
            [wav[:n].cpu().numpy() for wav, n in zip(wavs, sample_lens)],
            sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True,
            return_tensors="pt").to(device)
        ids = model(**inputs).logits.argmax(dim=-1)
        frames = model._get_feat_extract_output_lengths(sample_lens).to(ids.device)
        # Padded frames become blanks: a short utterance reads as if it were alone.
        ids[torch.arange(ids.shape[1], device=ids.device)[None, :] >= frames[:, None]] = blank
        return processor.batch_decode(ids)

    config = model.config
    identity = {"kind": "transformers_ctc", "source": str(folder),
                "content_hash": files_hash(sorted(p for p in folder.iterdir() if p.is_file()))}
    exact = uses_layer_norm_extractor(config) and config.model_type != "data2vec-audio"
    return Transcriber(identity, decode_batch, device, pads_exactly=exact)


def files_hash(paths, prefix=""):
    """sha256 over ``prefix`` and each file's name and bytes."""
    digest = hashlib.sha256(prefix.encode())
    for path in paths:
        digest.update(f"\0{Path(path).name}\0".encode())
        with open(path, "rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def cache_file(cache_folder, identity):
    """The JSON file that holds the texts of the transcriber ``identity``."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_folder) / f"{key}.json"


def audio_fingerprint(path):
    """``<resolved path>|<size>|<mtime_ns>``: a changed file gets a new one."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


def _read_cache(path, identity):
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        logger.warning("%s: unreadable transcript cache, starting afresh (%s)", path, err)
        return {}
    return dict(record.get("texts", {})) if record.get("identity") == identity else {}


def _write_cache(path, identity, texts):
    """Merges ``texts`` into what is on disk (another run may have added some) and writes."""
    merged = {**_read_cache(path, identity), **texts}
    write_json_atomic(path, {"identity": identity, "texts": merged})


def transcribe_cached(rows, transcriber, cache_folder, batch_size=8):
    """``{ID: text}`` of ``rows``, read from and written to the cache as it goes.

    Arguments
    ---------
    rows : list of dict
        Each with ``ID`` and ``wav`` (an audio file, read whole as mono 16 kHz).
    transcriber : Transcriber
        From :func:`load_transcriber`; its ``identity`` names the cache file.
    cache_folder : str or Path
        Holds one ``<hash of the identity>.json`` per transcriber.
    batch_size : int
        Utterances per forward pass.

    Returns
    -------
    dict
        One line of single-spaced text per ID. An utterance whose audio cannot be read, or
        whose transcription raises, gets ``""`` (logged with its ID, not cached): the
        caller counts and drops empty texts.
    """
    path = cache_file(cache_folder, transcriber.identity)
    cached = _read_cache(path, transcriber.identity)
    texts, pending, fresh, hits = {}, [], {}, 0
    for row in rows:
        try:
            key = audio_fingerprint(row["wav"])
        except OSError as err:
            logger.warning("%s: cannot read %s (%s); no transcript", row["ID"], row["wav"], err)
            texts[row["ID"]] = ""
            continue
        if key in cached:
            texts[row["ID"]], hits = cached[key], hits + 1
        else:
            pending.append((int(key.rsplit("|", 2)[1]), row["ID"], row["wav"], key))
    logger.info("Transcripts: %d of %d utterances found in %s, %d to transcribe", hits,
                len(rows), path, len(pending))
    pending.sort()  # by file size: similar lengths, little padding
    written = time.monotonic()
    for start in range(0, len(pending), batch_size):
        batch = []
        for _, data_id, wav_path, key in pending[start:start + batch_size]:
            try:
                batch.append((data_id, key, load_audio(wav_path)))
            except AudioError as err:
                logger.warning("%s: %s; no transcript", data_id, err)
                texts[data_id] = ""
        for (data_id, key, _), text in zip(batch, _transcribe_batch(transcriber, batch)):
            texts[data_id] = "" if text is None else text
            if text is not None:
                fresh[key] = text
        if time.monotonic() - written >= FLUSH_SECONDS or start + batch_size >= len(pending):
            _write_cache(path, transcriber.identity, fresh)
            written = time.monotonic()
            logger.info("Transcribed %d of %d utterances", min(start + batch_size, len(pending)),
                        len(pending))
    return texts


def _transcribe_batch(transcriber, batch):
    """The texts of ``batch`` items, None for one whose transcription raised."""
    try:
        return transcriber.transcribe([wav for _, _, wav in batch])
    except Exception:  # then one at a time, to name the one that fails
        texts = []
        for data_id, _, wav in batch:
            try:
                texts.extend(transcriber.transcribe([wav]))
            except Exception as err:
                logger.warning("%s: transcription failed (%s: %s); no transcript",
                               data_id, type(err).__name__, err)
                texts.append(None)
        return texts
