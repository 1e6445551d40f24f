"""What the paper's grid costs, on paper: FLOPs counted, GPU throughput assumed.

The FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` runs
the real modules (a transformers ``Wav2Vec2Model`` of wav2vec2-large-lv60's shape with
random weights, the recipes' own heads) on real shapes. It counts the matrix products,
convolutions and attention products (eager attention: CPU's fused attention kernel has no
FLOP formula) and nothing elementwise (norms, activations, softmax, losses). nn.LSTM is
counted with oneDNN off, so that it runs as matrix products the counter sees. The sweeps
run on the ``meta`` device (shapes only, no arithmetic, identical counts); a CPU fp32 run
of the same model checks that the two agree (:func:`cpu_check`).

An encoder's FLOPs on an item of ``T`` seconds are a quadratic ``a + b T + c T^2``
(attention is quadratic in the frames), fitted on counts at a few lengths
(:func:`fit_encoder`): a split's FLOPs are then exact from its item count, seconds and
sum of squared seconds (:class:`Audio`), whether the durations come from prepared
manifests or from assumed means.

What a cell runs, as the recipes run it (hparams/*.yaml, ``schedule.paper_step_budget``):

* a downstream cell (encoder x task x fraction x seed) extracts its training draw once
  (the caches are keyed by the draw's manifest, which the fraction and the seed decide),
  trains the head for the paper's update budget on the cached features, and evaluates dev
  every ``eval_every_steps``: ASR, SF and SD cache the training split only
  (``cached_splits: [train]``), so the encoder runs over dev at every evaluation and over
  dev and test once more at the best checkpoint; KS encodes its ``_silence_`` random crops
  on the fly (a class-balanced sampler gives them 1/12 of the draws);
* shared per encoder x task: the pooled dev and test caches of KS and IC, and the
  representation analysis (``utils/representations.py``, at most 5,000 training items);
* a rewiring cell per strategy: its updates x 2 views x pairs per batch, forward and
  backward, every parameter trained (``freeze_feature_encoder: False``);
* a QbE cell per encoder: the forward pass over documents and queries, and the DTW
  matching, whose rate was measured on a CPU only (docs/benchmarks.md).

GPU time is FLOPs / (MFU x peak), at assumed MFUs: nothing here was timed on a GPU.
"""

import csv
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rewire_lobes.downstream.schedule import paper_step_budget
from rewire_lobes.errors import DataFileError, DataFolderError, OptionError, UserError
from rewire_lobes.runs.provenance import BASELINE, REWIRING_STRATEGIES

REPO = Path(__file__).resolve().parents[2]
SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 50  # 320-sample frames
PEAK_BF16_DENSE = 989e12  # H100 / H200 SXM, bf16 dense (no sparsity), FLOP/s
TASKS = ("KS", "IC", "ASR", "SF", "SD", "QbE")
TRAINED_TASKS = ("KS", "IC", "ASR", "SF", "SD")
POOLED_TASKS = frozenset({"KS", "IC"})  # the cache holds per-layer means: the head sees [L+1, D]
REWIRE_STRATEGIES = REWIRING_STRATEGIES
ENCODER_MODES = ("forward", "train_frozen_cnn", "train")
FIT_SECONDS = (1.0, 4.0, 16.0, 40.0)  # SD's chunks reach 40 s
CHECK_SECONDS = (1.0, 2.0, 4.0)
ANALYSIS_MAX_ITEMS = 5000  # utils/representations.py --max_items
HEAD_OUTPUTS = {
    "IC": 24,  # 6 actions + 14 objects + 4 locations (superb_protocol.md §3)
    "ASR": 32,  # s3prl's char.dict: 28 symbols + 4 specials (§1)
    "SF": 109,  # 3 specials + 28 characters + B-/E- of 39 slot types (§4)
}
KS_NOISE_ITEMS = 6  # _background_noise_/*.wav: one _silence_ item each, train and dev (§2)
KS_CROP_SECONDS = 1.0
# QbE matching, measured on this project's 2-core CPU VM (docs/benchmarks.md, QbE):
# "ours", 1024-dim, two threads, queries of 50-100 frames x documents of 300-600 frames.
QBE_CPU_PAIRS_PER_SECOND = 1478.0
QBE_CPU_REFERENCE = {"query_frames": 75.0, "document_frames": 450.0, "dims": 1024}


# ----------------------------------------------------------------------------------------
# Counting
# ----------------------------------------------------------------------------------------


