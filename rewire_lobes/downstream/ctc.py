"""Sequence transcription with CTC (ASR, SF): SUPERB's BLSTM-CTC head on an SSL upstream.

``CTCBrain`` trains ``RNNCTCHead`` with ``DownstreamBrain``'s schedule on the weighted
layer sum, with s3prl's SpecAugment on it during training and s3prl's length-aware
batches (``rewire_lobes.downstream.batching``). The splits named in ``cached_splits`` read
the frozen encoder's frames from the frame cache (the encoder runs once per utterance);
the others, and every split of a trainable upstream, run the encoder at every batch.

Decoding is greedy CTC as official s3prl (collapse repeats, then drop the blank). The
task's scorer (``rewire_lobes.downstream.ctc_scoring``) turns the ids into strings and
scores (ASR: WER/CER; SF: slot-type F1, slot-value CER ...). After training, dev and test
are decoded at the best dev checkpoint and their ``<split>-hyp.ark`` / ``<split>-ref.ark``
written in s3prl's format; re-decoding dev must reproduce the best dev score, which is
checked and recorded.
"""

import hashlib
import logging
from pathlib import Path

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process, run_on_main

from rewire_lobes.data.audio import SAMPLE_RATE
from rewire_lobes.downstream.batching import length_buckets, sliding_windows
from rewire_lobes.downstream.core import TaskFamily
from rewire_lobes.downstream.ctc_decoding import greedy_ctc
from rewire_lobes.data.fractions import check_fraction
from rewire_lobes.data.manifests import read_manifest, write_manifest
from rewire_lobes.downstream.dataio import audio_pipeline, label_inventory, write_train_subset
from rewire_lobes.downstream.frame_level import FrameLevelBrain
from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.text.characters import CharacterTokenizer
from rewire_lobes.text.slots import SlotCharacterTokenizer
from rewire_lobes.text.subwords import SubwordTokenizer, train_sentencepiece

logger = logging.getLogger(__name__)

BATCHING = ("length_buckets", "sliding_windows")


class CTCBrain(FrameLevelBrain):
    """SUPERB's BLSTM-CTC head (ASR, SF) on an SSL upstream.

    Extra hyperparameters: ``featurizer``, ``head`` (``RNNCTCHead``), ``tokenizer`` (its
    ``blank_index`` is the CTC blank), ``scorer_class`` (called with the tokenizer),
    ``specaug`` (``FeatureSpecAugment``) and ``use_specaug``, ``batching`` (``length_buckets`` for
    ASR, ``sliding_windows`` for SF), ``batch_size``, ``half_batch_above`` (samples),
    ``output_folder``, and ``FrameLevelBrain``'s (the frame cache).
    """

    target_keys = ("tokens", "token_len")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.hparams.batching not in BATCHING:
            raise OptionError(f"--batching must be one of {', '.join(BATCHING)}, "
                              f"got {self.hparams.batching!r}")
        self.tokenizer = self.hparams.tokenizer
        self.scorer = None

    def train_batches(self, dataset):
        """s3prl's batches of the training set (``length_buckets`` or ``sliding_windows``)."""
        rows = [dataset.data[data_id] for data_id in dataset.data_ids]
        samples = [round(float(row["duration"]) * SAMPLE_RATE) for row in rows]
        size, half = int(self.hparams.batch_size), int(self.hparams.half_batch_above)
        if self.hparams.batching == "length_buckets":
            return length_buckets(samples, size, half)
        targets = [len(self.hparams.encode_targets(self.tokenizer, data_id, row))
                   for data_id, row in zip(dataset.data_ids, rows)]
        return sliding_windows(targets, samples, size, half)

    # ------------------------------------------------------------------ model
    def compute_forward(self, batch, stage):
        hidden, frame_lens = self.hidden_states(batch.to(self.device))
        features = self.modules.featurizer(hidden)
        if stage == sb.Stage.TRAIN and self.hparams.use_specaug:
            features = self.hparams.specaug(features, frame_lens)
        logits = self.modules.head(features, frame_lens)
        return F.log_softmax(logits.float(), dim=-1), frame_lens

    def compute_objectives(self, predictions, batch, stage):
        log_probs, frame_lens = predictions
        tokens = batch.tokens.data
        token_lens = batch.token_len.to(tokens.device).long()
        # s3prl: nn.CTCLoss(blank, zero_infinity=True), mean over the batch of the
        # per-utterance loss divided by its target length.
        loss = F.ctc_loss(log_probs.transpose(0, 1), tokens, frame_lens.long(), token_lens,
                          blank=self.tokenizer.blank_index, reduction="mean",
                          zero_infinity=True)
        if stage != sb.Stage.TRAIN:
            hypotheses = greedy_ctc(log_probs.detach(), frame_lens, self.tokenizer.blank_index)
            references = [row[:length].tolist() for row, length in zip(tokens, token_lens)]
            self.scorer.append(batch.id, hypotheses, references)
        return loss

    def reset_scores(self, stage):
        self.scorer = self.hparams.scorer_class(self.tokenizer)

    def summarize_scores(self, stage):
        return self.scorer.summarize()

    # ------------------------------------------------------------------ transcripts
    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TEST or self.final_split is None:
            return super().on_stage_end(stage, stage_loss, epoch)
        split = self.final_split
        if if_main_process():
            self.scorer.write(Path(self.hparams.output_folder), split)
        if split == "test":
            return super().on_stage_end(stage, stage_loss, epoch)
        self.check_dev_rescore(self.summarize_scores(stage), "dev_scores_at_best")
        return None


