"""wav2vec 2.0 self-supervised pre-training parts (used by ``recipes/pretrain``).

The model is transformers' ``Wav2Vec2ForPreTraining``: the encoder (``.wav2vec2``, what
gets shipped) plus a Gumbel quantiser and two projections that exist only for the loss.
This module holds what the recipe needs around it:

* ``build_pretraining_model``: a fresh model of one of ``ENCODER_SIZES`` (the real
  interface: 16 kHz in, 20 ms frames) or continued pre-training from an encoder directory;
* ``sample_masks_and_negatives``: transformers' span masking and negative sampling;
* ``gumbel_temperature`` / ``gumbel_decay_for_run``: wav2vec 2.0's temperature annealing;
* ``scale_feature_encoder_gradients``: wav2vec 2.0's ``feature_grad_mult``;
* ``crop_to_shortest``: batches without padding (group-norm front-ends change under it);
* ``PretrainHistory``: the per-update loss record, checkpointed, written as CSV and PNG.
"""

import csv
import json
import logging
import math

import numpy as np
import torch
import transformers
from speechbrain.utils.checkpoints import mark_as_loader, mark_as_saver, register_checkpoint_hooks
from transformers.models.wav2vec2.modeling_wav2vec2 import (
    _compute_mask_indices,
    _sample_negative_indices,
)

from rewire_lobes.io_utils import atomic_path
from rewire_lobes.plotting import pyplot, save_png
from rewire_lobes.upstream.encoder import quiet_transformers, random_encoder_config

logger = logging.getLogger(__name__)


def build_pretraining_model(
    encoder_size="small",
    feat_extract_norm="group",
    upstream_source=None,
    num_negatives=100,
    layerdrop=0.0,
    feature_encoder_init="default",
    freeze_feature_encoder=False,
    config_overrides=None,
):
    """A ``Wav2Vec2ForPreTraining`` ready for the masked contrastive task.

    Arguments
    ---------
    encoder_size : str
        A key of ``rewire_lobes.upstream.encoder.ENCODER_SIZES`` ("tiny", "small", "large").
        Ignored when ``upstream_source`` is given.
    feat_extract_norm : str
        "group" (wav2vec2-base style CNN) or "layer" (lv60 style, with stable layer norm).
    upstream_source : str, optional
        An encoder directory (e.g. wav2vec2-large-lv60) to continue pre-training from.
        Its encoder weights are loaded; quantiser and projections start fresh.
    num_negatives : int
        Distractors per masked frame. transformers reads it from the config, so the
        sampled negatives must have this many.
    layerdrop : float
        0 by default: with transformers 5 a dropped layer also drops its hidden state.
    feature_encoder_init : str
        "default" (transformers' random init) or "lowpass" (see
        :func:`lowpass_feature_encoder_init`). Ignored when ``upstream_source`` is given.
    freeze_feature_encoder : bool
        Keep the CNN front-end as initialised or loaded (no gradient, no update).
    config_overrides : dict, optional
        Any other ``Wav2Vec2Config`` fields (e.g. ``{"hidden_size": 192}``).
    """
    if upstream_source:
        config = transformers.AutoConfig.from_pretrained(str(upstream_source))
        if config.model_type != "wav2vec2":
            raise ValueError(
                f"{upstream_source}: model_type '{config.model_type}'; wav2vec 2.0 "
                "pre-training needs a wav2vec2 encoder"
            )
    else:
        config = random_encoder_config(encoder_size, "wav2vec2", feat_extract_norm)
    for key, value in (config_overrides or {}).items():
        if not hasattr(config, key):
            raise KeyError(f"config_overrides: Wav2Vec2Config has no field '{key}'")
        setattr(config, key, tuple(value) if isinstance(value, list) else value)
    config.num_negatives = num_negatives
    config.layerdrop = layerdrop
    # transformers only applies the given time mask when SpecAugment is on.
    config.apply_spec_augment = True
    if feature_encoder_init not in ("default", "lowpass"):
        raise ValueError(
            f"feature_encoder_init must be 'default' or 'lowpass', got {feature_encoder_init!r}"
        )
    if upstream_source:
        with quiet_transformers():
            model = transformers.Wav2Vec2ForPreTraining.from_pretrained(
                str(upstream_source), config=config, dtype=torch.float32
            )
    else:
        model = transformers.Wav2Vec2ForPreTraining(config)
        if feature_encoder_init == "lowpass":
            lowpass_feature_encoder_init(model)
    if freeze_feature_encoder:
        model.freeze_feature_encoder()
    return model