def count_flops(run):
    """FLOPs that ``run()`` performs, as ``FlopCounterMode`` counts them.

    oneDNN is off while counting, so nn.LSTM runs as the matrix products the counter sees
    (its fused oneDNN kernel has no FLOP formula and would count as zero).

    Example
    -------
    >>> lstm = torch.nn.LSTM(8, 4, batch_first=True)
    >>> count_flops(lambda: lstm(torch.zeros(1, 3, 8))) == 3 * 2 * 4 * 4 * (8 + 4)
    True
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # oneDNN's TF32 notice
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as mode:
            run()
    return int(mode.get_total_flops())


def encoder_model(config, device="cpu", seed=0):
    """A randomly initialised ``Wav2Vec2Model`` of ``config`` in eval mode, on ``device``.

    Eager attention, so that the attention products are counted; no layerdrop or
    SpecAugment masking, as the recipes run it (``SSLUpstream``).
    """
    import transformers

    config = config.__class__.from_dict(config.to_dict())
    config.layerdrop = 0.0
    config.apply_spec_augment = False
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = transformers.AutoModel.from_config(config)
    return model.eval()


def encoder_flops(model, seconds, mode="forward", batch=1):
    """FLOPs of ``model`` on ``batch`` items of ``seconds`` of audio.

    ``mode``: ``forward`` (frozen, ``torch.no_grad``), ``train_frozen_cnn`` (forward and
    backward, CNN feature encoder fixed, as s3prl fine-tunes) or ``train`` (every
    parameter, as the rewiring). The backward starts from the mean of all hidden states,
    as the rewiring's pooled loss does.
    """
    if mode not in ENCODER_MODES:
        raise ValueError(f"mode must be one of {ENCODER_MODES}, got {mode!r}")
    device = next(model.feature_extractor.parameters()).device  # masked_spec_embed is on the CPU
    wavs = torch.randn(batch, round(seconds * SAMPLE_RATE), device=device)

    def forward():
        with torch.no_grad():
            model(wavs, output_hidden_states=True)

    def train():
        model.requires_grad_(True)
        model.feature_extractor._requires_grad = True
        if mode == "train_frozen_cnn":
            model.freeze_feature_encoder()
        output = model(wavs, output_hidden_states=True)
        torch.stack(output.hidden_states).mean().backward()

    try:
        return count_flops(forward if mode == "forward" else train)
    finally:
        model.zero_grad(set_to_none=True)


@dataclasses.dataclass(frozen=True)
class Quadratic:
    """FLOPs of one item of ``T`` seconds: ``a + b T + c T^2``.

    Example
    -------
    >>> q = Quadratic(0.0, 2.0, 1.0)
    >>> q(3.0), q.per_second(3.0), q.over(Audio(2, 6.0, 18.0))
    (15.0, 5.0, 30.0)
    """

    a: float
    b: float
    c: float

    def __call__(self, seconds):
        return self.a + self.b * seconds + self.c * seconds * seconds

    def per_second(self, seconds):
        return self(seconds) / seconds

    def over(self, audio):
        """Summed over the items of an :class:`Audio`: exact for any durations."""
        return self.a * audio.items + self.b * audio.seconds + self.c * audio.square_seconds


def fit_quadratic(seconds, flops):
    """Least-squares :class:`Quadratic` through ``(seconds, flops)``; and its largest
    relative residual."""
    seconds = np.asarray(seconds, dtype=float)
    flops = np.asarray(flops, dtype=float)
    design = np.stack([np.ones_like(seconds), seconds, seconds**2], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, flops, rcond=None)
    fit = Quadratic(float(a), float(b), float(c))
    residual = max(abs(fit(s) - f) / f for s, f in zip(seconds, flops))
    return fit, float(residual)


@dataclasses.dataclass(frozen=True)
class EncoderFlops:
    """An encoder's counted FLOPs: one :class:`Quadratic` per mode and the counts fitted."""

    fits: Mapping[str, Quadratic]
    counts: Mapping[str, Mapping[float, int]]
    residuals: Mapping[str, float]
    num_layers: int
    hidden_size: int

    @property
    def num_states(self):
        return self.num_layers + 1

    def attention_coefficient(self):
        """Analytic ``c`` of the forward pass: ``QK^T`` and ``AV``, ``4 N^2 D`` per layer
        for ``N = 50 T`` frames (a check on the fitted one)."""
        return 4.0 * self.num_layers * self.hidden_size * FRAMES_PER_SECOND**2


def fit_encoder(config, seconds=FIT_SECONDS, modes=ENCODER_MODES, device="meta"):
    """Counts ``config``'s encoder at ``seconds`` in each mode and fits the quadratics."""
    model = encoder_model(config, device=device)
    counts = {mode: {s: encoder_flops(model, s, mode) for s in seconds} for mode in modes}
    fits, residuals = {}, {}
    for mode, by_length in counts.items():
        fits[mode], residuals[mode] = fit_quadratic(list(by_length), list(by_length.values()))
    return EncoderFlops(fits, counts, residuals, config.num_hidden_layers, config.hidden_size)


def cpu_check(config, meta_counts, seconds=CHECK_SECONDS, train_seconds=2.0):
    """Counts the encoder built in fp32 on the CPU: forward at ``seconds``, and forward and
    backward (CNN frozen) at ``train_seconds``; each count is compared with the ``meta``
    device's (``meta_counts``: ``{mode: {seconds: flops}}``) and must equal it.

    Returns ``{mode: {seconds: flops}}`` of the CPU run.
    """
    model = encoder_model(config, device="cpu")
    wanted = {"forward": tuple(seconds), "train_frozen_cnn": (train_seconds,)}
    counted = {mode: {s: encoder_flops(model, s, mode) for s in lengths}
               for mode, lengths in wanted.items()}
    for mode, by_length in counted.items():
        for length, flops in by_length.items():
            expected = meta_counts.get(mode, {}).get(length)
            if expected is not None and expected != flops:
                raise RuntimeError(f"{mode} at {length} s: {flops} FLOPs on the CPU but "
                                   f"{expected} on the meta device")
    return counted


def meta_counts_at(config, lengths_by_mode):
    """``{mode: {seconds: flops}}`` on the meta device, for :func:`cpu_check`."""
    model = encoder_model(config, device="meta")
    return {mode: {s: encoder_flops(model, s, mode) for s in lengths}
            for mode, lengths in lengths_by_mode.items()}


# ----------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeadFlops:
    """A head's FLOPs, featurizer included: per item (pooled heads) plus per second of
    frames (frame-level heads)."""

    forward_per_item: float = 0.0
    train_per_item: float = 0.0
    forward_per_second: float = 0.0
    train_per_second: float = 0.0

    def forward(self, audio):
        return self.forward_per_item * audio.items + self.forward_per_second * audio.seconds

    def train(self, audio):
        return self.train_per_item * audio.items + self.train_per_second * audio.seconds


def build_head(task, hparams, input_dim):
    """The recipe's head for ``task`` (SUPERB sizes read from its yaml), and whether it
    reads per-frame features (True) or pooled ones."""
    from rewire_lobes.downstream.heads import RNNCTCHead, SpeakerActivityHead, UtteranceLevelHead

    if task in POOLED_TASKS:
        outputs = HEAD_OUTPUTS.get(task) or len(hparams["keywords"]) + 2  # + unknown, silence
        return UtteranceLevelHead(input_dim, outputs, projector_dim=hparams["projector_dim"]), False
    if task in ("ASR", "SF"):
        return RNNCTCHead(input_dim, HEAD_OUTPUTS[task], projector_dim=hparams["projector_dim"],
                          hidden_sizes=[hparams["rnn_dim"]] * hparams["rnn_layers"],
                          dropout=hparams["rnn_dropout"]), True
    if task == "SD":
        return SpeakerActivityHead(input_dim, hparams["num_speakers"], hparams["rnn_dim"],
                                   hparams["rnn_layers"]), True
    raise ValueError(f"{task} trains no head")


