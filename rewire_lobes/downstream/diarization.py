"""Speaker diarization (SD): SUPERB's LSTM head with the permutation-invariant BCE.

``DiarizationBrain`` trains ``SpeakerActivityHead`` on the weighted layer sum with
``DownstreamBrain``'s schedule (``max_steps`` counted in updates, each of
``grad_accumulation_factor`` batches as s3prl's ``gradient_accumulate_steps``). Items are
chunks of at most ``chunk_size`` label frames (``rewire_lobes.data.diarization``); every
Libri2Mix mixture is one chunk.

During training, each dev evaluation scores the frames (``frame_der``: s3prl's frame-level
DER with a speaker active when its logit is > 0, under each chunk's best permutation,
summed over the whole split; ``frame_accuracy``); the lowest ``frame_der`` picks the best
checkpoint. At that checkpoint dev and test posteriors are computed, and the RTTM-level
DER (pyannote.metrics, collar 0, overlap scored) of each threshold × median-filter width
is computed on both: the pair with the lowest dev DER is applied to test, which gives the
reported ``der``. s3prl reports instead the lowest of the ten on test itself, an optimistic
protocol: that figure is recorded too, as ``der_s3prl_protocol``.
"""

import json
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.data.diarization import (
    MIN_CHUNK_FRAMES,
    chunk_bounds,
    frame_labels,
    recording_frames,
)
from rewire_lobes.data.fractions import check_fraction
from rewire_lobes.data.manifests import read_manifest
from rewire_lobes.downstream.core import TaskFamily
from rewire_lobes.downstream.dataio import audio_pipeline, write_train_subset
from rewire_lobes.downstream.frame_level import FrameLevelBrain
from rewire_lobes.downstream.pit import frame_error_counts, pit_bce
from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.io_utils import atomic_path
from rewire_lobes.metrics.diarization import (
    best_decision,
    check_median_width,
    decision_grid,
    hypothesis_turns,
    read_rttm,
    write_rttm,
)

COUNT_KEYS = ("miss", "false_alarm", "confusion", "speaker_time", "correct", "frames")
HYPOTHESIS_RTTM = "{split}_hyp.rttm"
POSTERIORS = "{split}_posteriors.npz"


class DiarizationBrain(FrameLevelBrain):
    """SUPERB's SD head on an SSL upstream.

    Extra hyperparameters: ``featurizer``, ``head`` (``SpeakerActivityHead``),
    ``num_speakers``, ``frame_shift`` (samples per label frame), ``thresholds`` and
    ``median_widths`` (the decision grid), ``manifest_folder`` (the scoring references),
    ``output_folder``, and ``FrameLevelBrain``'s (the frame cache).
    """

    target_keys = ("labels", "label_len", "recording", "first_frame")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.counts = None
        self.posteriors = None
        self.dev_posteriors = None

    # ------------------------------------------------------------------ model
    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        hidden, frame_lens = self.hidden_states(batch)
        features = self.modules.featurizer(hidden)
        features = match_length(features, frame_lens, batch.label_len.long())
        return self.modules.head(features)

    def compute_objectives(self, logits, batch, stage):
        labels = batch.labels.data.to(logits.device)
        lengths = batch.label_len.to(logits.device).long()
        loss, permuted = pit_bce(logits.float(), labels, lengths)
        if stage != sb.Stage.TRAIN:
            counts = frame_error_counts(logits.detach().float(), permuted, lengths)
            for key in COUNT_KEYS:
                self.counts[key] += float(counts[key])
            if self.final_split is not None:
                self._keep_posteriors(batch, logits.detach(), lengths)
        return loss

    def _keep_posteriors(self, batch, logits, lengths):
        probabilities = torch.sigmoid(logits.float()).cpu().numpy()
        for row, recording, first, length in zip(probabilities, batch.recording,
                                                 batch.first_frame.tolist(), lengths.tolist()):
            self.posteriors.setdefault(recording, {})[int(first)] = row[:length]

    def reset_scores(self, stage):
        self.counts = dict.fromkeys(COUNT_KEYS, 0.0)
        self.posteriors = {}

    def summarize_scores(self, stage):
        scores = frame_scores(self.counts)
        if stage == sb.Stage.TEST and self.final_split == "test":
            scores.update(self._decide_and_score())
        return scores

    # ------------------------------------------------------------------ scoring
    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TEST and self.final_split == "dev":
            self.dev_posteriors = stitch(self.posteriors)
            self.check_dev_rescore(frame_scores(self.counts), "dev_frame_scores_at_best")
            return None
        return super().on_stage_end(stage, stage_loss, epoch)

    def _decide_and_score(self):
        """The decision chosen on dev, applied to test; both RTTMs and posteriors written."""
        shift = self.frame_shift_seconds
        thresholds, widths = list(self.hparams.thresholds), list(self.hparams.median_widths)
        folder = Path(self.hparams.manifest_folder)
        splits = {"dev": self.dev_posteriors, "test": stitch(self.posteriors)}
        grids = {}
        for split, posteriors in splits.items():
            # A recording without reference turns is scored (its detections are false alarms).
            reference, _ = read_rttm(folder / f"{split}.rttm", recordings=posteriors)
            grids[split] = decision_grid(posteriors, reference, shift,
                                         thresholds=thresholds, median_widths=widths)
        chosen = best_decision(grids["dev"])
        at_chosen = next(entry for entry in grids["test"]
                         if entry["threshold"] == chosen["threshold"]
                         and entry["median_width"] == chosen["median_width"])
        optimistic = best_decision(grids["test"])
        output = Path(self.hparams.output_folder)
        if if_main_process():
            for split, posteriors in splits.items():
                write_rttm(output / HYPOTHESIS_RTTM.format(split=split),
                           hypothesis_turns(posteriors, chosen["threshold"],
                                            chosen["median_width"], shift))
                save_posteriors(output / POSTERIORS.format(split=split), posteriors)
        self.run_info["decision"] = {
            "threshold": chosen["threshold"], "median_width": chosen["median_width"],
            "chosen_on": "dev", "dev_der": 100 * chosen["der"],
            "frame_shift_seconds": shift,
        }
        self.run_info["der_grid"] = {split: [{**entry, "der": 100 * entry["der"]} for entry in grid]
                                     for split, grid in grids.items()}
        self.run_info["s3prl_protocol"] = {
            "der": 100 * optimistic["der"], "threshold": optimistic["threshold"],
            "median_width": optimistic["median_width"],
            "note": "the lowest test DER of the grid, chosen on test itself (s3prl's score.sh)",
        }
        return {
            "der": 100 * at_chosen["der"],
            "der_s3prl_protocol": 100 * optimistic["der"],
            "missed_seconds": at_chosen["missed"],
            "false_alarm_seconds": at_chosen["false_alarm"],
            "confusion_seconds": at_chosen["confusion"],
            "speaker_seconds": at_chosen["total"],
        }

    @property
    def frame_shift_seconds(self):
        return int(self.hparams.frame_shift) / SAMPLE_RATE


