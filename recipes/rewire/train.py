#!/usr/bin/env python3
"""Contrastive rewiring of a pre-trained speech encoder (Yang et al., 2022).

Rewires any encoder that ``SSLUpstream`` loads with label-free contrastive learning
(Twin, Neutral, Mixed or Perturb positive pairs, InfoNCE), on LibriSpeech or on any folder
of audio (``--audio_folder``, with ``--transcripts`` or ``--asr_source`` where text is
needed), and exports it as an encoder directory that transformers, s3prl's HF upstream and
the SUPERB recipes of this project load.

    python recipes/rewire/train.py hparams/mixed.yaml                  # embedded default
    python recipes/rewire/train.py hparams/mixed.yaml --data_folder /data/LibriSpeech \
        --upstream_source /models/wav2vec2-large-lv60                   # the paper's run
    python recipes/rewire/train.py hparams/perturb.yaml --audio_folder /my/audio  # own audio
    torchrun --nproc_per_node=4 recipes/rewire/train.py hparams/mixed.yaml ...  # DDP

The profile (``run_profile: auto``) follows the encoder and the data: the embedded
encoder or the mini corpus get the yaml's ``embedded_profile`` (a short budget), anything
else the paper's values, with no flag.

Outputs in the run folder: ``upstream/`` (the rewired encoder, ``rewiring.json`` and
``rewiring_subset.txt``), ``save/`` (checkpoints; a rerun resumes), ``train_log.txt``,
``loss_curve.png``, ``run_identity.json``.

Authors
 * rewire-speech contributors
"""

import functools
import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lobes.data.audio import SAMPLE_RATE, load_audio
from rewire_lobes.errors import DataFolderError, OptionError
from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
from rewire_lobes.rewiring.brain import RewireBrain
from rewire_lobes.rewiring.hard_negatives import nearest_transcripts
from rewire_lobes.rewiring.neutral import neutral_path, resolve_voice, tts_text
from rewire_lobes.runs.cli import (
    load_recipe_hparams,
    start_experiment,
    user_errors,
    world_size,
)
from rewire_lobes.runs.defaults import FALLBACK_NAME, is_embedded_encoder

from own_audio_prepare import REPORT_NAME as AUDIO_FOLDER_REPORT  # isort: skip
from own_audio_prepare import (  # isort: skip
    file_source,
    folder_fingerprint,
    prepare_audio_folder_rewire,
)
from librispeech_prepare import (  # sibling script  # isort: skip
    SUBSET_NAME,
    prepare_librispeech_rewire,
    read_subset,
    subset_digest,
)

logger = logging.getLogger(__name__)

# The paper's updates per strategy (§3.1, appendix B): the yamls' max_steps.
PAPER_UPDATES = {"twin": 1700, "neutral": 11600, "mixed": 5000}
GPU_LOADER_WORKERS = 4  # loader processes on CUDA with num_workers: auto
NEUTRAL_REPORT = "neutral_synthesis.json"


def on_cuda(run_opts):
    """Whether the Brain will run on a CUDA device."""
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    return str(device).startswith("cuda")


def run_precision(hparams, run_opts):
    """The precision the Brain will use: the command line's, else bf16 on CUDA, else fp32."""
    if "precision" in getattr(run_opts, "overridden_args", ()):
        return run_opts["precision"]
    return hparams["gpu_precision"] if on_cuda(run_opts) else hparams["precision"]


def run_forward_chunk_size(hparams, run_opts):
    """Views per forward pass: the yaml's or command line's, ``auto`` resolved by device
    (1 on a CPU, None = one pass on CUDA)."""
    size = hparams["forward_chunk_size"]
    if size == "auto":
        return None if on_cuda(run_opts) else 1
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise OptionError(f"--forward_chunk_size must be auto, null or a positive integer, "
                          f"got {size!r}")
    return size


def loader_options(hparams, run_opts):
    """The training DataLoader's ``num_workers`` and ``pin_memory``, ``auto`` resolved by
    device: none and unpinned on a CPU (the embedded default's audio loads in far less
    time than an update takes there); on CUDA up to ``GPU_LOADER_WORKERS`` workers per
    process (no more than its share of the CPUs) and pinned memory, so that the GPU does
    not wait for audio. Neither changes what is drawn: pairs come from per-utterance
    seeds (``utterance_rng``)."""
    cuda = on_cuda(run_opts)
    workers, pin = hparams["num_workers"], hparams["pin_memory"]
    if workers == "auto":
        # The CPUs are shared by the processes torchrun starts on this machine.
        cpus = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        workers = min(GPU_LOADER_WORKERS, max(1, cpus)) if cuda else 0
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise OptionError(f"--num_workers must be auto or an integer >= 0, got {workers!r}")
    if pin == "auto":
        pin = cuda
    if not isinstance(pin, bool):
        raise OptionError(f"--pin_memory must be auto, True or False, got {pin!r}")
    return {"num_workers": workers, "pin_memory": pin}