def head_flops(task, hparams, num_states, hidden_size, seconds=1.0, batch=1, frames=None,
               device="meta"):
    """Counted :class:`HeadFlops` of ``task``'s weighted layer sum and head.

    ``frames``: count a pooled head (KS, IC) on per-frame features instead (``True``), as
    when the encoder runs at every step; ``None`` follows the recipe (cached pooled
    features for KS and IC).
    """
    from rewire_lobes.upstream.encoder import WeightedLayerSum

    with torch.device(device):
        head, frame_level = build_head(task, hparams, hidden_size)
        featurizer = WeightedLayerSum(num_states)
    frame_level = frame_level if frames is None else frames
    num_frames = round(seconds * FRAMES_PER_SECOND)
    shape = (num_states, batch, num_frames, hidden_size) if frame_level else (
        num_states, batch, hidden_size)
    hidden = torch.randn(*shape, device=device)
    lengths = torch.full((batch,), num_frames, device=device)

    def forward():
        features = featurizer(hidden)
        if not frame_level:
            return head(features)
        return head(features) if task == "SD" else head(features, lengths)

    def no_grad_forward():
        with torch.no_grad():
            forward()

    forward_flops = count_flops(no_grad_forward)
    train_flops = count_flops(lambda: forward().float().mean().backward())
    if frame_level:
        return HeadFlops(forward_per_second=forward_flops / (batch * seconds),
                         train_per_second=train_flops / (batch * seconds))
    return HeadFlops(forward_per_item=forward_flops / batch, train_per_item=train_flops / batch)


# ----------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Audio:
    """Items of audio: how many, their seconds and the sum of their squared seconds (the
    attention term), and where the figure comes from."""

    items: float
    seconds: float
    square_seconds: float
    source: str = "assumed"

    @classmethod
    def of_mean(cls, items, mean_seconds, source="assumed"):
        return cls(items, items * mean_seconds, items * mean_seconds**2, source)

    @property
    def hours(self):
        return self.seconds / 3600.0

    @property
    def mean_seconds(self):
        return self.seconds / self.items if self.items else 0.0

    def scaled(self, share):
        """A uniform draw of ``share`` of the items (in expectation)."""
        return dataclasses.replace(self, items=self.items * share, seconds=self.seconds * share,
                                   square_seconds=self.square_seconds * share)

    def with_hours(self, hours, source):
        """The same items, each ``hours / self.hours`` times as long."""
        ratio = hours / self.hours
        return Audio(self.items, self.seconds * ratio, self.square_seconds * ratio**2, source)


TASK_SPLITS = {task: ("train", "dev", "test") for task in TRAINED_TASKS}
TASK_SPLITS["QbE"] = ("documents", "dev", "eval")

# (items, assumed mean seconds). Items: superb_protocol.md (§1-§5, from the HF dataset card
# and the fork's data dirs) and docs/benchmarks.md (QbE: the QUESST 2014 overview's totals,
# all languages, an upper bound for the English subset). Every duration is an assumption.
DEFAULT_AUDIO = {
    "KS": {"train": (51_094, 1.0), "dev": (6_798, 1.0), "test": (3_081, 1.0)},
    "IC": {"train": (23_132, 2.3), "dev": (3_118, 2.3), "test": (3_793, 2.3)},
    "ASR": {"train": (28_539, 100.6 * 3600 / 28_539), "dev": (2_703, 7.2), "test": (2_620, 7.2)},
    "SF": {"train": (104_672, 3.5), "dev": (2_800, 3.5), "test": (2_800, 3.5)},
    "SD": {"train": (13_900, 15.0), "dev": (3_000, 13.2), "test": (3_000, 13.2)},
    "QbE": {"documents": (12_492, 23 * 3600 / 12_492), "dev": (560, 1.5), "eval": (555, 1.5)},
}
DURATION_BASIS = {
    "KS": "clips are at most 1 s (superb_protocol.md §2): 1.0 s, an upper bound",
    "IC": "2.3 s per command: assumed, no source in this project",
    "ASR": "train 100.6 h (as docs/benchmarks.md states for train-clean-100); dev and test "
           "7.2 s per utterance: assumed",
    "SF": "3.5 s per sentence: assumed, no source in this project",
    "SD": "train 15.0 s, dev and test 13.2 s per mixture (the longer of two LibriSpeech "
          "utterances, all under 40 s): assumed, no source in this project",
    "QbE": "documents about 23 h (docs/benchmarks.md, all languages: an upper bound for "
           "nnenglish); queries 1.5 s: assumed",
}


def default_audio(tasks=TASKS):
    """``{task: {split: Audio}}`` of the assumed sizes."""
    return {task: {split: Audio.of_mean(items, mean, "assumed")
                   for split, (items, mean) in DEFAULT_AUDIO[task].items()} for task in tasks}


def parse_hours(pairs):
    """``["KS=14.2", "ASR.train=100.6"]`` → ``{("KS", None): 14.2, ("ASR", "train"): 100.6}``."""
    parsed = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        task, _, split = key.partition(".")
        if not sep or task not in TASKS or (split and split not in TASK_SPLITS[task]):
            raise OptionError(
                f"--hours {pair!r}: expected TASK=HOURS or TASK.SPLIT=HOURS with TASK one of "
                f"{' '.join(TASKS)} and SPLIT one of its splits (QbE: documents, dev, eval)")
        try:
            hours = float(value)
        except ValueError:
            hours = float("nan")
        if not hours > 0 or math.isinf(hours):
            raise OptionError(f"--hours {pair!r}: the hours must be a positive number")
        parsed[(task, split or None)] = hours
    return parsed


