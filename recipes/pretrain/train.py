#!/usr/bin/env python3
"""Self-supervised wav2vec 2.0 pre-training of a small encoder, on any folder of audio.

This recipe made the embedded encoder shipped in ``assets/encoder`` (see its model card).
The objective is wav2vec 2.0's: spans of CNN frames are masked, and the transformer's
output at each masked frame must pick the frame's Gumbel-quantised CNN feature among
distractors from the same utterance (contrastive loss), while a diversity loss keeps
the codebooks in use. Losses are sums over masked frames in transformers; here they are
divided by the number of masked frames, for the gradient and for the logs.

To run (the embedded default: the mini corpus under data/mini, generated if absent)::

    python recipes/pretrain/train.py hparams/pretrain.yaml

On your own audio (every wav/flac/ogg/mp3 below the folder) and into the shipped location::

    python recipes/pretrain/train.py hparams/pretrain.yaml \
        --audio_folder /data/my_audio --export_folder assets/encoder

The encoder is exported to ``<output_folder>/encoder`` (``config.json``, fp32
``model.safetensors``, ``preprocessor_config.json``); every recipe loads such a folder
with ``--upstream_source``. A killed run resumes from its last checkpoint.

Authors
 * rewire-speech contributors
"""

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.logger import get_logger

from rewire_lobes.data.audio import load_audio
from rewire_lobes.io_utils import atomic_path, write_json_atomic
from rewire_lobes.upstream.pretrain import (
    count_parameters,
    crop_to_shortest,
    fixed_numpy_seed,
    gumbel_decay_for_run,
    gumbel_temperature,
    sample_masks_and_negatives,
    scale_feature_encoder_gradients,
)
from rewire_lobes.runs.cli import parse_arguments, user_errors
from rewire_lobes.upstream.encoder import export_encoder, normalize_waveforms

logger = get_logger(__name__)

ENCODER_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


