"""The SSL upstream lobe: any transformers audio SSL encoder, with SpeechBrain's conventions.

``SSLUpstream`` loads wav2vec 2.0, HuBERT, WavLM or data2vec-audio from a local directory
(``config.json`` + weights + ``preprocessor_config.json``) or a hub id, and returns every
hidden state, as s3prl's upstreams do (``superb_protocol.md`` §0.2):

* input: padded ``[B, N]`` waveforms at 16 kHz and relative lengths (SpeechBrain's
  ``PaddedData``);
* output: ``hidden [L+1, B, T, D]`` (index 0 is the input of the first transformer layer,
  index ``L`` the encoder output *after* its final layer norm) and the valid frame count
  of each utterance.

Padding changes no valid output (``exact_padding=True``, the default): an utterance gets
the same features alone or padded beside longer ones, for every supported family. Two
modules of transformers would otherwise see the padding, and are replaced by versions
that own the same submodules (same ``state_dict``, same export) but only read valid
frames: the group-norm first conv layer of the Base-style CNN front-ends
(:class:`ValidFrameGroupNormConvLayer`) and data2vec-audio's stacked positional
convolutions (:class:`ValidFramePositionalConvEmbedding`).

``WeightedLayerSum`` is s3prl's featurizer; ``export_encoder`` writes an encoder directory
that transformers, s3prl's HF upstream and ``SSLUpstream`` all load.
"""

import contextlib
import hashlib
import logging
import math
import os
import socket
import urllib.parse
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from rewire_lobes.errors import UserError
from rewire_lobes.io_utils import atomic_dir

logger = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")
PREPROCESSOR_FILE = "preprocessor_config.json"
# Keys of the config that SSLUpstream changes for the run; the exported config keeps the source's.
RUNTIME_CONFIG_KEYS = (
    "layerdrop",
    "apply_spec_augment",
    "mask_time_prob",
    "mask_feature_prob",
    "hidden_dropout",
    "attention_dropout",
    "feat_proj_dropout",
)


class UpstreamLoadError(UserError, OSError):
    """The encoder could not be loaded; the message says what to pass instead."""


def _is_local(source):
    return Path(str(source)).expanduser().exists()