def identity_extras(hparams, run_opts):
    """``identity_extras`` for :func:`load_recipe_hparams`: what the yaml keys do not say
    (an audio folder's files too: a changed folder is another run, never a resumed one)."""
    extras = {
        "tts_voice": resolve_voice(hparams["tts_backend"], hparams["tts_voice"]),
        "precision": run_precision(hparams, run_opts),
        "forward_chunk_size": run_forward_chunk_size(hparams, run_opts),
        "transcripts": transcript_source(hparams, run_opts.get("device")),
    }
    if hparams["audio_folder"]:
        extras["audio_files"] = folder_fingerprint(hparams["data_folder"])
    return extras


def audio_folder_overrides(defaults, given):
    """``derived`` hook: an audio folder takes the data folder's place and tags the run
    folder's name, so that its runs and LibriSpeech ones never share a folder."""
    folder = given.get("audio_folder", defaults.get("audio_folder"))
    if not folder:
        return {}
    if "data_folder" in given:
        raise OptionError("--data_folder (LibriSpeech) and --audio_folder (any audio) "
                          "exclude each other: pass one of them")
    path = Path(str(folder)).expanduser().resolve()
    if not path.is_dir():
        raise DataFolderError(f"--audio_folder {folder}: no such folder")
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:8]
    name = re.sub(r"[^\w.-]", "_", path.name) or "audio"
    return {"data_folder": str(path), "data_tag": f"_{name}-{digest}"}


def transcript_source(hparams, device=None):
    """Where the transcripts come from, as recorded (run identity, rewiring.json): the
    corpus, a file (with its sha256) or an ASR pass (with the model's identity, for which
    the model is loaded, on ``device`` in the main process and on the CPU elsewhere)."""
    if not hparams["audio_folder"]:
        if hparams["transcripts"] or hparams["asr_source"]:
            raise OptionError("--transcripts and --asr_source are for --audio_folder: "
                              "LibriSpeech brings its own transcripts")
        return {"source": "librispeech"}
    if hparams["transcripts"] and hparams["asr_source"]:
        raise OptionError("--transcripts FILE and --asr_source DIR exclude each other: "
                          "pass one of them")
    if not hparams["pair_maker"].needs_text:
        if hparams["transcripts"] or hparams["asr_source"]:
            logger.warning("strategy %s without hard negatives reads no text: --transcripts "
                           "and --asr_source are ignored", hparams["strategy"])
        return None
    if hparams["transcripts"]:
        path = Path(hparams["transcripts"]).expanduser()
        if not path.is_file():
            raise DataFolderError(f"--transcripts {hparams['transcripts']}: no such file")
        return file_source(path)
    if hparams["asr_source"]:
        return {"source": "asr", "model": transcriber(hparams, device).identity}
    raise OptionError(
        f"strategy {hparams['strategy']} needs a transcript per utterance of "
        f"{hparams['audio_folder']}: pass --transcripts FILE (CSV/TSV or Kaldi text) or "
        "--asr_source DIR (an ASR run folder or a Wav2Vec2ForCTC directory)"
    )


@functools.lru_cache(maxsize=1)
def _load_transcriber(source, device):
    from rewire_lobes.rewiring.asr_transcripts import load_transcriber

    return load_transcriber(source, device=device)


def transcriber(hparams, device=None):
    """The ASR model of ``--asr_source``, loaded once per process (until the prepare step
    is done with it): on ``device`` (the run's) in the main process, which transcribes, and
    on the CPU in the others, which only need its identity."""
    if not if_main_process():
        device = "cpu"
    device = device or sb.utils.distributed.infer_device()
    return _load_transcriber(str(Path(hparams["asr_source"]).expanduser()), str(device))