def lowpass_feature_encoder_init(model, noise_std=0.01):
    """Starts the CNN front-end as a crude filterbank-energy extractor.

    The first convolution keeps its random filters (256 band-pass-like filters of 10
    taps); every later convolution starts as a per-channel moving average (plus a little
    random mixing). After the rectifying GELU, the output is then the envelope of each
    filter over the 25 ms receptive field, which changes slowly from frame to frame.

    Why: with transformers' random init the CNN's frames are phase-sensitive, so the
    quantised targets change at almost every frame (5 % of adjacent frames share a code,
    33 % with this init) and the masked targets cannot be predicted from their context;
    wav2vec 2.0 escapes that plateau with batches of 1.6 h of audio, which a CPU cannot
    afford. Every weight stays trainable.
    """
    encoder = getattr(model, "wav2vec2", model)  # Wav2Vec2ForPreTraining or Wav2Vec2Model
    with torch.no_grad():
        for layer in encoder.feature_extractor.conv_layers[1:]:
            weight = layer.conv.weight  # [out_channels, in_channels, kernel]
            weight.normal_(0.0, noise_std)
            diagonal = torch.arange(min(weight.shape[0], weight.shape[1]))
            weight[diagonal, diagonal, :] += 1.0 / weight.shape[-1]
            if layer.conv.bias is not None:
                layer.conv.bias.zero_()


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def crop_to_shortest(wavs, wav_lens):
    """Crops a padded batch ``[B, N]`` to its shortest item: no padding left.

    Each item is already a random crop of its file, so keeping its first samples keeps
    it random. (fairseq's wav2vec 2.0 batches the same way.)
    """
    shortest = int(torch.round(wav_lens.min() * wavs.shape[1]).item())
    return wavs[:, : max(shortest, 1)]


def sample_masks_and_negatives(model, batch_size, num_samples, mask_prob, mask_length,
                               min_masks=2, device="cpu"):
    """transformers' span mask ``[B, T]`` (bool) and negatives ``[B, T, K]`` (long).

    Negatives are drawn from the masked frames of the same utterance (numpy's global
    RNG, which ``seed_everything`` seeds).
    """
    num_frames = int(model._get_feat_extract_output_lengths(num_samples))
    mask = _compute_mask_indices(
        (batch_size, num_frames), mask_prob=mask_prob, mask_length=mask_length,
        min_masks=min_masks,
    )
    negatives = _sample_negative_indices(
        (batch_size, num_frames), model.config.num_negatives, mask
    )
    return (
        torch.from_numpy(mask).to(device=device, dtype=torch.bool),
        torch.from_numpy(negatives.astype(np.int64)).to(device),
    )


class fixed_numpy_seed:
    """Context manager: numpy's global RNG seeded for a block, then restored.

    Validation masks and negatives are then the same at every evaluation.
    """

    def __init__(self, seed):
        self.seed = seed

    def __enter__(self):
        self.state = np.random.get_state()
        np.random.seed(self.seed % (2**32))

    def __exit__(self, *exc):
        np.random.set_state(self.state)
        return False


def gumbel_decay_for_run(number_of_steps, t_max=2.0, t_min=0.5, anneal_fraction=0.7):
    """The per-update decay that takes the temperature from ``t_max`` to ``t_min`` in
    ``anneal_fraction`` of the run.

    wav2vec 2.0 uses 0.999995 over 400k updates: the minimum is reached after 277k
    updates, 69 % of the run. A short run keeps that shape instead of that constant
    (which would leave the temperature near 2 for a run of a few thousand updates).

    Example
    -------
    >>> round(gumbel_decay_for_run(400000), 7)
    0.999995
    """
    steps = max(1.0, anneal_fraction * number_of_steps)
    return math.exp(math.log(t_min / t_max) / steps)