def load_encoder_config(source):
    """The transformers config of ``source``, checked to be a supported SSL encoder.

    A hub id is read from the local Hugging Face cache when it is there; otherwise the hub
    is asked only if it answers at all, so an offline machine fails at once, with advice.
    """
    source = str(source)
    try:
        if _is_local(source):
            config = transformers.AutoConfig.from_pretrained(source)
        else:
            config = _hub_config(source)
    except UpstreamLoadError:
        raise
    except Exception as err:
        if _is_local(source):
            raise UpstreamLoadError(
                f"{source}: not an encoder directory that transformers can read "
                f"(expected config.json, model.safetensors, {PREPROCESSOR_FILE}): {err}"
            ) from err
        raise UpstreamLoadError(f"{source}: {err}. {OFFLINE_ADVICE}") from err
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UpstreamLoadError(
            f"{source}: model_type '{config.model_type}' is not a supported audio SSL encoder "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config


OFFLINE_ADVICE = (
    "Pass a local encoder directory instead, e.g. --upstream_source /path/to/wav2vec2-large-lv60, "
    f"holding config.json, model.safetensors and {PREPROCESSOR_FILE} (write one with "
    "transformers' save_pretrained on a machine with network access, then copy it here)."
)


def _hub_config(source):
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise UpstreamLoadError(f"{source}: no such encoder directory")
    try:
        return transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    except Exception:
        pass
    if not _hub_reachable():
        raise UpstreamLoadError(
            f"'{source}' is neither a local directory nor in the Hugging Face cache, "
            f"and the model hub cannot be reached (offline). {OFFLINE_ADVICE}"
        )
    return transformers.AutoConfig.from_pretrained(source)


def _hub_reachable(timeout=3.0):
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false"):
        return False
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((host.hostname, host.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def quiet_transformers():
    """No load reports or progress bars from transformers (recipes log what matters)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


def load_encoder_model(source, config):
    """The encoder in fp32, whatever dtype it was saved in."""
    try:
        with quiet_transformers():
            return transformers.AutoModel.from_pretrained(source, config=config, dtype=torch.float32)
    except Exception as err:
        raise UpstreamLoadError(f"{source}: could not load the encoder weights: {err}") from err


def read_do_normalize(source):
    """The checkpoint's ``do_normalize`` (per-utterance waveform z-normalisation)."""
    try:
        extractor = transformers.Wav2Vec2FeatureExtractor.from_pretrained(str(source))
    except Exception:
        logger.warning(
            "%s: no readable %s; assuming do_normalize=True (transformers' default). "
            "Add the file to make this explicit.",
            source,
            PREPROCESSOR_FILE,
        )
        return True
    return bool(extractor.do_normalize)


def uses_layer_norm_extractor(config):
    """Layer-norm CNN front-ends (Large models, data2vec-audio) normalise each frame alone.

    Group-norm front-ends (Base models) normalise their first conv layer over the whole
    time axis, padding included; plain transformers therefore advises padding them with
    zeros and passing no attention mask (``SSLUpstream`` makes them exact instead).
    """
    return getattr(config, "feat_extract_norm", "layer") == "layer"


def frame_count(config, num_samples):
    """Frames the CNN front-end emits for ``num_samples`` (LongTensor or int)."""
    lengths = torch.as_tensor(num_samples)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class _ValidFrameGroupNorm(torch.autograd.Function):
    """One-group-per-channel norm of ``x [B, C, T]`` with statistics over ``valid_frames``.

    Every frame, padded or not, is normalised with its utterance's valid-frame statistics.
    The backward pass is written out: the same computation in autograd-tracked tensor
    ops makes a dozen passes over this layer's output, the largest activation of the CNN,
    and costs several times native GroupNorm.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, valid_frames, eps):
        variance, mean = x.new_empty(x.shape[:2]), x.new_empty(x.shape[:2])
        lengths = valid_frames.tolist()
        for row, length in enumerate(lengths):
            variance[row], mean[row] = torch.var_mean(x[row, :, :length], dim=-1, correction=0)
        rstd = torch.rsqrt(variance + eps)
        scale = rstd * weight
        shift = bias - mean * scale
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.lengths = lengths
        return torch.addcmul(shift[..., None], x, scale[..., None])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        x, mean, rstd, weight = ctx.saved_tensors
        # Padded outputs use the valid frames' statistics too, so their gradient counts.
        sum_grad = grad_output.sum(dim=-1)
        sum_grad_x = torch.einsum("bct,bct->bc", grad_output, x)
        sum_grad_normed = rstd * (sum_grad_x - mean * sum_grad)
        grad_x = None
        if ctx.needs_input_grad[0]:
            counts = torch.tensor(ctx.lengths, dtype=x.dtype, device=x.device)[:, None]
            weighted_rstd = weight * rstd
            slope = -weighted_rstd * rstd * sum_grad_normed / counts
            offset = -weighted_rstd * sum_grad / counts - slope * mean
            # Through the statistics, only valid frames get a gradient.
            grad_x = torch.addcmul(offset[..., None], slope[..., None], x)
            for row, length in enumerate(ctx.lengths):
                grad_x[row, :, length:] = 0
            grad_x.addcmul_(grad_output, weighted_rstd[..., None])
        return grad_x, sum_grad_normed.sum(dim=0), sum_grad.sum(dim=0), None, None


class ValidFrameGroupNormConvLayer(GradientCheckpointingLayer):
    """transformers' ``*GroupNormConvLayer`` (conv → GroupNorm → activation) over valid frames.

    The group norm has one group per channel, so it normalises each channel of each
    utterance over time; transformers does so over the padded time axis, which makes the
    features depend on the longest utterance of the batch. Here the statistics are taken
    over the valid output frames only (the conv arithmetic applied to ``valid_samples``).
    The later conv layers have neither norm nor padding, so their valid frames depend on
    valid inputs only: the whole CNN front-end becomes padding-invariant.

    The layer owns the original ``conv``, ``layer_norm`` and ``activation`` under the
    same names, so ``state_dict`` keys and ``save_pretrained`` output do not change.
    ``valid_samples`` (``[B]`` sample counts) is set by ``SSLUpstream`` around each
    forward pass; ``None`` (a bare call of the model), or a batch without padding, runs
    transformers' own GroupNorm.

    Arguments
    ---------
    layer : nn.Module
        The ``*GroupNormConvLayer`` to take the modules from.
    """

    def __init__(self, layer):
        super().__init__()
        norm = layer.layer_norm
        if norm.num_groups != norm.num_channels or not norm.affine:
            raise ValueError(
                f"{type(layer).__name__}: expected an affine GroupNorm with one group per "
                f"channel, got {norm.num_groups} groups of {norm.num_channels} channels"
            )
        self.in_conv_dim = layer.conv.in_channels
        self.out_conv_dim = layer.conv.out_channels
        self.conv = layer.conv
        self.layer_norm = norm
        self.activation = layer.activation
        self.gradient_checkpointing = layer.gradient_checkpointing
        self.valid_samples = None

    def __call__(self, hidden_states):
        # The lengths travel as an argument: a checkpointed layer recomputed in the
        # backward pass must use this call's lengths, not those of a later batch.
        return super().__call__(hidden_states, valid_samples=self.valid_samples)

    def forward(self, hidden_states, valid_samples=None):
        hidden_states = self.conv(hidden_states)
        num_frames = hidden_states.shape[-1]
        valid_frames = None
        if valid_samples is not None:
            kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
            valid_frames = torch.div(valid_samples - kernel, stride, rounding_mode="floor") + 1
            valid_frames = valid_frames.clamp(1, num_frames)
        if valid_frames is None or bool((valid_frames == num_frames).all()):
            hidden_states = self.layer_norm(hidden_states)
        else:
            # At least float32, as autocast runs GroupNorm.
            dtype = torch.promote_types(hidden_states.dtype, torch.float32)
            with torch.autocast(hidden_states.device.type, enabled=False):
                hidden_states = _ValidFrameGroupNorm.apply(
                    hidden_states.to(dtype), self.layer_norm.weight.to(dtype),
                    self.layer_norm.bias.to(dtype), valid_frames, self.layer_norm.eps,
                )
        return self.activation(hidden_states)


class ValidFramePositionalConvEmbedding(nn.Module):
    """data2vec-audio's stacked positional convolutions, with padded frames zeroed between layers.

    The encoder zeroes padded frames before the first positional conv, whose zero padding
    then matches an unpadded utterance's; but each layer ends in a layer norm and an
    activation, which make padded frames non-zero for the next layer. Zeroing them before
    every layer keeps each layer's input what it would be without padding. Owns the
    original ``layers``, so the ``state_dict`` does not change; ``valid_frames`` is set
    by ``SSLUpstream`` around each forward pass (``None``: transformers' behaviour).

    Arguments
    ---------
    embedding : nn.Module
        The ``Data2VecAudioPositionalConvEmbedding`` to take the layers from.
    """

    def __init__(self, embedding):
        super().__init__()
        self.layers = embedding.layers
        self.valid_frames = None

    def forward(self, hidden_states):
        hidden_states = hidden_states.transpose(1, 2)
        if self.valid_frames is None:
            for layer in self.layers:
                hidden_states = layer(hidden_states)
        else:
            steps = torch.arange(hidden_states.shape[-1], device=hidden_states.device)
            frame_mask = (steps < self.valid_frames[:, None]).to(hidden_states.dtype)[:, None]
            for layer in self.layers:
                hidden_states = layer(hidden_states * frame_mask)
        return hidden_states.transpose(1, 2)


def make_padding_exact(model):
    """Swaps in the valid-frame versions of the modules that see padding; returns them.

    Returns ``(first_conv_layer, positional_conv)``, each ``None`` where the model has
    nothing to replace (layer-norm front-ends; every family but data2vec-audio).
    """
    first_conv_layer = positional_conv = None
    conv_layers = model.feature_extractor.conv_layers
    if not uses_layer_norm_extractor(model.config):
        first_conv_layer = conv_layers[0] = ValidFrameGroupNormConvLayer(conv_layers[0])
    if model.config.model_type == "data2vec-audio":
        encoder = model.encoder
        positional_conv = ValidFramePositionalConvEmbedding(encoder.pos_conv_embed)
        encoder.pos_conv_embed = positional_conv
    return first_conv_layer, positional_conv


class SSLUpstream(nn.Module):
    """Any transformers audio SSL encoder, returning all hidden states.

    Arguments
    ---------
    source : str
        Local encoder directory or hub id.
    freeze : bool
        Frozen means eval mode and no autograd, always: even after a Brain calls
        ``.train()`` on its modules, the encoder stays in eval mode.
    dropout : float, optional
        Trainable mode only: sets the hidden, attention and feature-projection dropouts
        (the three that are 0.1 in wav2vec2-large-lv60). ``None`` keeps the config's.
    freeze_feature_encoder : bool
        Trainable mode only: keep the CNN front-end fixed, as s3prl does.
    gradient_checkpointing : bool
        Trainable mode only: recompute transformer activations in the backward pass.
    spec_augment : bool
        Trainable mode only: keep the encoder's own time/feature masking (its config's
        ``mask_time_prob`` ...), as a transformers model in train mode does. Off by
        default: the paper describes no such masking during rewiring.
    exact_padding : bool
        Padding changes no valid output, for every family (see below). ``False`` is
        plain transformers' behaviour, kept to measure what exactness costs: group-norm
        front-ends then normalise over the padded time axis and get no attention mask,
        and data2vec-audio's positional convolutions see padded frames.

    Padding: the waveform is zero-padded and normalised over its valid samples only, and
    the encoder gets an attention mask (it zeroes padded frames before the positional
    convolution, whose zero padding then matches an unpadded utterance's, and attention
    skips them). With ``exact_padding`` the group-norm first conv layer of Base-style
    front-ends normalises over valid frames only, and data2vec-audio's stacked positional
    convolutions re-zero padded frames between layers: an utterance's features are the
    same (to float rounding) alone or in any padded batch. :attr:`padding_invariant`
    says whether that holds.

    Example
    -------
    >>> import tempfile
    >>> folder = save_random_encoder(tempfile.mkdtemp(), size="tiny")
    >>> upstream = SSLUpstream(folder)
    >>> hidden, frame_lens = upstream(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> hidden.shape[0] == upstream.num_states, frame_lens.tolist()
    (True, [49, 24])
    """

    def __init__(
        self,
        source,
        freeze=True,
        dropout=None,
        freeze_feature_encoder=True,
        gradient_checkpointing=False,
        spec_augment=False,
        exact_padding=True,
    ):
        super().__init__()
        self.source = str(source)
        self.freeze = freeze
        self.spec_augment = spec_augment and not freeze
        config = load_encoder_config(source)
        self.source_config = config.to_dict()
        self.do_normalize = read_do_normalize(source)
        self._configure(config, dropout)
        self.model = load_encoder_model(self.source, config)
        self._disable_stochastic_depth_and_masking()
        self.exact_padding = exact_padding
        # A tuple, not submodules: the modules already belong to self.model's state_dict.
        self._valid_frame_modules = (make_padding_exact(self.model) if exact_padding
                                     else (None, None))
        self.pass_attention_mask = exact_padding or uses_layer_norm_extractor(config)

        if freeze:
            self.model.eval()
            self.model.requires_grad_(False)
        else:
            if freeze_feature_encoder:
                # transformers' own switch, so that the CNN is neither checkpointed nor
                # given an input that requires grad (requires_grad_ alone does neither).
                self.model.freeze_feature_encoder()
            if gradient_checkpointing:
                self.model.activation_checkpointing_enable()

    def _configure(self, config, dropout):
        """Sets the dropouts, which are fixed when the modules are built."""
        if self.freeze or dropout is None:
            return
        config.hidden_dropout = dropout
        config.attention_dropout = dropout
        config.feat_proj_dropout = dropout

    def _disable_stochastic_depth_and_masking(self):
        """Read at run time by transformers; the exported config keeps the source values.

        A skipped layer (layerdrop) would change the number of hidden states, and the
        encoder's own SpecAugment would mask frames during rewiring.
        """
        config = self.model.config
        config.layerdrop = 0.0
        if self.spec_augment:
            return
        if hasattr(config, "apply_spec_augment"):
            config.apply_spec_augment = False
        config.mask_time_prob = 0.0
        if hasattr(config, "mask_feature_prob"):
            config.mask_feature_prob = 0.0

    @property
    def config(self):
        return self.model.config

    @property
    def padding_invariant(self):
        """Whether an utterance's features are the same alone and in a padded batch."""
        if self.exact_padding:
            return True
        return (uses_layer_norm_extractor(self.config)
                and self.config.model_type != "data2vec-audio")

    @property
    def num_states(self):
        """``L + 1``: the CNN/projection output plus one state per transformer layer."""
        return self.model.config.num_hidden_layers + 1

    @property
    def hidden_size(self):
        return self.model.config.hidden_size

    @property
    def downsample_rate(self):
        """Input samples per output frame: the product of the CNN strides (320 for the
        wav2vec 2.0 family, i.e. 20 ms frames at 16 kHz)."""
        return math.prod(self.model.config.conv_stride)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, wavs, wav_lens=None):
        """Returns ``(hidden [L+1, B, T, D], frame_lens [B])``; padded frames are zero."""
        if self.freeze:
            with torch.no_grad():
                return self._encode(wavs, wav_lens)
        return self._encode(wavs, wav_lens)

    def _encode(self, wavs, wav_lens):
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms shaped [batch, samples], got {tuple(wavs.shape)}")
        batch, num_samples = wavs.shape
        if wav_lens is None:
            sample_lens = torch.full((batch,), num_samples, device=wavs.device)
        else:
            sample_lens = torch.round(wav_lens.to(wavs.device) * num_samples).long()
            sample_lens = sample_lens.clamp(1, num_samples)
        sample_mask = torch.arange(num_samples, device=wavs.device)[None, :] < sample_lens[:, None]
        wavs = wavs * sample_mask
        if self.do_normalize:
            wavs = normalize_waveforms(wavs, sample_mask, sample_lens)

        with self._valid_lengths(sample_lens):
            output = self.model(
                wavs,
                attention_mask=sample_mask.long() if self.pass_attention_mask else None,
                output_hidden_states=True,
            )
        states = list(output.hidden_states)
        if len(states) != self.num_states:
            raise RuntimeError(
                f"{self.source}: the encoder returned {len(states)} hidden states, "
                f"expected {self.num_states}"
            )
        # transformers 5 hands over the last layer's output before the final layer norm of
        # stable-layer-norm encoders; s3prl's last state is the encoder output after it.
        states[-1] = output.last_hidden_state
        hidden = torch.stack(states)

        frame_lens = frame_count(self.model.config, sample_lens).clamp(max=hidden.shape[2])
        frame_mask = torch.arange(hidden.shape[2], device=wavs.device)[None, :] < frame_lens[:, None]
        hidden = hidden * frame_mask[None, :, :, None].to(hidden.dtype)
        return hidden, frame_lens

    @contextlib.contextmanager
    def _valid_lengths(self, sample_lens):
        """Hands the valid lengths to the valid-frame modules for one forward pass."""
        first_conv_layer, positional_conv = self._valid_frame_modules
        if first_conv_layer is not None:
            first_conv_layer.valid_samples = sample_lens
        if positional_conv is not None:
            positional_conv.valid_frames = frame_count(self.model.config, sample_lens)
        try:
            yield
        finally:
            if first_conv_layer is not None:
                first_conv_layer.valid_samples = None
            if positional_conv is not None:
                positional_conv.valid_frames = None

    def content_hash(self):
        """sha256 over the weights (names, dtypes, shapes, bytes): the encoder's identity."""
        return state_dict_hash(self.model.state_dict())

    def features_hash(self, content_hash=None):
        """sha256 of what decides the features: the weights and how the input is treated.

        Two encoder folders with the same weights but another ``do_normalize``, or the
        same encoder with ``exact_padding`` off, give other features: feature caches are
        keyed by this, not by :meth:`content_hash` alone (pass it when already known).
        """
        settings = (f"{content_hash or self.content_hash()};do_normalize={self.do_normalize};"
                    f"padding_invariant={self.padding_invariant}")
        return hashlib.sha256(settings.encode()).hexdigest()

    def save_pretrained(self, directory):
        """Exports the encoder with the source's config values (dropout, layerdrop, ...)."""
        return export_encoder(self.model, directory, self.do_normalize, self.source_config)


def uses_masked_spec_embed(config):
    """Whether the encoder's forward pass reads ``masked_spec_embed``.

    transformers' ``_mask_hidden_states`` writes it into the time-masked frames only when
    ``apply_spec_augment`` is on and ``mask_time_prob`` is positive (feature masking writes
    zeros). ``SSLUpstream(spec_augment=False)``, the recipe's default, switches both off.
    """
    return bool(getattr(config, "apply_spec_augment", False)) and (
        float(getattr(config, "mask_time_prob", 0.0) or 0.0) > 0
    )


def trainable_parameters(upstream):
    """The encoder parameters that training updates: every one that gets a gradient.

    For rewiring that is all of them (the paper: "All parameters of the encoder are
    updated"), the CNN front-end included, unless ``SSLUpstream(freeze_feature_encoder=True)``
    froze it (fine-tuning does). The one exception is ``masked_spec_embed`` while the encoder's own masking is off
    (:func:`uses_masked_spec_embed`): left trainable it would get no gradient, which DDP
    rejects. It is frozen here.
    """
    model = upstream.model
    masked = getattr(model, "masked_spec_embed", None)
    if masked is not None and not uses_masked_spec_embed(model.config):
        masked.requires_grad_(False)
    return [p for p in upstream.parameters() if p.requires_grad]


def normalize_waveforms(wavs, sample_mask, sample_lens):
    """Per-utterance zero mean, unit variance over the valid samples; padding stays zero."""
    mask = sample_mask.to(wavs.dtype)
    counts = sample_lens.to(wavs.dtype)[:, None]
    mean = (wavs * mask).sum(dim=1, keepdim=True) / counts
    var = (((wavs - mean) * mask) ** 2).sum(dim=1, keepdim=True) / counts
    return (wavs - mean) / torch.sqrt(var + 1e-7) * mask


def state_dict_hash(state_dict):
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class WeightedLayerSum(nn.Module):
    """s3prl's featurizer: ``sum_l softmax(w)_l * h_l`` over the first (layer) axis.

    Works on frame states ``[L+1, B, T, D]`` and on pooled ones ``[L+1, B, D]``.
    ``layer_norm=True`` first applies a parameter-free layer norm over the feature axis of
    each state (s3prl's ``--upstream_feature_normalize``).

    Example
    -------
    >>> featurizer = WeightedLayerSum(3)
    >>> featurizer(torch.ones(3, 2, 4)).shape
    torch.Size([2, 4])
    """

    def __init__(self, num_layers, layer_norm=False):
        super().__init__()
        self.layer_norm = layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, hidden):
        if hidden.shape[0] != self.weights.numel():
            raise ValueError(
                f"expected {self.weights.numel()} hidden states, got {hidden.shape[0]}"
            )
        if self.layer_norm:
            hidden = F.layer_norm(hidden, hidden.shape[-1:])
        weights = F.softmax(self.weights, dim=0).to(hidden.dtype)
        return torch.einsum("l,l...->...", weights, hidden)


def export_encoder(model, directory, do_normalize, config_dict=None):
    """Writes ``config.json``, fp32 ``model.safetensors`` and ``preprocessor_config.json``.

    ``config_dict`` (the source config) supplies the values of the runtime keys that
    ``SSLUpstream`` overrides, so the export reads like the source with new weights. The
    directory is built under a temporary name and renamed when complete.
    """
    directory = Path(directory)
    config = model.config
    saved = {}
    if config_dict is not None:
        for key in RUNTIME_CONFIG_KEYS:
            if key in config_dict and hasattr(config, key):
                saved[key] = getattr(config, key)
                setattr(config, key, config_dict[key])
    was_dtype = next(model.parameters()).dtype
    try:
        with atomic_dir(directory) as tmp, quiet_transformers():
            model.float().save_pretrained(tmp)
            extractor = transformers.Wav2Vec2FeatureExtractor(
                feature_size=1,
                sampling_rate=16000,
                padding_value=0.0,
                do_normalize=do_normalize,
                return_attention_mask=uses_layer_norm_extractor(config),
            )
            extractor.save_pretrained(tmp)
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
        model.to(was_dtype)
    return directory


ENCODER_SIZES = {
    # hidden, layers, heads, ffn, conv channels
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                  intermediate_size=1024, conv_dim=(256,) * 7, num_conv_pos_embeddings=32,
                  num_conv_pos_embedding_groups=8),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, conv_dim=(512,) * 7, num_conv_pos_embeddings=128,
                  num_conv_pos_embedding_groups=16),
}