class PretrainBrain(sb.Brain):
    """wav2vec 2.0 pre-training: masked contrastive + diversity loss, step-based."""

    def on_fit_start(self):
        super().on_fit_start()  # builds the optimizer and recovers the last checkpoint
        hp = self.hparams
        self.gumbel_decay = hp.gumbel_temperature_decay or gumbel_decay_for_run(
            hp.number_of_steps, hp.gumbel_temperature_max, hp.gumbel_temperature_min
        )
        # Through hparams, not self.modules: DDP wraps the latter (pitfall C.9).
        self.feature_grad_hook = scale_feature_encoder_gradients(
            hp.wav2vec2_pretrain, hp.feature_grad_mult
        )
        self.current_lr = hp.lr_scheduler.calculate_lr(self.optimizer_step)
        self.temperature = gumbel_temperature(
            self.optimizer_step, hp.gumbel_temperature_max, hp.gumbel_temperature_min,
            self.gumbel_decay,
        )

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        # No padding at all: a group-norm CNN would normalise over it (pitfall C.5).
        wavs = crop_to_shortest(wavs, wav_lens)
        if self.hparams.do_normalize:
            # The same per-utterance normalisation SSLUpstream applies downstream.
            batch_size, num_samples = wavs.shape
            wavs = normalize_waveforms(
                wavs, torch.ones_like(wavs, dtype=torch.bool),
                torch.full((batch_size,), num_samples, device=self.device),
            )
        mask_args = dict(
            model=self.hparams.wav2vec2_pretrain, batch_size=wavs.shape[0],
            num_samples=wavs.shape[1], mask_prob=self.hparams.mask_prob,
            mask_length=self.hparams.mask_length, device=self.device,
        )
        if stage == sb.Stage.TRAIN:
            mask, negatives = sample_masks_and_negatives(**mask_args)
        else:  # the same masks at every evaluation, so held-out losses compare
            with fixed_numpy_seed(self.hparams.seed + sum(map(ord, "".join(batch.id)))):
                mask, negatives = sample_masks_and_negatives(**mask_args)
        outputs = self.modules.wav2vec2_pretrain(
            wavs, mask_time_indices=mask, sampled_negative_indices=negatives
        )
        return outputs, mask

    def compute_objectives(self, predictions, batch, stage):
        outputs, mask = predictions
        return outputs.loss / mask.sum()

    def on_stage_start(self, stage, epoch=None):
        self.last_batch_end = time.time()
        if stage == sb.Stage.TRAIN:
            self.updates_at_epoch_start = self.optimizer_step

    def on_fit_batch_start(self, batch, should_step):
        hp = self.hparams
        # Both schedules are functions of the update count, which the checkpoint holds,
        # so a resumed run continues them exactly.
        self.current_lr = hp.lr_scheduler.calculate_lr(self.optimizer_step + 1)
        for group in self.optimizer.param_groups:  # quietly: update_learning_rate logs each call
            group["lr"] = self.current_lr
        self.temperature = gumbel_temperature(
            self.optimizer_step, hp.gumbel_temperature_max, hp.gumbel_temperature_min,
            self.gumbel_decay,
        )
        hp.wav2vec2_pretrain.set_gumbel_temperature(self.temperature)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step:
            return
        model_outputs, mask = outputs
        masked = mask.sum().item()
        now = time.time()
        self.hparams.history.add_train(
            step=self.optimizer_step,
            loss=loss.item(),
            contrastive=model_outputs.contrastive_loss.item() / masked,
            diversity=model_outputs.diversity_loss.item() / masked,
            perplexity=model_outputs.codevector_perplexity.item(),
            temperature=self.temperature,
            lr=self.current_lr,
            masked_frames=masked,
            seconds=now - self.last_batch_end,
        )
        self.last_batch_end = now
        if self.optimizer_step % self.hparams.log_interval == 0:
            row = self.hparams.history.train[-1]
            logger.info(
                "update %d/%d: loss %.3f (contrastive %.3f, diversity %.3f), perplexity "
                "%.0f, temperature %.3f, lr %.2e, %.2f s/update",
                row["step"], self.hparams.number_of_steps, row["loss"], row["contrastive"],
                row["diversity"], row["perplexity"], row["temperature"], row["lr"],
                row["seconds"],
            )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if self.optimizer_step == self.updates_at_epoch_start:
            return  # a finished run restarted: nothing new to log or save
        if stage == sb.Stage.TRAIN:
            self.train_stats = {"loss": stage_loss}
            if not self.has_valid_set:
                self._end_of_epoch(epoch, None)
        elif stage == sb.Stage.VALID:
            self.hparams.history.add_valid(self.optimizer_step, stage_loss)
            self._end_of_epoch(epoch, {"loss": stage_loss})

    def _end_of_epoch(self, epoch, valid_stats):
        history = self.hparams.history
        self.hparams.train_logger.log_stats(
            stats_meta={"epoch": epoch, "updates": self.optimizer_step,
                        "lr": self.current_lr, "temperature": self.temperature},
            train_stats=self.train_stats,
            valid_stats=valid_stats,
        )
        self.checkpointer.save_and_keep_only(
            meta={"updates": self.optimizer_step, "loss": history.mean_loss()}, num_to_keep=1
        )
        if if_main_process():
            history.write_csv(Path(self.hparams.output_folder) / "loss_history.csv")
            history.plot(Path(self.hparams.output_folder) / "loss_curve.png",
                         chance=math.log(self.hparams.num_negatives + 1))


def dataio_prepare(hparams):
    """Train items are random crops (a new one each epoch); valid items fixed crops."""
    crop_seconds = hparams["crop_seconds"]

    def crop_bounds(duration, sample_rate, offset_seconds):
        start = int(offset_seconds * sample_rate)
        return start, start + int(min(duration, crop_seconds) * sample_rate)

    @sb.utils.data_pipeline.takes("wav", "duration", "sample_rate")
    @sb.utils.data_pipeline.provides("sig")
    def random_crop(wav, duration, sample_rate):
        offset = torch.rand(()).item() * max(0.0, duration - crop_seconds)
        start, stop = crop_bounds(duration, int(sample_rate), offset)
        return load_audio(wav, start=start, stop=stop)

    @sb.utils.data_pipeline.takes("wav", "duration", "sample_rate")
    @sb.utils.data_pipeline.provides("sig")
    def middle_crop(wav, duration, sample_rate):
        start, stop = crop_bounds(duration, int(sample_rate), max(0.0, duration - crop_seconds) / 2)
        return load_audio(wav, start=start, stop=stop)

    datasets = {"valid": None}
    splits = (("train", random_crop), ("valid", middle_crop))
    for split, pipeline in splits[: 2 if hparams["valid_files"] > 0 else 1]:
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(hparams[f"{split}_csv"])
        dataset.add_dynamic_item(pipeline)
        dataset.set_output_keys(["id", "sig"])
        datasets[split] = dataset.filtered_sorted(sort_key="duration") if split == "valid" else dataset

    # Batches of similar (cropped) lengths, about batch_seconds of audio each.
    boundaries = torch.linspace(
        hparams["min_seconds"], crop_seconds, hparams["num_buckets"] + 1
    )[1:].tolist()
    datasets["train_sampler"] = sb.dataio.sampler.DynamicBatchSampler(
        datasets["train"],
        max_batch_length=hparams["batch_seconds"],
        bucket_boundaries=boundaries,
        length_func=lambda row: min(float(row["duration"]), crop_seconds),
        shuffle=True,
        batch_ordering="random",
        max_batch_ex=hparams["max_batch_files"],
        seed=hparams["seed"],
    )
    return datasets