def gumbel_temperature(step, t_max=2.0, t_min=0.5, decay=0.999995):
    """wav2vec 2.0's schedule: ``max(t_max * decay**step, t_min)``.

    Example
    -------
    >>> gumbel_temperature(0), gumbel_temperature(10**7)
    (2.0, 0.5)
    """
    return max(t_max * decay**step, t_min)


def scale_feature_encoder_gradients(model, scale):
    """wav2vec 2.0's ``feature_grad_mult``: the CNN front-end gets ``scale`` times the
    gradient (0.1 in the paper's Base setup, for stability); the forward is unchanged.

    Returns the hook handle, or ``None`` when ``scale == 1``.
    """
    if scale == 1.0:
        return None

    def hook(module, inputs, output):
        return output * scale + output.detach() * (1.0 - scale)

    return model.wav2vec2.feature_extractor.register_forward_hook(hook)


@register_checkpoint_hooks
class PretrainHistory:
    """Per-update training record and per-epoch validation losses.

    Checkpointed with the model, so a resumed run continues the same curve and the same
    training-time total.
    """

    FIELDS = ("step", "loss", "contrastive", "diversity", "perplexity", "temperature", "lr",
              "masked_frames", "seconds")

    def __init__(self):
        self.train = []
        self.valid = []

    def add_train(self, **row):
        self.train.append({k: row[k] for k in self.FIELDS})

    def add_valid(self, step, loss):
        self.valid.append({"step": step, "loss": float(loss)})

    @property
    def train_seconds(self):
        return float(sum(r["seconds"] for r in self.train))

    def mean_loss(self, last=50, key="loss"):
        """Mean of ``key`` over the last ``last`` updates."""
        rows = self.train[-last:]
        return float(np.mean([r[key] for r in rows])) if rows else float("nan")

    @mark_as_saver
    def _save(self, path):
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"train": self.train, "valid": self.valid}), encoding="utf-8")

    @mark_as_loader
    def _load(self, path, end_of_epoch=False):
        data = json.loads(path.read_text(encoding="utf-8"))
        self.train, self.valid = data["train"], data["valid"]

    def write_csv(self, path):
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.train)

    def plot(self, path, title="wav2vec 2.0 pre-training", chance=None):
        """Losses per masked frame (smoothed; held-out points), codebook perplexity.

        ``chance`` (``ln(num_negatives + 1)``) is drawn as the contrastive loss of a
        model that cannot tell the target from its distractors.
        """
        if not self.train:
            return
        steps = np.array([r["step"] for r in self.train])
        window = max(1, min(25, len(steps) // 10))

        def smooth(key):
            values = np.array([r[key] for r in self.train])
            return steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")

        fig, ax = pyplot().subplots(figsize=(6.4, 3.6), dpi=100)
        ax.plot(*smooth("loss"), color="tab:blue", label=f"train loss ({window}-update mean)")
        ax.plot(*smooth("contrastive"), color="tab:purple", label="train contrastive part")
        if self.valid:
            ax.plot([r["step"] for r in self.valid], [r["loss"] for r in self.valid], "o-",
                    color="tab:orange", markersize=3, label="held-out loss")
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", linewidth=1,
                       label=f"contrastive at chance (ln {round(math.exp(chance))})")
        ax.set_xlabel("update")
        ax.set_ylabel("loss per masked frame")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        perplexity = ax.twinx()
        perplexity.plot(*smooth("perplexity"), color="tab:green", alpha=0.6, linewidth=0.8)
        perplexity.set_ylabel("codebook perplexity", color="tab:green")
        ax.legend(loc="upper right", fontsize=7)
        save_png(fig, path)