def match_length(features, frame_lens, label_lens):
    """Each utterance's features cut or extended to its label length (s3prl's
    ``_match_length``): frames repeated ``round(labels / frames)`` times when the labels
    are at a finer rate, then the last valid frame repeated (or frames dropped) so that
    ``features[b]`` has ``label_lens[b]`` valid frames. Returns ``[B, max(label_lens), D]``.

    Example
    -------
    >>> features = torch.arange(6.).view(1, 3, 2)
    >>> match_length(features, torch.tensor([2]), torch.tensor([4]))[0, :, 0].tolist()
    [0.0, 2.0, 2.0, 2.0]
    """
    batch, _, dim = features.shape
    out = features.new_zeros(batch, int(label_lens.max()), dim)
    for b in range(batch):
        frames, wanted = int(frame_lens[b]), int(label_lens[b])
        valid = features[b, :max(frames, 1)]
        factor = int(round(wanted / max(frames, 1)))
        if factor > 1:
            valid = valid.repeat_interleave(factor, dim=0)
        if valid.shape[0] < wanted:
            valid = torch.cat([valid, valid[-1:].expand(wanted - valid.shape[0], dim)])
        out[b, :wanted] = valid[:wanted]
    return out


def frame_scores(counts):
    """``frame_der`` and ``frame_accuracy`` (%) of summed :func:`frame_error_counts`."""
    speaker_time, frames = counts["speaker_time"], counts["frames"]
    errors = counts["miss"] + counts["false_alarm"] + counts["confusion"]
    return {
        "frame_der": 100 * errors / speaker_time if speaker_time else float("nan"),
        "frame_accuracy": 100 * counts["correct"] / frames if frames else float("nan"),
    }


def stitch(chunk_posteriors):
    """``{recording: [frames, speakers]}`` from ``{recording: {first frame: chunk}}``."""
    return {recording: np.concatenate([chunks[first] for first in sorted(chunks)])
            for recording, chunks in chunk_posteriors.items()}