def export(hparams, brain):
    """Writes the encoder directory, its training summary and (optionally) a copy."""
    model = hparams["wav2vec2_pretrain"]
    history = hparams["history"]
    encoder_folder = Path(hparams["encoder_folder"])
    export_encoder(model.wav2vec2, encoder_folder, hparams["do_normalize"])
    summary = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "audio_folder": str(hparams["audio_folder"]),
        "train_files": len(brain.train_items),
        "train_hours": round(brain.train_hours, 3),
        "updates": brain.optimizer_step,
        "encoder_parameters": count_parameters(model.wav2vec2),
        "pretraining_parameters": count_parameters(model),
        # Summed over updates (data loading and checkpoints included, validation not),
        # across resumed runs.
        "train_seconds": round(history.train_seconds, 1),
        "final_loss_mean_last_50_updates": round(history.mean_loss(50), 4),
        "final_contrastive_mean_last_50_updates": round(history.mean_loss(50, "contrastive"), 4),
        "contrastive_at_chance": round(math.log(hparams["num_negatives"] + 1), 4),
        "final_perplexity_mean_last_50_updates": round(history.mean_loss(50, "perplexity"), 1),
        "final_valid_loss": history.valid[-1]["loss"] if history.valid else None,
        "torch_threads": torch.get_num_threads(),
        "device": str(brain.device),
    }
    write_json_atomic(encoder_folder.parent / "pretraining_summary.json", summary)
    history.plot(encoder_folder.parent / "loss_curve.png",
                 chance=math.log(hparams["num_negatives"] + 1))
    if hparams["export_folder"]:
        # File by file: the model card and plots already in the folder stay.
        target = Path(hparams["export_folder"])
        target.mkdir(parents=True, exist_ok=True)
        for name in ENCODER_FILES + ("loss_curve.png",):
            source = encoder_folder / name if name in ENCODER_FILES else encoder_folder.parent / name
            with atomic_path(target / name) as tmp:
                shutil.copyfile(source, tmp)
        write_json_atomic(target / "pretraining_summary.json", summary)
    logger.info("Encoder exported to %s: %s", encoder_folder, json.dumps(summary))


def main(argv):
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    from audio_folder_prepare import prepare_audio_folder  # noqa: E402

    from rewire_lobes.data.mini_corpus import ensure_embedded_data  # noqa: E402

    # The embedded default (data/mini) is generated when absent; other folders are used as is.
    audio_folder = run_on_main(ensure_embedded_data, args=[hparams["audio_folder"]])
    run_on_main(
        prepare_audio_folder,
        kwargs={
            "audio_folder": audio_folder,
            "save_folder": hparams["save_folder"],
            "exclude_patterns": hparams["exclude_patterns"],
            "exclude_lists": hparams["exclude_lists"],
            "valid_files": hparams["valid_files"],
            "min_seconds": hparams["min_seconds"],
            "seed": hparams["seed"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    datasets = dataio_prepare(hparams)

    brain = PretrainBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.has_valid_set = datasets["valid"] is not None
    brain.train_items = datasets["train"].data_ids
    brain.train_hours = sum(float(r["duration"]) for r in datasets["train"].data.values()) / 3600
    logger.info(
        "wav2vec 2.0 pre-training: encoder %.2fM parameters (%.2fM with quantiser and "
        "projections), %d train files (%.2f h)",
        count_parameters(hparams["wav2vec2_pretrain"].wav2vec2) / 1e6,
        count_parameters(hparams["wav2vec2_pretrain"]) / 1e6,
        len(brain.train_items), brain.train_hours,
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs={"batch_sampler": datasets["train_sampler"],
                             **hparams["train_dataloader_opts"]},
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if if_main_process():
        export(hparams, brain)


if __name__ == "__main__":
    with user_errors():
        main(sys.argv[1:])