def apply_hours(audio, hours):
    """``audio`` with the ``--hours`` overrides: ``TASK.SPLIT`` sets that split's hours,
    ``TASK`` the task's total, shared between its splits as before."""
    audio = {task: dict(splits) for task, splits in audio.items()}
    for (task, split), value in hours.items():
        if task not in audio:
            continue
        splits = audio[task]
        if split is not None:
            splits[split] = splits[split].with_hours(value, "--hours")
            continue
        ratio = value / sum(a.hours for a in splits.values())
        for name, part in splits.items():
            splits[name] = part.with_hours(part.hours * ratio, "--hours")
    return audio


def manifest_folder(manifest_root, task):
    """The one prepared folder ``<manifest_root>/<task>/<options hash>/``, or None."""
    first = TASK_SPLITS[task][0]
    found = sorted(p.parent for p in (Path(manifest_root) / task).glob(f"*/{first}.csv"))
    if len(found) > 1:
        raise DataFolderError(
            f"{Path(manifest_root) / task}: {len(found)} prepared folders "
            f"({', '.join(p.name for p in found)}); keep one or give --hours {task}=...")
    return found[0] if found else None


def manifest_audio(path):
    """:class:`Audio` of one manifest CSV: its rows and ``duration`` column (a random-crop
    row counts its crop, ``random_crop`` samples, as the recipe reads it)."""
    items, seconds, square = 0, 0.0, 0.0
    with open(path, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        if "duration" not in (reader.fieldnames or ()):
            raise DataFileError(f"{path}: no 'duration' column")
        for row in reader:
            try:
                crop = (row.get("random_crop") or "").strip()
                duration = int(crop) / SAMPLE_RATE if crop else float(row["duration"])
            except ValueError:
                raise DataFileError(f"{path}: row {row.get('ID', items + 1)!r} has no "
                                    "number in 'duration' or 'random_crop'") from None
            items += 1
            seconds += duration
            square += duration * duration
    return Audio(items, seconds, square, f"manifest {path}")


def audio_from_manifests(audio, manifest_root):
    """``audio`` with every task whose prepared manifests are under ``manifest_root``
    replaced by their summed durations (the others keep their figures)."""
    if not Path(manifest_root).is_dir():
        raise DataFolderError(f"--manifest_root {manifest_root}: no such folder")
    audio = {task: dict(splits) for task, splits in audio.items()}
    for task in audio:
        folder = manifest_folder(manifest_root, task)
        if folder is None:
            continue
        for split in TASK_SPLITS[task]:
            path = folder / f"{split}.csv"
            if not path.exists():
                raise DataFolderError(f"{folder}: no {split}.csv beside {TASK_SPLITS[task][0]}.csv")
            audio[task][split] = manifest_audio(path)
    return audio


# ----------------------------------------------------------------------------------------
# The recipes' settings
# ----------------------------------------------------------------------------------------


def read_hparams(task_or_strategy, root=REPO):
    """The top-level plain values of ``hparams/<name>.yaml`` (tags such as ``!ref`` are
    left as ruamel objects and not used here)."""
    import ruamel.yaml

    path = Path(root) / "hparams" / f"{task_or_strategy.lower()}.yaml"
    with open(path, encoding="utf-8") as fin:
        return dict(ruamel.yaml.YAML().load(fin))


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    """How a task's recipe trains: items per update, dev cadence, what it caches."""

    task: str
    batch: int  # items per update, accumulation and s3prl's halving included
    eval_every: int
    cached_splits: Tuple[str, ...]
    head: HeadFlops
    num_classes: int = 0  # KS: the balanced sampler's classes (1/num_classes are _silence_)

    def updates(self, fraction):
        steps = paper_step_budget(self.task, fraction)
        if steps is None:
            raise OptionError(f"{self.task}: the paper gives no update budget at fraction "
                              f"{fraction} (it has 0.01, 0.05, 0.1 and 1)")
        return steps

    def evaluations(self, fraction):
        return math.ceil(self.updates(fraction) / self.eval_every)


def task_plan(task, hparams, head, train_mean_seconds):
    """The :class:`TaskPlan` of ``task`` from its yaml values."""
    batch = int(hparams["batch_size"])
    half_above = hparams.get("half_batch_above")
    if half_above is not None and train_mean_seconds * SAMPLE_RATE > int(half_above):
        batch //= 2  # s3prl halves a bucket whose longest item exceeds it (ASR: every one)
    batch *= int(hparams.get("grad_accumulation_factor") or 1)
    cached = ("train", "dev", "test") if task in POOLED_TASKS else tuple(hparams["cached_splits"])
    if not hparams.get("cache_features", True):
        cached = ()
    classes = len(hparams["keywords"]) + 2 if task == "KS" else 0
    return TaskPlan(task, batch, int(hparams["eval_every_steps"]), cached, head, classes)


# ----------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CellFlops:
    """One cell's FLOPs, by part: ``encoder`` parts run at the encoder's MFU, ``head`` parts
    at the head's."""

    encoder: Mapping[str, float]
    head: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def encoder_total(self):
        return sum(self.encoder.values())

    @property
    def head_total(self):
        return sum(self.head.values())

    @property
    def total(self):
        return self.encoder_total + self.head_total

    def gpu_hours(self, mfu, head_mfu, peak=PEAK_BF16_DENSE):
        return gpu_hours(self.encoder_total, mfu, peak) + gpu_hours(self.head_total, head_mfu, peak)


def gpu_hours(flops, mfu, peak=PEAK_BF16_DENSE):
    """Hours of one GPU that sustains ``mfu`` of ``peak`` FLOP/s.

    Example
    -------
    >>> gpu_hours(3600 * 1e12, mfu=0.5, peak=2e12)
    1.0
    """
    return flops / (mfu * peak) / 3600.0


def downstream_cell(plan, fraction, audio, forward):
    """:class:`CellFlops` of one run of ``plan`` at ``fraction``.

    ``audio``: the task's ``{split: Audio}``; ``forward``: the encoder's forward
    :class:`Quadratic`. The training draw is a uniform ``fraction`` of the training items.
    """
    steps = plan.updates(fraction)
    evaluations = plan.evaluations(fraction)
    train = audio["train"]
    encoder = {"train features": forward.over(train.scaled(fraction))}
    on_the_fly = sum(forward.over(audio[split]) * (evaluations + 1 if split == "dev" else 1)
                     for split in ("dev", "test") if split not in plan.cached_splits)
    if on_the_fly:
        encoder["dev/test on the fly"] = on_the_fly
    if plan.task == "KS":
        crops = steps * plan.batch / plan.num_classes + evaluations * KS_NOISE_ITEMS
        encoder["_silence_ crops"] = crops * forward(KS_CROP_SECONDS)
    per_update = Audio.of_mean(plan.batch, train.mean_seconds)
    head = {
        "training": steps * plan.head.train(per_update),
        "evaluation": (evaluations + 1) * plan.head.forward(audio["dev"])
                      + plan.head.forward(audio["test"]),
    }
    return CellFlops(encoder, head)


def shared_cell(plan, audio, forward, analysis_items=ANALYSIS_MAX_ITEMS):
    """What one encoder x task pays once, whatever the fractions and seeds: the cached dev
    and test (KS, IC) and the representation analysis of the training set."""
    cached = sum(forward.over(audio[split]) for split in ("dev", "test")
                 if split in plan.cached_splits)
    train = audio["train"]
    sample = train.scaled(min(1.0, analysis_items / train.items))
    return CellFlops({"dev/test features": cached, "analysis": forward.over(sample)})


def rewiring_cell(hparams, encoder, view_seconds=None, pairs=None):
    """:class:`CellFlops` of one rewiring run: its updates x 2 views x pairs per batch,
    every view padded to ``view_seconds`` (default: the yaml's ``split_samples``, the
    longest a view can be)."""
    steps = int(hparams["max_steps"])
    pairs = int(pairs or hparams["batch_size"])
    if view_seconds is None:
        view_seconds = int(hparams["split_samples"]) / SAMPLE_RATE
    mode = "train_frozen_cnn" if hparams.get("freeze_feature_encoder") else "train"
    views = Audio.of_mean(2 * pairs, view_seconds)
    return CellFlops({"forward and backward": steps * encoder.fits[mode].over(views)})


def qbe_cell(audio, encoder):
    """The QbE cell of one encoder: its forward pass over documents and queries (GPU), and
    the DTW matching of every state (CPU hours from the measured rate, scaled by query x
    document frames x dims). Returns ``(CellFlops, cpu_hours, distance_flops)``."""
    forward = encoder.fits["forward"]
    cell = CellFlops({"features": sum(forward.over(part) for part in audio.values())})
    documents = audio["documents"]
    queries = [audio["dev"], audio["eval"]]
    query_items = sum(q.items for q in queries)
    pairs = documents.items * query_items
    query_frames = sum(q.seconds for q in queries) / query_items * FRAMES_PER_SECOND
    document_frames = documents.mean_seconds * FRAMES_PER_SECOND
    scale = (query_frames * document_frames * encoder.hidden_size) / (
        QBE_CPU_REFERENCE["query_frames"] * QBE_CPU_REFERENCE["document_frames"]
        * QBE_CPU_REFERENCE["dims"])
    cpu_hours = pairs * encoder.num_states * scale / QBE_CPU_PAIRS_PER_SECOND / 3600.0
    distance_flops = (2.0 * pairs * query_frames * document_frames * encoder.hidden_size
                      * encoder.num_states)
    return cell, cpu_hours, distance_flops


# ----------------------------------------------------------------------------------------
# The grid
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class GridCost:
    """Every cell of a grid and what it costs."""

    tasks: Tuple[str, ...]
    strategies: Tuple[str, ...]
    fractions: Tuple[float, ...]
    seeds: int
    cells: Dict[Tuple[str, float], CellFlops]  # (task, fraction): one run of one encoder
    shared: Dict[str, CellFlops]  # task: once per encoder
    rewiring: Dict[str, CellFlops]  # strategy: once
    qbe: Optional[CellFlops] = None  # once per encoder
    qbe_cpu_hours: float = 0.0  # per encoder
    qbe_distance_flops: float = 0.0  # per encoder

    @property
    def encoders(self):
        return len(self.strategies)

    def downstream_runs(self):
        return self.encoders * self.seeds * len(self.cells)

    def parts(self, mfu, head_mfu, peak=PEAK_BF16_DENSE):
        """``{part: (cells, GPU-hours)}`` of the whole grid at these MFUs."""
        hours = lambda cell: cell.gpu_hours(mfu, head_mfu, peak)  # noqa: E731
        runs = self.encoders * self.seeds
        parts = {
            "rewiring": (len(self.rewiring), sum(hours(c) for c in self.rewiring.values())),
            "shared features (per encoder x task)": (
                self.encoders * len(self.shared),
                self.encoders * sum(hours(c) for c in self.shared.values())),
            "downstream runs": (self.downstream_runs(),
                                runs * sum(hours(c) for c in self.cells.values())),
        }
        if self.qbe is not None:
            parts["QbE features (GPU)"] = (self.encoders, self.encoders * hours(self.qbe))
        return parts

    def total_hours(self, mfu, head_mfu, peak=PEAK_BF16_DENSE):
        return sum(h for _, h in self.parts(mfu, head_mfu, peak).values())

    def wall_hours(self, gpus, mfu, head_mfu, peak=PEAK_BF16_DENSE):
        """Wall time on ``gpus`` GPUs, one cell per GPU at a time: the rewiring cells and the
        shared features gate the rest, then the independent cells spread evenly, but no
        faster than the longest of them."""
        hours = lambda cell: cell.gpu_hours(mfu, head_mfu, peak)  # noqa: E731
        rewiring = [hours(c) for c in self.rewiring.values()]
        gate = max(max(rewiring, default=0.0), sum(rewiring) / gpus)
        shared = self.encoders * sum(hours(c) for c in self.shared.values())
        gate += shared / gpus
        rest = self.total_hours(mfu, head_mfu, peak) - sum(rewiring) - shared
        longest = max([hours(c) for c in self.cells.values()]
                      + ([hours(self.qbe)] if self.qbe is not None else []), default=0.0)
        return gate + max(rest / gpus, longest)


def grid_cost(encoder, plans, audio, tasks, strategies, fractions, seeds, rewire_hparams,
              view_seconds=None, pairs=None):
    """:class:`GridCost` of ``tasks`` x ``strategies`` x ``fractions`` x ``seeds``.

    ``plans``: ``{task: TaskPlan}`` of the trained tasks; ``rewire_hparams``: ``{strategy:
    yaml values}`` of the rewired strategies.
    """
    forward = encoder.fits["forward"]
    trained = [t for t in tasks if t != "QbE"]
    cells = {(task, float(f)): downstream_cell(plans[task], float(f), audio[task], forward)
             for task in trained for f in fractions}
    shared = {task: shared_cell(plans[task], audio[task], forward) for task in trained}
    rewiring = {s: rewiring_cell(rewire_hparams[s], encoder, view_seconds, pairs)
                for s in strategies if s != BASELINE}
    cost = GridCost(tuple(tasks), tuple(strategies), tuple(float(f) for f in fractions),
                    int(seeds), cells, shared, rewiring)
    if "QbE" in tasks:
        cost.qbe, cost.qbe_cpu_hours, cost.qbe_distance_flops = qbe_cell(audio["QbE"], encoder)
    return cost


def check_grid_options(tasks, strategies, fractions, seeds, mfus, head_mfu, gpus):
    """Raises :class:`OptionError` for a value the cost model cannot price."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise OptionError(f"--tasks: unknown {unknown}; the tasks are {' '.join(TASKS)}")
    unknown = [s for s in strategies if s not in (BASELINE, *REWIRE_STRATEGIES)]
    if unknown:
        raise OptionError(f"--strategies: unknown {unknown}; the strategies are "
                          f"{BASELINE} {' '.join(REWIRE_STRATEGIES)}")
    for fraction in fractions:
        for task in tasks:
            if task != "QbE" and paper_step_budget(task, fraction) is None:
                raise OptionError(f"--fractions {fraction}: the paper gives {task} no update "
                                  "budget there (it has 0.01, 0.05, 0.1 and 1)")
    if seeds < 1:
        raise OptionError(f"--seeds must be a count >= 1, got {seeds}")
    if not all(0 < m <= 1 for m in (*mfus, head_mfu)):
        raise OptionError("--mfu and --head_mfu are shares of the peak, in (0, 1]")
    if not all(g >= 1 for g in gpus):
        raise OptionError("--gpus must be counts >= 1")


def plan_grid(tasks, audio, encoder, root=REPO, device="meta"):
    """``{task: TaskPlan}`` of the trained tasks in ``tasks``, heads counted on ``device``."""
    plans = {}
    for task in tasks:
        if task == "QbE":
            continue
        hparams = read_hparams(task, root)
        head = head_flops(task, hparams, encoder.num_states, encoder.hidden_size, device=device)
        plans[task] = task_plan(task, hparams, head, audio[task]["train"].mean_seconds)
    return plans


def require_tasks_audio(audio, tasks):
    """Every split of every task has audio to price."""
    for task in tasks:
        for split in TASK_SPLITS[task]:
            part = audio.get(task, {}).get(split)
            if part is None or part.items <= 0 or part.seconds <= 0:
                raise UserError(f"{task} {split}: no audio to price (an empty manifest?)")


# ----------------------------------------------------------------------------------------
# The estimate and its report
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Estimate:
    """Everything counted and priced for one grid."""

    encoder_name: str
    encoder: EncoderFlops
    checks: Mapping[str, Mapping[float, int]]  # meta counts at CHECK_SECONDS (and 2 s trained)
    cpu: Optional[Mapping[str, Mapping[float, int]]]  # the same, counted on the CPU
    plans: Mapping[str, TaskPlan]
    frame_heads: Mapping[str, HeadFlops]  # every trained task's head on per-frame features
    head_parameters: Mapping[str, int]
    audio: Mapping[str, Mapping[str, Audio]]
    rewire_hparams: Mapping[str, Mapping]
    cost: GridCost


def estimate(tasks=TASKS, strategies=(BASELINE, *REWIRE_STRATEGIES),
             fractions=(0.01, 0.05, 0.1, 1.0), seeds=1, hours=None, manifest_root=None,
             encoder_size="large", check_on_cpu=True, view_seconds=None, pairs=None, root=REPO):
    """Counts the encoder (``rewire_lobes.upstream.encoder.ENCODER_SIZES[encoder_size]``,
    wav2vec2-large-lv60's shape for ``large``) and the heads, and prices the grid."""
    from rewire_lobes.upstream.encoder import random_encoder_config

    tasks, strategies = tuple(dict.fromkeys(tasks)), tuple(dict.fromkeys(strategies))
    fractions = tuple(dict.fromkeys(float(f) for f in fractions))
    audio = default_audio(tasks)
    if manifest_root is not None:
        audio = audio_from_manifests(audio, manifest_root)
    audio = apply_hours(audio, parse_hours(hours))
    require_tasks_audio(audio, tasks)
    config = random_encoder_config(encoder_size, feat_extract_norm="layer")  # lv60 style
    encoder = fit_encoder(config)
    wanted = {"forward": CHECK_SECONDS, "train_frozen_cnn": (2.0,), "train": (2.0,)}
    checks = meta_counts_at(config, wanted)
    cpu = cpu_check(config, checks) if check_on_cpu else None
    plans = plan_grid(tasks, audio, encoder, root)
    frame_heads, head_parameters = {}, {}
    for task, plan in plans.items():
        hparams = read_hparams(task, root)
        frame_heads[task] = (head_flops(task, hparams, encoder.num_states, encoder.hidden_size,
                                        frames=True) if task in POOLED_TASKS else plan.head)
        with torch.device("meta"):
            head, _ = build_head(task, hparams, encoder.hidden_size)
        head_parameters[task] = sum(p.numel() for p in head.parameters()) + encoder.num_states
    rewire_hparams = {s: read_hparams(s, root) for s in strategies if s != BASELINE}
    cost = grid_cost(encoder, plans, audio, tasks, strategies, fractions, seeds, rewire_hparams,
                     view_seconds, pairs)
    return Estimate(f"wav2vec2 {encoder_size} (random weights, {config.num_hidden_layers} layers, "
                    f"hidden {config.hidden_size}, {config.feat_extract_norm}-norm CNN)",
                    encoder, checks, cpu, plans, frame_heads, head_parameters, audio,
                    rewire_hparams, cost)


def _num(value):
    """A figure with three significant digits, without exponents."""
    if value == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def _pct(share):
    return f"{share * 100:g} %"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def render(est, mfus=(0.1, 0.4), head_mfu=0.05, gpus=(1, 8), peak=PEAK_BF16_DENSE):
    """The Markdown report of an :class:`Estimate`."""
    enc, cost = est.encoder, est.cost
    giga, peta = 1e9, 1e15
    mfu_heads = [f"GPU-h, encoder at {_pct(m)}" for m in mfus]
    out = [f"Encoder: {est.encoder_name}. FLOPs counted with `FlopCounterMode` (matrix "
           "products, convolutions, attention products; nothing elementwise), batch 1.", ""]

    out += ["**Encoder FLOPs, counted**", ""]
    rows = []
    labels = {"forward": "forward (no_grad)", "train_frozen_cnn": "forward + backward, CNN frozen",
              "train": "forward + backward, every parameter (rewiring)"}
    for mode, by_length in est.checks.items():
        for seconds, flops in by_length.items():
            on_cpu = est.cpu is not None and seconds in est.cpu.get(mode, {})
            device = "CPU fp32 = meta" if on_cpu else "meta"
            rows.append([labels[mode], f"{seconds:g} s", device, f"{flops / giga:.1f}",
                         f"{flops / seconds / giga:.1f}"])
    out += _table(["pass", "audio", "counted on", "GFLOP", "GFLOP per s of audio"], rows)
    forward = est.checks["forward"]
    ratio = (forward[4.0] / 4.0) / (forward[1.0] / 1.0)
    out += ["", f"Per second at 4 s / per second at 1 s (forward): {ratio:.3f}: attention is "
            "quadratic in the frames. Fit `F(T) = a + b T + c T^2` (T in s) on counts at "
            f"{', '.join(f'{s:g}' for s in FIT_SECONDS)} s:", ""]
    rows = [[labels[mode], f"{fit.a / giga:.3f}", f"{fit.b / giga:.3f}", f"{fit.c / giga:.4f}",
             f"{enc.residuals[mode]:.1e}"] for mode, fit in enc.fits.items()]
    out += _table(["pass", "a (GFLOP)", "b (GFLOP/s)", "c (GFLOP/s²)", "max rel. residual"], rows)
    out += ["", f"Analytic forward attention term `4 L D (50 T)^2`: c = "
            f"{enc.attention_coefficient() / giga:.4f} GFLOP/s².", ""]

    out += ["**Audio per task (ASSUMED unless a manifest or --hours says otherwise)**", ""]
    rows = []
    forward_fit = enc.fits["forward"]
    for task, splits in est.audio.items():
        for split, part in splits.items():
            rows.append([task, split, f"{part.items:,.0f}", f"{part.hours:,.2f}",
                         f"{part.mean_seconds:.2f}", part.source,
                         f"{forward_fit.per_second(part.mean_seconds) / giga:.1f}"])
    out += _table(["task", "split", "items", "hours", "mean s", "figure", "encoder forward GFLOP "
                   "per s at the mean length"], rows)
    out += [""] + [f"* {task}: {DURATION_BASIS[task]}." for task in est.audio
                   if any(p.source == "assumed" for p in est.audio[task].values())]
    out += [""]

    out += ["**Heads (weighted layer sum included), counted**", ""]
    rows = []
    for task, plan in est.plans.items():
        frames = est.frame_heads[task]
        cached = (f"{plan.head.train_per_item / 1e6:.2f} MFLOP per item (pooled cache)"
                  if task in POOLED_TASKS else "frames: as per second")
        rows.append([task, f"{est.head_parameters[task] / 1e6:.2f} M",
                     f"{frames.forward_per_second / giga:.3f}",
                     f"{frames.train_per_second / giga:.3f}", cached])
    out += _table(["task", "parameters", "forward GFLOP per s (50 frames)",
                   "forward + backward GFLOP per s", "what training runs"], rows)
    out += [""]

    out += ["**Cost per downstream run** (one encoder, one seed; GPU-hours at the encoder MFU "
            f"shown and the heads at {_pct(head_mfu)})", ""]
    rows = []
    for (task, fraction), cell in cost.cells.items():
        plan = est.plans[task]
        on_the_fly = cell.encoder_total - cell.encoder["train features"]
        rows.append([task, f"{fraction:g}", f"{plan.updates(fraction):,}", plan.batch,
                     plan.evaluations(fraction), _num(cell.encoder["train features"] / peta),
                     _num(on_the_fly / peta), _num(cell.head_total / peta)]
                    + [_num(cell.gpu_hours(m, head_mfu, peak)) for m in mfus])
    out += _table(["task", "fraction", "updates", "items/update", "dev evals",
                   "train features PFLOP", "on the fly PFLOP", "head PFLOP", *mfu_heads], rows)
    out += [""]

    out += ["**Cells run once** (per strategy, or per encoder)", ""]
    rows = []
    for strategy, cell in cost.rewiring.items():
        hp = est.rewire_hparams[strategy]
        rows.append([f"rewire {strategy} ({int(hp['max_steps']):,} updates)", 1,
                     _num(cell.total / peta)]
                    + [_num(cell.gpu_hours(m, head_mfu, peak)) for m in mfus])
    for task, cell in cost.shared.items():
        rows.append([f"{task}: " + ", ".join(k for k, v in cell.encoder.items() if v),
                     cost.encoders, _num(cell.total / peta)]
                    + [_num(cell.gpu_hours(m, head_mfu, peak)) for m in mfus])
    if cost.qbe is not None:
        rows.append(["QbE: features of documents and queries", cost.encoders,
                     _num(cost.qbe.total / peta)] + [_num(cost.qbe.gpu_hours(m, head_mfu, peak))
                                                     for m in mfus])
    out += _table(["cell", "count", "PFLOP each", *[h + " each" for h in mfu_heads]], rows)
    if cost.qbe is not None:
        out += ["", f"QbE matching (DTW over {enc.num_states} states, dev and eval queries): "
                f"{_num(cost.qbe_cpu_hours)} CPU-hours per encoder on this project's 2-core CPU "
                "VM, from the rate MEASURED ON A CPU in docs/benchmarks.md (1,478 pairs/s, "
                "1024 dims, 75 x 450 frames), scaled by query x document frames x dims; not "
                "in the GPU totals. Its cosine products are "
                f"{_num(cost.qbe_distance_flops / peta)} PFLOP per encoder, minutes on a GPU; "
                "the DTW recursion's GPU speed is not known."]
    out += [""]

    out += [f"**Totals** ({len(cost.tasks)} tasks x {cost.encoders} encoders x "
            f"{len(cost.fractions)} fractions x {cost.seeds} seed(s))", ""]
    rows = []
    parts = [cost.parts(m, head_mfu, peak) for m in mfus]
    for name in parts[0]:
        rows.append([name, parts[0][name][0]] + [_num(p[name][1]) for p in parts])
    rows.append(["**all GPU cells, one GPU**", sum(c for c, _ in parts[0].values()),
                 *[f"**{_num(cost.total_hours(m, head_mfu, peak))}**" for m in mfus]])
    out += _table(["part", "cells", *mfu_heads], rows)
    total_flops = (sum(c.total for c in cost.rewiring.values())
                   + cost.encoders * sum(c.total for c in cost.shared.values())
                   + cost.encoders * cost.seeds * sum(c.total for c in cost.cells.values())
                   + (cost.encoders * cost.qbe.total if cost.qbe is not None else 0.0))
    out += ["", f"Grid total: {_num(total_flops / 1e18)} EFLOP.", ""]
    rows = [[g] + [f"{_num(cost.wall_hours(g, m, head_mfu, peak))} h "
                   f"({_num(cost.wall_hours(g, m, head_mfu, peak) / 24)} d)" for m in mfus]
            for g in gpus]
    out += _table(["GPUs", *[f"wall time, encoder at {_pct(m)}" for m in mfus]], rows)
    out += ["", "Spreading: every downstream run is independent of the others, so once the "
            "rewiring cells (one GPU each, all strategies at once) and the shared KS/IC dev/test "
            "features are done, N GPUs take about total / N; the table adds that gate and never "
            "goes below the longest single run. Baseline runs need no rewiring and could fill "
            "the gate's idle GPUs, so this errs long."]
    return "\n".join(out)


def assumptions(est, mfus, head_mfu, peak=PEAK_BF16_DENSE):
    """The assumptions of an estimate, as Markdown bullets."""
    view = {s: int(hp["split_samples"]) / SAMPLE_RATE for s, hp in est.rewire_hparams.items()}
    lines = [
        f"* GPU throughput is ASSUMED, not measured: peak {peak / 1e12:g} TFLOP/s (H100/H200-class "
        f"bf16 dense); the encoder at MFU {', '.join(_pct(m) for m in mfus)} (10 % is typical of "
        "open-source speech SSL training, 40 % is the speed issue's goal), the heads at "
        f"{_pct(head_mfu)}: LSTMs run far below transformer MFU (sequential over frames, small "
        "matrix products), whatever the encoder reaches.",
        "* The pooled KS/IC heads cost almost no FLOPs; their real time is per-update overhead "
        "(the cached KS head ran 171 updates/s on this CPU, docs/benchmarks.md), not priced here.",
        "* Durations: see the audio table; every figure marked `assumed` is an assumption "
        "(override with `--hours TASK=H` or `TASK.SPLIT=H`, or `--manifest_root DIR`).",
        "* A fraction's training draw is a uniform share of the items and of the audio; each "
        "run extracts its own draw (the caches are keyed by the draw's manifest, which the "
        "fraction and the seed decide); extraction batches have no padding. ASR's exclusion "
        "of the rewiring utterances is ignored (a slight overestimate).",
        "* ASR, SF, SD: `cached_splits: [train]`, so every dev evaluation runs the encoder "
        "over dev, and dev and test run once more at the best checkpoint; KS/IC cache dev and "
        "test once per encoder. KS: 1/12 of the training draws are `_silence_` crops of 1 s, "
        "encoded on the fly, plus the 6 dev crops at each evaluation.",
        "* Items per update ("
        + ", ".join(f"{task} {plan.batch}" for task, plan in est.plans.items())
        + "): the yamls' batch sizes, with s3prl's halving (ASR) and gradient accumulation "
        "(SD); the update budgets: `schedule.paper_step_budget`.",
        "* Rewiring: one run per strategy, shared by all tasks, the yaml's updates x batch of "
        "pairs x 2 views, every view padded to "
        + ", ".join(sorted({f"{v:g} s" for v in view.values()}))
        + " (split_samples: the longest a view can be, an upper bound), forward and backward "
        "with every parameter trained (freeze_feature_encoder: False). Neutral TTS runs on "
        "the CPU (41 ms per utterance, docs/benchmarks.md) and is not priced.",
        "* QbE: the forward pass over the documents and both query lists (GPU), the DTW on "
        "the CPU (separately, above).",
        "* Not priced: data loading, checkpoints, the CTC loss and everything elementwise "
        "(FlopCounterMode counts products only), the frame cache's disk (18.4 GB per hour of "
        "audio for Large in fp32, docs/benchmarks.md).",
    ]
    if est.cpu is None:
        lines.append("* The CPU fp32 check was skipped (--no_cpu_check): every count is the "
                     "meta device's.")
    return "\n".join(lines)