def encode_transcript(tokenizer, data_id, row):
    """ASR targets: the ``wrd`` column."""
    return tokenizer.encode(row["wrd"], data_id=data_id)


def encode_slots(tokenizer, data_id, row):
    """SF targets: the ``wrd`` words with their ``slots`` tags."""
    return tokenizer.encode(row["wrd"].split(), row["slots"].split(), data_id=data_id)


def target_pipeline(tokenizer, encode_targets, columns):
    """``tokens`` (LongTensor) and ``token_len`` from a manifest row's ``columns``."""

    @sb.utils.data_pipeline.takes("id", *columns)
    @sb.utils.data_pipeline.provides("tokens", "token_len")
    def encode(data_id, *values):
        ids = encode_targets(tokenizer, data_id, dict(zip(columns, values)))
        yield torch.tensor(ids, dtype=torch.long)
        yield len(ids)

    return encode


# ---------------------------------------------------------------------- data
def write_training_rows(train_csv, subset_csv, fraction, seed, stratify_column, quota,
                        excluded):
    """Writes the ``fraction`` draw of ``train_csv`` less the ``excluded`` ids to
    ``subset_csv``; returns the counts for results.json: drawn, left out, and listed
    but not in the training split at all (warned: a list made for other data?).

    The draw is made on the whole training split and the exclusions are taken from it
    afterwards, so that two encoders with different exclusions train on the same draw
    less their own exclusions (the paper's ASR at 100 %: 76 % of train-clean-100).
    """
    rows = write_train_subset(train_csv, subset_csv, fraction, seed, stratify_column,
                              quota=quota)
    unknown = set(excluded) - {row["ID"] for row in read_manifest(train_csv)}
    if unknown:
        logger.warning("%d of the %d utterances to leave out are not in %s (e.g. %s): a list "
                       "made for other data?", len(unknown), len(excluded), train_csv,
                       sorted(unknown)[:3])
    kept = [row for row in rows if row["ID"] not in excluded]
    if not kept:
        raise OptionError(f"{subset_csv}: every one of the {len(rows)} drawn training "
                          "utterances is excluded (exclude_utterances)")
    if len(kept) != len(rows):
        write_manifest(subset_csv, kept, fieldnames=list(rows[0].keys()))
    return {"train_drawn": len(rows), "train_excluded": len(rows) - len(kept),
            "excluded_not_in_train": len(unknown)}


def ctc_dataio_prepare(hparams, excluded=frozenset()):
    """Train (the fraction draw less ``excluded``), dev and test datasets with audio.

    Targets are added by :func:`add_targets` once the tokenizer exists (a SentencePiece
    model is trained on the training transcripts). Dev and test are sorted by duration,
    so that an evaluation batch holds little padding.
    """
    check_fraction(hparams["fraction"])
    folder = Path(hparams["manifest_folder"])
    subset_csv = Path(hparams["output_folder"]) / "train_subset.csv"
    counts = run_on_main(
        write_training_rows,
        args=[folder / "train.csv", subset_csv, hparams["fraction"], hparams["seed"],
              hparams["stratify_column"], hparams["fraction_quota"], set(excluded)],
    )
    from_csv = sb.dataio.dataset.DynamicItemDataset.from_csv
    datasets = {
        "train": from_csv(csv_path=str(subset_csv)),
        "dev": from_csv(csv_path=str(folder / "dev.csv")).filtered_sorted(sort_key="duration"),
        "test": from_csv(csv_path=str(folder / "test.csv")).filtered_sorted(sort_key="duration"),
    }
    sb.dataio.dataset.add_dynamic_item(list(datasets.values()), audio_pipeline(hparams["gain_db"]))
    datasets["train"].counts = counts
    return datasets


def add_targets(datasets, tokenizer, hparams):
    """Adds the ``tokens``/``token_len`` pipeline of ``tokenizer`` to every split.

    Every row is encoded once first, so that a transcript the vocabulary cannot spell
    stops the run now, naming the utterance, rather than at its first batch.
    """
    encode = hparams["encode_targets"]
    for dataset in datasets.values():
        for data_id in dataset.data_ids:
            encode(tokenizer, data_id, dataset.data[data_id])
    sb.dataio.dataset.add_dynamic_item(
        list(datasets.values()),
        target_pipeline(tokenizer, hparams["encode_targets"], list(hparams["target_columns"])))


