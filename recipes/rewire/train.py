#!/usr/bin/env python3
"""Contrastive rewiring of a pre-trained speech encoder (Yang et al., 2022).

Rewires any encoder that ``SSLUpstream`` loads with label-free contrastive learning
(Twin, Neutral or Mixed positive pairs, InfoNCE) and exports it as an encoder directory
that transformers, s3prl's HF upstream and the SUPERB recipes of this project load.

    python recipes/rewire/train.py hparams/mixed.yaml                  # embedded default
    python recipes/rewire/train.py hparams/mixed.yaml --data_folder /data/LibriSpeech \
        --upstream_source /models/wav2vec2-large-lv60 --max_steps 5000 --lr 1e-6
    torchrun --nproc_per_node=4 recipes/rewire/train.py hparams/mixed.yaml ...  # DDP

Outputs in the run folder: ``upstream/`` (the rewired encoder + ``rewiring.json``),
``save/`` (checkpoints; a rerun resumes), ``train_log.txt``, ``loss_curve.png``.

Authors
 * rewire-speech contributors
"""

import json
import logging
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lobes.data.audio import SAMPLE_RATE, load_audio
from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
from rewire_lobes.runs.defaults import FALLBACK_NAME
from rewire_lobes.io_utils import write_json_atomic
from rewire_lobes.rewiring.neutral import neutral_path, resolve_voice, tts_text
from rewire_lobes.rewiring.brain import RewireBrain
from rewire_lobes.runs.cli import load_recipe_hparams

logger = logging.getLogger(__name__)


def run_identity(hparams, source):
    """Settings that define a run; a folder holding another identity is refused."""
    keys = [
        "strategy", "seed", "splits", "max_samples", "split_samples", "max_utterances",
        "tts_backend", "mask_ratio", "temperature", "dropout", "symmetric_loss", "pool_layers",
        "freeze_feature_encoder", "batch_size", "lr", "weight_decay",
    ]
    identity = {key: hparams[key] for key in keys}
    identity["tts_voice"] = resolve_voice(hparams["tts_backend"], hparams["tts_voice"])
    identity["upstream_source"] = str(Path(source).resolve()) if Path(source).exists() else source
    identity["data_folder"] = str(Path(hparams["data_folder"]).resolve())
    identity["world_size"] = world_size()
    return identity


def world_size():
    if sb.utils.distributed.is_distributed_initialized():
        return torch.distributed.get_world_size()
    return 1


def claim_run_folder(folder, identity):
    """Records ``identity`` in ``folder``, or raises if the folder holds another run."""
    path = Path(folder) / "run_identity.json"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        keys = set(previous) | set(identity)
        changed = sorted(k for k in keys if previous.get(k) != identity.get(k))
        if changed:
            raise RuntimeError(
                f"{folder} holds a run with other settings ({', '.join(changed)}); it would be "
                "silently continued. Pass another --output_folder, or delete the folder."
            )
        return
    write_json_atomic(path, identity)


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

    @sb.utils.data_pipeline.takes("id", "wav", "wrd")
    @sb.utils.data_pipeline.provides("anchor", "positive", "kind")
    def pair_pipeline(uid, wav, wrd):
        pair = maker(uid, load_audio(wav), lambda: load_audio(neutral_file(wrd)))
        yield pair.anchor
        yield pair.positive
        yield pair.kind

    sb.dataio.dataset.add_dynamic_item([data], pair_pipeline)
    sb.dataio.dataset.set_output_keys([data], ["id", "anchor", "positive", "kind"])

    # Sort key: the view length after the truncation rule (halved above split_samples).
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
        "pool_layers", "freeze_feature_encoder", "grad_cache", "max_samples", "split_samples",
        "seed",
    )}
    settings["batch_size_per_rank"] = hparams["batch_size"]
    settings["global_batch_size"] = hparams["batch_size"] * world_size()
    settings["precision"] = brain.precision
    if hparams["pair_maker"].needs_neutral:
        settings["tts"] = [hparams["tts_backend"],
                           resolve_voice(hparams["tts_backend"], hparams["tts_voice"])]
    return {
        "method": "contrastive rewiring (Yang et al., 2022)",
        "source": str(source),
        "random_init_fallback": Path(source).name == FALLBACK_NAME,
        "paper_updates": hparams["full_scale_max_steps"],
        "hyperparameters": settings,
        "data": {"manifest": str(Path(csv_path).resolve()), "utterances": utterances},
    }


if __name__ == "__main__":
    # Also resolves the embedded encoder (a random stand-in while assets/encoder is
    # missing) and names the run folder after the encoder's fingerprint.
    hparams, hparams_file, run_opts, overrides = load_recipe_hparams(sys.argv[1:])
    source = hparams["upstream_source"]
    run_on_main(claim_run_folder, args=[hparams["output_folder"], run_identity(hparams, source)])
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    if Path(source).name == FALLBACK_NAME:
        logger.warning("Rewiring a RANDOMLY INITIALISED stand-in encoder (%s): the run shows "
                       "that the pipeline works, not what rewiring does.", source)

    from librispeech_prepare import prepare_librispeech_rewire  # noqa: E402 (sibling script)

    csv_path = Path(hparams["output_folder"]) / "train.csv"
    run_on_main(prepare_librispeech_rewire, kwargs={
        "data_folder": hparams["data_folder"],
        "save_folder": hparams["output_folder"],
        "splits": hparams["splits"],
        "max_samples": hparams["max_samples"],
        "max_utterances": hparams["max_utterances"],
        "seed": hparams["seed"],
        "embedded_data_folder": hparams["embedded_data_folder"],
        "skip_prep": hparams["skip_prep"],
    })
    if hparams["pair_maker"].needs_neutral:
        from synthesize_neutral import ensure_neutral_audio  # noqa: E402 (sibling script)

        run_on_main(ensure_neutral_audio, kwargs={
            "manifest": csv_path,
            "neutral_folder": hparams["neutral_folder"],
            "backend": hparams["tts_backend"],
            "voice": hparams["tts_voice"],
            "num_workers": hparams["tts_workers"],
            "report_path": Path(hparams["output_folder"]) / "neutral_synthesis.json",
        })
    train_data, batch_sampler = dataio_prepare(hparams, csv_path)

    # bf16 autocast on CUDA unless the command line chose a precision.
    device = run_opts.get("device") or sb.utils.distributed.infer_device()
    if "precision" not in run_opts.overridden_args and str(device).startswith("cuda"):
        hparams["precision"] = hparams["gpu_precision"]

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
        train_loader_kwargs={
            "batch_sampler": batch_sampler, "num_workers": hparams["num_workers"]
        },
    )

    brain.export(hparams["export_folder"], export_record(hparams, brain, csv_path, len(train_data)))
    brain.plot_loss(Path(hparams["output_folder"]) / "loss_curve.png")
    if if_main_process():
        logger.info("Done: %s", hparams["export_folder"])