CONFIG_CLASSES = {
    "wav2vec2": "Wav2Vec2Config",
    "hubert": "HubertConfig",
    "wavlm": "WavLMConfig",
    "data2vec-audio": "Data2VecAudioConfig",
}


def random_encoder_config(size="tiny", model_type="wav2vec2", feat_extract_norm="group"):
    """A config of the real interface (16 kHz in, 20 ms frames) in one of ``ENCODER_SIZES``.

    ``size="large"`` is wav2vec2-large-lv60's shape (stable layer norm, layer-norm
    front-end); ``feat_extract_norm`` is ignored there.
    """
    fields = dict(ENCODER_SIZES[size])
    if size == "large":
        feat_extract_norm = "layer"
    if model_type == "data2vec-audio":
        # Here the field counts positional conv layers, not kernel width: keep the real 5.
        del fields["num_conv_pos_embeddings"]
    else:
        fields["feat_extract_norm"] = feat_extract_norm
        fields["do_stable_layer_norm"] = feat_extract_norm == "layer"
    config_class = getattr(transformers, CONFIG_CLASSES[model_type])
    return config_class(**fields)


def save_random_encoder(directory, size="tiny", model_type="wav2vec2", feat_extract_norm="group",
                        seed=0, do_normalize=None):
    """Writes a randomly initialised encoder directory (tests, benchmarks, fallbacks)."""
    config = random_encoder_config(size, model_type, feat_extract_norm)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModel.from_config(config)
    if do_normalize is None:
        do_normalize = uses_layer_norm_extractor(config)
    return export_encoder(model, directory, do_normalize)


def encoder_tag(source):
    """A short, path-safe name for run folders: the directory or hub id's last part."""
    name = Path(str(source).rstrip("/")).name or "encoder"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def describe_encoder(upstream):
    """What ``results.json`` and ``rewiring.json`` record about an encoder."""
    return {
        "source": upstream.source,
        "content_hash": upstream.content_hash(),
        "model_type": upstream.config.model_type,
        "num_states": upstream.num_states,
        "hidden_size": upstream.hidden_size,
    }


__all__ = [
    "SSLUpstream",
    "ValidFrameGroupNormConvLayer",
    "ValidFramePositionalConvEmbedding",
    "WeightedLayerSum",
    "UpstreamLoadError",
    "export_encoder",
    "save_random_encoder",
    "random_encoder_config",
    "frame_count",
    "encoder_tag",
    "describe_encoder",
]
