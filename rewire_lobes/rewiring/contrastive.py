"""Contrastive rewiring (Yang et al., 2022, §2): positive pairs, InfoNCE and scaling tricks.

Pairs
    *Twin*: the positive is a copy of the utterance with a span of 20 % of its samples set
    to zero, the span's start drawn uniformly so that the span fits (i.e. within the first
    4/5 of the signal). *Neutral*: the positive is a flat TTS rendering of the transcript.
    *Mixed*: Twin or Neutral, drawn uniformly per utterance. Truncation (appendix B):
    utterances over 180k samples are skipped, those over 90k are cut into two halves and
    one half, drawn at random, is used (for Neutral, the same half of the TTS audio).

Loss
    :func:`info_nce` is cosine similarity over a temperature. Every view (an anchor or a
    positive) has as candidates its partner and every other view of the (global) batch
    except itself, as in the paper's code (pytorch-metric-learning's ``NTXentLoss``).

Scale
    :func:`gather_with_grad` lets the loss see the negatives of every DDP rank, and
    :func:`grad_cache_backward` (Gao et al., 2021a, "GradCache") computes exactly the
    gradient of a large batch while holding the activations of one chunk of views at a
    time: embeddings without a graph, the loss's gradient with respect to them, then each
    chunk re-encoded with the *same* dropout masks (the RNG state is replayed) and
    back-propagated.
"""

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from rewire_lobes.errors import OptionError
from rewire_lobes.upstream.pooling import masked_mean

STRATEGIES = ("twin", "neutral", "mixed")
MAX_SAMPLES = 180_000  # longer utterances are skipped (paper §3.1)
SPLIT_SAMPLES = 90_000  # longer ones are halved (appendix B)
MASK_RATIO = 0.2  # Twin: p = 20 %


# ----------------------------------------------------------------------------------------
# Positive pairs
# ----------------------------------------------------------------------------------------


def utterance_rng(seed, epoch, utt_id):
    """The random source of one utterance in one epoch.

    Keyed by (seed, epoch, id) rather than drawn from a global stream, so the pairs do not
    depend on the number of data-loader workers or ranks, and a resumed run draws the same
    pairs as an uninterrupted one. ``random.Random`` hashes a string seed with SHA-512,
    which is stable across processes (unlike ``hash()``).
    """
    return random.Random(f"{seed}/{epoch}/{utt_id}")


def choose_half(num_samples, rng, split_samples=SPLIT_SAMPLES, max_samples=MAX_SAMPLES):
    """The truncation rule: ``None`` (skip), ``"whole"``, or the half to keep (0 or 1).

    Example
    -------
    >>> rng = random.Random(0)
    >>> choose_half(80_000, rng), choose_half(200_000, rng), choose_half(100_000, rng) in (0, 1)
    ('whole', None, True)
    """
    if num_samples > max_samples:
        return None
    if num_samples > split_samples:
        return rng.randrange(2)
    return "whole"


def take_half(wav, half):
    """``wav`` itself for ``"whole"``, else its first (0) or second (1) half."""
    if half == "whole":
        return wav
    middle = wav.shape[-1] // 2
    return wav[..., :middle] if half == 0 else wav[..., middle:]


def twin_span(num_samples, rng, ratio=MASK_RATIO):
    """``(start, length)`` of the Twin mask: ``length = int(ratio * n)``, start uniform."""
    length = int(num_samples * ratio)
    start = rng.randint(0, num_samples - length)
    return start, length


def twin_view(wav, rng, ratio=MASK_RATIO):
    """A copy of ``wav`` with a random span of ``ratio`` of its samples set to zero.

    Zero is the paper's "[MASK]" for raw audio (its code writes zeros into the copy).

    Example
    -------
    >>> view = twin_view(torch.ones(100), random.Random(0))
    >>> int((view == 0).sum())
    20
    """
    start, length = twin_span(wav.shape[-1], rng, ratio)
    view = wav.clone()
    view[..., start : start + length] = 0.0
    return view


@dataclass
class Pair:
    """One training example: the anchor view, its positive, and which kind it is."""

    anchor: torch.Tensor
    positive: torch.Tensor
    kind: str