def save_posteriors(path, posteriors):
    """The speaker posteriors of every recording, one array each, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fout:
            np.savez_compressed(fout, **posteriors)


# ---------------------------------------------------------------------- data
def chunk_rows(rows, frame_shift, chunk_size):
    """``{chunk id: row}`` of every recording's chunks, with the audio span (samples) and
    the label frames (``first_frame``, ``num_frames``) of each."""
    chunks = {}
    for row in rows:
        frames = recording_frames(row["duration"], frame_shift)
        if frames < MIN_CHUNK_FRAMES:
            raise DataFileError(f"{row['wav']}: recording '{row['ID']}' lasts {row['duration']} s, "
                                f"less than {MIN_CHUNK_FRAMES} frames of {frame_shift} samples")
        for start, end in chunk_bounds(frames, int(chunk_size)):
            chunks[f"{row['ID']}@{start}"] = {
                "wav": row["wav"],
                "start": start * frame_shift,
                "stop": end * frame_shift,
                "duration": (end - start) * frame_shift / SAMPLE_RATE,
                "recording": row["ID"],
                "first_frame": start,
                "num_frames": end - start,
                "segments": row["segments"],
            }
    return chunks


def label_pipeline(num_speakers, frame_shift):
    """``segments, first_frame, num_frames -> labels [frames, speakers], label_len``."""

    @sb.utils.data_pipeline.takes("segments", "first_frame", "num_frames")
    @sb.utils.data_pipeline.provides("labels", "label_len")
    def labels(segments, first_frame, num_frames):
        first, count = int(first_frame), int(num_frames)
        yield torch.from_numpy(frame_labels(json.loads(segments), num_speakers, first,
                                            first + count, frame_shift))
        yield count

    return labels


def diarization_dataio_prepare(hparams):
    """Train (the fraction's whole recordings), dev and test chunk datasets."""
    check_fraction(hparams["fraction"])
    folder = Path(hparams["manifest_folder"])
    subset_csv = Path(hparams["output_folder"]) / "train_subset.csv"
    run_on_main(write_train_subset,
                args=[folder / "train.csv", subset_csv, hparams["fraction"], hparams["seed"],
                      None], kwargs={"quota": hparams["fraction_quota"]})
    shift, size = int(hparams["frame_shift"]), int(hparams["chunk_size"])
    sources = {"train": subset_csv, "dev": folder / "dev.csv", "test": folder / "test.csv"}
    datasets = {}
    for name, path in sources.items():
        rows = read_manifest(path)
        dataset = sb.dataio.dataset.DynamicItemDataset(chunk_rows(rows, shift, size))
        if name != "train":  # an evaluation batch of similar lengths holds little padding
            dataset = dataset.filtered_sorted(sort_key="duration")
        dataset.recordings = len(rows)
        datasets[name] = dataset
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline(hparams["gain_db"]))
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()),
                                       label_pipeline(int(hparams["num_speakers"]), shift))
    return datasets


def resolve_frame_shift(hparams):
    """``frame_shift`` in samples: the yaml's, or the upstream's downsample rate (s3prl)."""
    shift = hparams.get("frame_shift")
    if shift in (None, "None", "null"):
        shift = hparams["upstream"].downsample_rate
    if int(shift) < 1:
        raise OptionError(f"--frame_shift must be a positive number of samples, got {shift}")
    hparams["frame_shift"] = int(shift)
    return int(shift)


def check_decision_grid(thresholds, median_widths):
    """Refuses, before training, a grid that scoring at the end could not use."""
    thresholds, median_widths = list(thresholds or []), list(median_widths or [])
    if not thresholds or not median_widths:
        raise OptionError("--thresholds and --median_widths need at least one value each "
                          "(s3prl: [0.3, 0.4, 0.5, 0.6, 0.7] and [1, 11])")
    for threshold in thresholds:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not 0.0 <= threshold < 1.0:
            raise OptionError(f"--thresholds: {threshold!r} is not a posterior threshold in [0, 1)")
    for width in median_widths:
        check_median_width(width)


def setup_diarization_task(hparams):
    """Chunks and frame labels of every split (``TaskFamily.setup`` of SD)."""
    check_decision_grid(hparams["thresholds"], hparams["median_widths"])
    resolve_frame_shift(hparams)
    datasets = diarization_dataio_prepare(hparams)
    info = {f"{name}_recordings": data.recordings for name, data in datasets.items()}
    info.update({f"{name}_chunks": len(data) for name, data in datasets.items()})
    info["frame_shift"] = hparams["frame_shift"]
    return datasets, info


def score_at_best(brain, datasets, hparams):
    """Scores dev and test at the best dev checkpoint (RTTMs, posteriors, DER grid)."""
    brain.score_at_best(datasets, hparams["test_dataloader_opts"])


DIARIZATION_TASK = TaskFamily(DiarizationBrain, setup_diarization_task, score_at_best)