def add_head(hparams, tokenizer):
    """The BLSTM-CTC head for the tokenizer's vocabulary, in ``modules`` and the checkpointer."""
    head = hparams["head_class"](num_outputs=tokenizer.size)
    hparams["tokenizer"] = tokenizer
    hparams["modules"]["head"] = head
    hparams["checkpointer"].add_recoverable("head", head)
    return head


def setup_ctc_task(hparams):
    """From the prepared manifests to the training-ready splits (``TaskFamily.setup`` of ASR
    and SF): the training set less the excluded utterances (``exclude_utterances``), the
    tokenizer, the targets and the head."""
    check_unit(hparams["task"], hparams["unit"])
    excluded, exclusion_info = resolve_exclusions(hparams["exclude_utterances"],
                                                  hparams["upstream_source"])
    datasets = ctc_dataio_prepare(hparams, excluded)
    tokenizer = build_tokenizer(hparams, datasets["train"])
    add_head(hparams, tokenizer)
    add_targets(datasets, tokenizer, hparams)
    info = {f"{name}_items": len(data) for name, data in datasets.items()}
    info.update(getattr(datasets["train"], "counts", {}))
    info["vocabulary_size"] = tokenizer.size
    info.update(exclusion_info)
    return datasets, info


def score_at_best(brain, datasets, hparams):
    """Decodes dev and test at the best dev checkpoint (hypothesis/reference arks,
    per-utterance file, results.json)."""
    brain.score_at_best(datasets, hparams["test_dataloader_opts"])


CTC_TASK = TaskFamily(CTCBrain, setup_ctc_task, score_at_best)


# ---------------------------------------------------------------------- targets
UNITS = {"ASR": ("characters", "sentencepiece"), "SF": ("slot_characters",)}


def check_unit(task, unit):
    """Refuses a ``--unit`` that the task's targets cannot be written in."""
    allowed = UNITS.get(task, ())
    if unit not in allowed:
        raise OptionError(f"--unit {unit!r} does not serve {task}: use one of "
                          f"{', '.join(allowed) or '(none)'}")


def build_tokenizer(hparams, train_dataset):
    """The tokenizer of ``hparams["unit"]``.

    ``characters``: s3prl's ASR characters; ``sentencepiece``: a model trained on the
    training transcripts of this run (``<output_folder>/tokenizer/``; the same transcripts
    give the same model, so a rerun finds it unchanged); ``slot_characters``: s3prl's SF
    characters and the slot tags of the prepared ``labels.json``.
    """
    unit = hparams["unit"]
    if unit == "characters":
        return CharacterTokenizer()
    if unit == "slot_characters":
        slot_types = label_inventory(hparams["manifest_folder"], ["slot_types"])["slot_types"]
        return SlotCharacterTokenizer(slot_types)
    if unit == "sentencepiece":
        texts = [train_dataset.data[data_id]["wrd"] for data_id in train_dataset.data_ids]
        prefix = Path(hparams["output_folder"]) / "tokenizer" / "units"
        if not Path(f"{prefix}.model").is_file():  # a resumed run keeps the model it used
            run_on_main(train_sentencepiece,
                        args=[texts, str(prefix), int(hparams["sentencepiece_vocab_size"])],
                        kwargs={"model_type": hparams["sentencepiece_model_type"]})
        return SubwordTokenizer(f"{prefix}.model")
    raise OptionError(f"--unit must be one of characters, sentencepiece, slot_characters, "
                      f"got {unit!r}")


def resolve_exclusions(option, upstream_source):
    """``(ids, info)``: the training utterances to leave out, and what results.json says.

    ``auto``: the utterances the encoder was rewired on, when its ``rewiring.json`` lists
    them (none for a baseline); ``none``: nothing; any other value: a file of ids, one
    per line.
    """
    from rewire_lobes.data.librispeech import rewiring_exclusions

    text = "none" if option is None else str(option)
    if text == "auto":
        ids, info = rewiring_exclusions(upstream_source)
        return set(ids), {"exclusions": {"rule": "auto", **info}}
    if text == "none":
        return set(), {"exclusions": {"rule": "none"}}
    path = Path(text).expanduser()
    if not path.is_file():
        raise OptionError(f"--exclude_utterances {option}: no such file (give auto, none, or "
                          "a file of utterance ids, one per line)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataFileError(f"{path}: not a UTF-8 list of utterance ids ({err})") from None
    ids = {line.strip() for line in text.splitlines() if line.strip()}
    return ids, {"exclusions": {"rule": "file", "file": str(path.resolve()),
                                "sha256": hashlib.sha256(raw).hexdigest(), "listed": len(ids)}}


def exclusion_identity(hparams, run_opts):
    """``identity_extras`` of the CTC recipes: the digest of the list of left-out utterances,
    so that a run folder trained without one set is never resumed with another."""
    _, info = resolve_exclusions(hparams["exclude_utterances"], hparams["upstream_source"])
    record = info["exclusions"]
    return {"exclusion_list_sha256": record.get("sha256") or record.get("excluded_sha256")}