class PairMaker:
    """Builds the positive pair of an utterance for a strategy (twin, neutral, mixed).

    The maker is called from the data pipeline; the Brain sets :attr:`epoch` at the start
    of each epoch so that masks, halves and Mixed choices are redrawn every epoch.

    Arguments
    ---------
    strategy : str
        ``twin``, ``neutral`` or ``mixed``.
    seed : int
        Base seed of :func:`utterance_rng`.
    mask_ratio, split_samples, max_samples
        The paper's 0.2, 90k and 180k.

    Example
    -------
    >>> maker = PairMaker("twin", seed=1)
    >>> pair = maker("utt1", torch.ones(1000))
    >>> pair.kind, pair.anchor.shape == pair.positive.shape, int((pair.positive == 0).sum())
    ('twin', True, 200)
    """

    def __init__(
        self,
        strategy,
        seed=0,
        mask_ratio=MASK_RATIO,
        split_samples=SPLIT_SAMPLES,
        max_samples=MAX_SAMPLES,
    ):
        if strategy not in STRATEGIES:
            raise OptionError(
                f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        self.strategy = strategy
        self.seed = seed
        self.mask_ratio = mask_ratio
        self.split_samples = split_samples
        self.max_samples = max_samples
        self.epoch = 0

    @property
    def needs_neutral(self):
        return self.strategy in ("neutral", "mixed")

    def __call__(self, utt_id, wav, load_neutral=None):
        """The pair of ``wav``; ``load_neutral()`` returns the TTS audio when needed.

        Raises ``ValueError`` for an utterance the truncation rule skips (the prepare
        step drops those beforehand, so this means a manifest built with other limits).
        """
        rng = utterance_rng(self.seed, self.epoch, utt_id)
        kind = self.strategy
        if kind == "mixed":
            kind = "neutral" if rng.random() < 0.5 else "twin"
        half = choose_half(wav.shape[-1], rng, self.split_samples, self.max_samples)
        if half is None:
            raise ValueError(
                f"{utt_id}: {wav.shape[-1]} samples is over the {self.max_samples} limit; "
                "the manifest should not hold it (re-run the prepare step)"
            )
        anchor = take_half(wav, half)
        if kind == "twin":
            positive = twin_view(anchor, rng, self.mask_ratio)
        else:
            if load_neutral is None:
                raise ValueError(f"{utt_id}: a neutral pair needs the TTS audio")
            positive = take_half(load_neutral(), half)
        return Pair(anchor, positive, kind)


# ----------------------------------------------------------------------------------------
# Utterance representation and loss
# ----------------------------------------------------------------------------------------


def pool_utterances(hidden, frame_lens, layers="all"):
    """``[B, D]`` float32: mean over valid frames of the mean of the hidden states.

    ``layers="all"`` averages all ``L+1`` states uniformly (the paper's code: s3prl's
    featurizer with its softmax weights left at zero); ``"last"`` takes the last one.
    """
    if layers == "all":
        states = hidden.float().mean(dim=0)
    elif layers == "last":
        states = hidden[-1].float()
    else:
        raise OptionError(f"--pool_layers must be all or last, got {layers!r}")
    return masked_mean(states, frame_lens)


def info_nce(anchors, positives, temperature=0.04, symmetric=True):
    """InfoNCE over cosine similarities, with the paper's negatives.

    Row ``i`` of ``anchors`` and of ``positives`` form a positive pair. For every view its
    candidates are its partner and every other view of the batch but itself (for an
    anchor: its positive, all other anchors and all other positives).

    ``symmetric=True`` averages the loss over all ``2B`` views, as the paper's code did
    (``NTXentLoss``); ``symmetric=False`` averages it over the ``B`` anchors only, the
    paper's equation (which writes a sum; we take the mean so the scale does not depend
    on the batch size).

    Example
    -------
    >>> x = torch.eye(3)
    >>> bool(info_nce(x, x, temperature=0.1) < 1e-3)
    True
    """
    if anchors.shape != positives.shape or anchors.dim() != 2:
        raise ValueError(
            f"anchors and positives must both be [B, D], got {tuple(anchors.shape)} "
            f"and {tuple(positives.shape)}"
        )
    batch = anchors.shape[0]
    views = F.normalize(torch.cat([anchors, positives]).float(), dim=1)
    logits = views @ views.T / temperature
    self_mask = torch.eye(2 * batch, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    index = torch.arange(batch, device=logits.device)
    targets = torch.cat([index + batch, index])
    if not symmetric:
        logits, targets = logits[:batch], targets[:batch]
    return F.cross_entropy(logits, targets)


# ----------------------------------------------------------------------------------------
# Cross-rank gathering
# ----------------------------------------------------------------------------------------


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each rank the gradient of its rows.

    Every rank computes the same global loss, so the gradient of a rank's rows is summed
    over all ranks' graphs (all-reduce). DDP then averages the parameter gradients over
    the ranks, which yields exactly the gradient of the global loss. Only all-gather and
    all-reduce are used, so gloo (CPU) works as well as NCCL.
    """

    @staticmethod
    def forward(ctx, tensor):
        world, rank = _world()
        tensor = tensor.contiguous()
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        sizes = [int(s.item()) for s in sizes]
        # all_gather needs equal shapes: pad every block to the largest one.
        longest = max(sizes)
        padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        blocks = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(blocks, padded)
        ctx.sizes, ctx.rank = sizes, rank
        return torch.cat([block[:n] for block, n in zip(blocks, sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(tensor):
    """Rows of ``tensor`` from every rank, in rank order; identity without DDP."""
    world, _ = _world()
    if world == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def global_info_nce(anchors, positives, temperature=0.04, symmetric=True):
    """:func:`info_nce` over the batch of every rank (negatives span the global batch)."""
    return info_nce(gather_with_grad(anchors), gather_with_grad(positives), temperature, symmetric)


# ----------------------------------------------------------------------------------------
# Batching views and gradient caching
# ----------------------------------------------------------------------------------------


def pad_views(views):
    """``(wavs [N, T], relative lengths [N])`` from a list of 1-D waveforms."""
    lengths = torch.tensor([v.shape[-1] for v in views], dtype=torch.long)
    longest = int(lengths.max())
    wavs = views[0].new_zeros((len(views), longest))
    for row, view in enumerate(views):
        wavs[row, : view.shape[-1]] = view
    return wavs, lengths.float() / longest


def chunk_order(lengths, chunk_size):
    """Index chunks of at most ``chunk_size`` views, longest first.

    Views of similar lengths share a chunk, so each chunk is padded only to its own
    longest view.
    """
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    return [order[i : i + chunk_size] for i in range(0, len(order), chunk_size)]


class RngState:
    """The random state that dropout (torch) and masking (numpy) draw from.

    ``capture()`` before a forward pass; ``replay()`` around a second pass makes it draw
    exactly the same masks, and leaves the global state as it was afterwards.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        self.numpy = np.random.get_state()

    @classmethod
    def capture(cls, device):
        return cls(device)

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.cuda is not None else []
        numpy_state = np.random.get_state()
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            np.random.set_state(self.numpy)
            try:
                yield
            finally:
                np.random.set_state(numpy_state)


def encode_views(encode, views, chunk_size=None):
    """Embeddings ``[N, D]`` of ``views`` (1-D waveforms), in order, chunk by chunk.

    ``encode(wavs [n, T], rel_lens [n]) -> [n, D]``. With ``chunk_size=None`` all views go
    through one padded forward pass in the given order; otherwise views are grouped by
    length as :func:`grad_cache_backward` groups them (so both draw the same dropout masks).
    """
    if chunk_size is None:
        return encode(*pad_views(views))
    chunks = chunk_order([v.shape[-1] for v in views], chunk_size)
    outputs = [None] * len(views)
    for chunk in chunks:
        embedded = encode(*pad_views([views[i] for i in chunk]))
        for row, i in enumerate(chunk):
            outputs[i] = embedded[row]
    return torch.stack(outputs)


def grad_cache_backward(encode, views, loss_fn, chunk_size, device, sync_context=None,
                        scale=None):
    """One GradCache step: accumulates into ``.grad`` the gradient of ``loss_fn`` over all views.

    Arguments
    ---------
    encode : callable
        ``encode(wavs [n, T], rel_lens [n]) -> [n, D]``; runs the (possibly DDP-wrapped)
        encoder under the caller's autocast.
    views : list of 1-D tensors
        The ``2B`` views: anchors first, then their positives in the same order.
    loss_fn : callable
        ``loss_fn(anchors [B, D], positives [B, D]) -> scalar`` (may gather across ranks).
    chunk_size : int
        Views per forward pass; activations of only one chunk are alive at a time.
    device : torch.device
        Where dropout draws its randomness (its RNG state is replayed per chunk).
    sync_context : callable, optional
        ``sync_context(sync: bool)`` context manager; with DDP, ``Brain.no_sync`` so that
        gradients are all-reduced once, on the last chunk.
    scale : callable, optional
        Applied to each chunk's surrogate loss before ``backward`` (fp16 loss scaling).

    Returns
    -------
    The loss (detached).
    """
    num_views = len(views)
    if num_views % 2:
        raise ValueError("views must hold anchors then positives (an even count)")
    chunks = chunk_order([v.shape[-1] for v in views], chunk_size)

    # 1. Embeddings without a graph; remember each chunk's random state.
    states, pieces = [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RngState.capture(device))
            pieces.append(encode(*pad_views([views[i] for i in chunk])).float())
    embeddings = torch.empty(
        (num_views, pieces[0].shape[1]), dtype=torch.float32, device=pieces[0].device
    )
    for chunk, piece in zip(chunks, pieces):
        embeddings[chunk] = piece
    del pieces

    # 2. The loss and its gradient with respect to the embeddings.
    embeddings.requires_grad_(True)
    half = num_views // 2
    loss = loss_fn(embeddings[:half], embeddings[half:])
    (embedding_grads,) = torch.autograd.grad(loss, embeddings)

    # 3. Re-encode each chunk with the same dropout masks and back-propagate its share.
    sync_context = sync_context or (lambda sync: contextlib.nullcontext())
    for position, (chunk, state) in enumerate(zip(chunks, states)):
        last = position == len(chunks) - 1
        with sync_context(last), state.replay():
            embedded = encode(*pad_views([views[i] for i in chunk])).float()
            surrogate = (embedded * embedding_grads[chunk]).sum()
            if scale is not None:
                surrogate = scale(surrogate)
            surrogate.backward()
    return loss.detach()