def prepare_data(hparams, device=None):
    """The prepare step: LibriSpeech's manifest, or the audio folder's (with the
    transcripts of a file or of an ASR pass); returns the manifest's path. The ASR model
    is let go afterwards, so that it holds no memory during training."""
    common = {key: hparams[key] for key in (
        "max_samples", "max_utterances", "seed", "subset", "skip_prep")}
    common["save_folder"] = hparams["output_folder"]
    if not hparams["audio_folder"]:
        return run_on_main(prepare_librispeech_rewire, kwargs={
            **common, "data_folder": hparams["data_folder"], "splits": hparams["splits"]})
    source = hparams["run_identity"]["transcripts"] or {}
    transcribe = None
    if source.get("source") == "asr" and if_main_process():
        from rewire_lobes.rewiring.asr_transcripts import transcribe_cached

        transcribe = functools.partial(
            transcribe_cached, transcriber=transcriber(hparams, device),
            cache_folder=Path(hparams["neutral_folder"]) / "transcripts",
            batch_size=hparams["asr_batch_size"])
    try:
        return run_on_main(prepare_audio_folder_rewire, kwargs={
            **common,
            "audio_folder": hparams["data_folder"],
            "transcripts_file": source.get("path") if source.get("source") == "file" else None,
            "needs_text": hparams["pair_maker"].needs_text,
            "transcribe": transcribe,
            "transcriber_identity": source.get("model"),
        })
    finally:
        _load_transcriber.cache_clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()



def dataio_prepare(hparams, csv_path):
    """The training set (anchor and positive views per utterance) and its batch sampler."""
    data = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=str(csv_path))
    maker = hparams["pair_maker"]
    backend = hparams["tts_backend"]
    voice = resolve_voice(backend, hparams["tts_voice"])
    neutral_folder = hparams["neutral_folder"]

    def neutral_file(words):
        return neutral_path(neutral_folder, tts_text(words), backend, voice)

    if maker.needs_neutral:
        keep = {uid for uid in data.data_ids if neutral_file(data.data[uid]["wrd"]).is_file()}
        if len(keep) < len(data):
            logger.warning("%d of %d utterances have no neutral audio and are left out",
                           len(data) - len(keep), len(data))
        data = data.filtered_sorted(key_test={"id": lambda uid: uid in keep})
    neighbours = {}
    if maker.hard_negatives == "transcript":
        neighbours = nearest_transcripts(data.data_ids,
                                         [data.data[uid]["wrd"] for uid in data.data_ids])

    def load_negative(uid):
        return load_audio(neutral_file(data.data[neighbours[uid]]["wrd"]))

    @sb.utils.data_pipeline.takes("id", "wav", "wrd")
    @sb.utils.data_pipeline.provides("anchor", "positive", "kind", "negative")
    def pair_pipeline(uid, wav, wrd):
        pair = maker(uid, load_audio(wav), lambda: load_audio(neutral_file(wrd)),
                     lambda: load_negative(uid))
        yield pair.anchor
        yield pair.positive
        yield pair.kind
        yield pair.negative

    sb.dataio.dataset.add_dynamic_item([data], pair_pipeline)
    keys = ["id", "anchor", "positive", "kind"] + (["negative"] if maker.hard_negatives else [])
    sb.dataio.dataset.set_output_keys([data], keys)

    # Sort key of length buckets: the view length after the truncation rule (halved above
    # split_samples). With bucket_batches null (the default) batches are random.
    lengths = []
    for uid in data.data_ids:
        samples = float(data.data[uid]["duration"]) * SAMPLE_RATE
        lengths.append(samples / 2 if samples > hparams["split_samples"] else samples)
    sampler = LengthBucketBatchSampler(
        lengths, hparams["batch_size"], hparams["bucket_batches"], hparams["seed"]
    )
    return data, sampler


def export_record(hparams, brain, csv_path, utterances):
    """What ``rewiring.json`` says about the run (RewireBrain.export adds the rest)."""
    source = hparams["upstream_source"]
    settings = {key: hparams[key] for key in (
        "temperature", "lr", "weight_decay", "dropout", "mask_ratio", "symmetric_loss",
        "pool_layers", "freeze_feature_encoder", "encoder_masking", "grad_cache",
        "grad_cache_chunk_size", "forward_chunk_size", "gradient_checkpointing",
        "bucket_batches", "max_samples", "split_samples", "max_utterances", "subset",
        "max_grad_norm", "seed",
    )}
    maker = hparams["pair_maker"]
    settings["mix"] = maker.weights  # the kinds of positive drawn, normalised
    settings["hard_negatives"] = maker.hard_negatives
    if "perturb" in maker.weights:
        settings["perturb"] = {key: hparams[key] for key in (
            "perturb_formant", "perturb_pitch", "perturb_pitch_range")}
    settings["batch_size_per_rank"] = hparams["batch_size"]
    settings["global_batch_size"] = hparams["batch_size"] * world_size()
    settings["precision"] = brain.precision
    settings["compile"] = brain.compile
    neutral_failures = None
    if maker.needs_neutral:
        settings["tts"] = [hparams["tts_backend"],
                           resolve_voice(hparams["tts_backend"], hparams["tts_voice"])]
        settings["max_failed_fraction"] = hparams["max_failed_fraction"]
        report = Path(hparams["output_folder"]) / NEUTRAL_REPORT
        neutral_failures = json.loads(report.read_text(encoding="utf-8"))["left_out"]
    subset_file = Path(csv_path).parent / SUBSET_NAME
    return {
        "method": "contrastive rewiring (Yang et al., 2022)",
        "source": str(source),
        "random_init_fallback": Path(source).name == FALLBACK_NAME,
        "profile": hparams["run_profile"],
        # Whether the rewired encoder descends from the embedded one: downstream runs on
        # it choose their profile from this (the rewiring run's profile may be forced).
        "embedded_encoder": is_embedded_encoder(source),
        "profile_reason": hparams.get("profile_reason"),
        # The paper rewired with Twin, Neutral and Mixed only.
        "paper_updates": PAPER_UPDATES.get(hparams["strategy"]),
        "hyperparameters": settings,
        "data": {
            "manifest": str(Path(csv_path).resolve()),
            "corpus": "audio_folder" if hparams["audio_folder"] else "librispeech",
            "splits": None if hparams["audio_folder"] else list(hparams["splits"]),
            "transcripts": hparams["run_identity"]["transcripts"],
            # The audio folder's skipped files (unreadable, silent, too long, without a
            # transcript), counted and named by the prepare step.
            "audio_folder_report": audio_folder_report(hparams),
            "subset_rule": hparams["subset"],
            # The utterance IDs chosen for rewiring, beside this record; the ASR recipe
            # leaves them out of its training data.
            "subset_file": SUBSET_NAME,
            "subset_sha256": subset_digest(subset_file),
            "subset_utterances": len(read_subset(subset_file)),
            # Trained on: the subset less the utterances without neutral audio.
            "utterances": utterances,
        },
        "neutral_failures": neutral_failures,
        "run_identity": hparams["run_identity"],
    }


def audio_folder_report(hparams):
    """The audio folder's prepare report (None for LibriSpeech)."""
    if not hparams["audio_folder"]:
        return None
    report = Path(hparams["output_folder"]) / AUDIO_FOLDER_REPORT
    return json.loads(report.read_text(encoding="utf-8"))


def load_hparams(argv):
    """``load_recipe_hparams`` for this recipe: the profile applied, the run folder claimed.

    Resolves the encoder (a random stand-in while assets/encoder is missing), the profile
    and the encoder's fingerprint in the run folder's name, then claims the run folder for
    the run identity. Returns ``(hparams, hparams_file, run_opts, overrides)``; trains
    nothing.
    """
    # The precision in use (bf16 on CUDA unless given) belongs to the run identity.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(
        argv, identity_extras=identity_extras, derived_overrides=audio_folder_overrides)
    hparams["precision"] = run_precision(hparams, run_opts)
    hparams["forward_chunk_size"] = hparams["run_identity"]["forward_chunk_size"]
    return hparams, hparams_file, run_opts, overrides


def main(argv):
    hparams, hparams_file, run_opts, overrides = load_hparams(argv)
    start_experiment(hparams, hparams_file, overrides)
    source = hparams["upstream_source"]
    if Path(source).name == FALLBACK_NAME:
        logger.warning("Rewiring a RANDOMLY INITIALISED stand-in encoder (%s): the run shows "
                       "that the pipeline works, not what rewiring does.", source)

    csv_path = Path(hparams["output_folder"]) / "train.csv"
    prepare_data(hparams, run_opts.get("device"))
    if hparams["pair_maker"].needs_neutral:
        from synthesize_neutral import ensure_neutral_audio  # noqa: E402 (sibling script)

        run_on_main(ensure_neutral_audio, kwargs={
            "manifest": csv_path,
            "neutral_folder": hparams["neutral_folder"],
            "backend": hparams["tts_backend"],
            "voice": hparams["tts_voice"],
            "num_workers": hparams["tts_workers"],
            "report_path": Path(hparams["output_folder"]) / NEUTRAL_REPORT,
            "max_failed_fraction": hparams["max_failed_fraction"],
        })
    train_data, batch_sampler = dataio_prepare(hparams, csv_path)

    upstream = hparams["encoder_factory"](source)
    brain = RewireBrain(
        modules={"encoder": upstream},
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.train_sampler = batch_sampler  # so that Brain calls set_epoch on it
    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        train_loader_kwargs={"batch_sampler": batch_sampler,
                             **loader_options(hparams, run_opts)},
    )

    brain.export(
        hparams["export_folder"],
        export_record(hparams, brain, csv_path, len(train_data)),
        extra_files={SUBSET_NAME: csv_path.parent / SUBSET_NAME},
    )
    brain.plot_loss(Path(hparams["output_folder"]) / "loss_curve.png")
    if if_main_process():
        logger.info("Done: %s", hparams["export_folder"])


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
