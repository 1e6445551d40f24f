"""Contrastive rewiring (Yang et al., 2022, §2): positive pairs, InfoNCE and scaling tricks.

Pairs
    *Twin*: the positive is a copy of the utterance with a span of 20 % of its samples set
    to zero, the span's start drawn uniformly so that the span fits (i.e. within the first
    4/5 of the signal). *Neutral*: the positive is a flat TTS rendering of the transcript.
    *Perturb* (ours, after SPIN and ContentVec): the positive is a speaker-perturbed copy
    (pitch and formants moved, :mod:`rewire_lobes.rewiring.perturb`). *Mixed*: one of these
    kinds drawn per utterance with the ``mix`` weights; the paper's Mixed is Twin or
    Neutral, uniformly. Truncation (appendix B): utterances over 180k samples are skipped,
    those over 90k are cut into two halves and one half, drawn at random, is used (for
    Neutral, the same half of the TTS audio).

Loss
    :func:`info_nce` is cosine similarity over a temperature. Every view (an anchor or a
    positive) has as candidates its partner and every other view of the (global) batch
    except itself, as in the paper's code (pytorch-metric-learning's ``NTXentLoss``), plus
    the optional hard negatives (views that are nobody's partner).

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
from rewire_lobes.runs.provenance import REWIRING_STRATEGIES
from rewire_lobes.upstream.pooling import masked_mean

# Kinds of positive view, in the order a Mixed draw walks them: with the paper's weights a
# draw below 0.5 is Neutral, as before Perturb existed, so its runs draw the same pairs.
KINDS = ("neutral", "twin", "perturb")
STRATEGIES = REWIRING_STRATEGIES
PAPER_MIX = {"twin": 0.5, "neutral": 0.5}
HARD_NEGATIVES = (None, "transcript")
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
    """One training example: the anchor view, its positive, which kind it is, and the
    optional hard negative (a view that is nobody's partner)."""

    anchor: torch.Tensor
    positive: torch.Tensor
    kind: str
    negative: torch.Tensor = None


def mix_weights(strategy, mix=None):
    """``{kind: weight}`` (weights summing to 1) of the positive kinds a strategy draws.

    A single-kind strategy draws its own kind; ``mixed`` draws with ``mix`` (``None`` or
    empty: the paper's ``{twin: 0.5, neutral: 0.5}``), normalised.

    Example
    -------
    >>> mix_weights("mixed", {"twin": 1, "perturb": 3})
    {'twin': 0.25, 'perturb': 0.75}
    """
    if strategy not in STRATEGIES:
        raise OptionError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy != "mixed":
        if mix and dict(mix) != {strategy: 1}:
            raise OptionError(f"--mix is for hparams/mixed.yaml; strategy {strategy} draws "
                              f"{strategy} pairs only (got --mix {dict(mix)})")
        return {strategy: 1.0}
    mix = PAPER_MIX if mix is None or mix == {} else mix
    if not isinstance(mix, dict):
        raise OptionError(f"--mix must map kinds ({', '.join(KINDS)}) to weights, got {mix!r}")
    unknown = sorted(set(mix) - set(KINDS))
    bad = [k for k, w in mix.items() if isinstance(w, bool) or not isinstance(w, (int, float))
           or not w >= 0]
    if unknown or bad or sum(w for k, w in mix.items() if k not in bad) <= 0:
        raise OptionError(f"--mix must map kinds ({', '.join(KINDS)}) to weights >= 0, "
                          f"not all zero; got {mix!r}")
    total = float(sum(mix.values()))
    return {kind: weight / total for kind, weight in mix.items() if weight > 0}


def draw_kind(weights, rng):
    """A kind drawn with ``weights``, walking :data:`KINDS` in order."""
    threshold, cumulative = rng.random(), 0.0
    drawn = [kind for kind in KINDS if kind in weights]
    for kind in drawn:
        cumulative += weights[kind]
        if threshold < cumulative:
            return kind
    return drawn[-1]  # rounding of the cumulative sum


class PairMaker:
    """Builds the positive pair of an utterance for a strategy (twin, neutral, perturb, mixed).

    The maker is called from the data pipeline; the Brain sets :attr:`epoch` at the start
    of each epoch so that masks, halves and Mixed choices are redrawn every epoch.

    Arguments
    ---------
    strategy : str
        ``twin``, ``neutral``, ``perturb`` or ``mixed``.
    seed : int
        Base seed of :func:`utterance_rng`.
    mask_ratio, split_samples, max_samples
        The paper's 0.2, 90k and 180k.
    mix : dict, optional
        ``mixed`` only: weights of the kinds (:func:`mix_weights`).
    perturbation : callable, optional
        ``perturbation(wav, rng) -> wav`` of the same length: the Perturb view.
    hard_negatives : str, optional
        ``transcript``: a third view per utterance, the neutral rendering of the
        utterance whose transcript is nearest to its own (``load_negative``).

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
        mix=None,
        perturbation=None,
        hard_negatives=None,
    ):
        self.weights = mix_weights(strategy, mix)
        if hard_negatives not in HARD_NEGATIVES:
            raise OptionError(f"--hard_negatives must be null or {' or '.join(HARD_NEGATIVES[1:])}, "
                              f"got {hard_negatives!r}")
        if "perturb" in self.weights and perturbation is None:
            raise OptionError("perturb pairs need a perturbation (the yaml's `perturbation`)")
        self.strategy = strategy
        self.seed = seed
        self.mask_ratio = mask_ratio
        self.split_samples = split_samples
        self.max_samples = max_samples
        self.perturbation = perturbation
        self.hard_negatives = hard_negatives
        self.epoch = 0

    @property
    def needs_neutral(self):
        """Whether TTS audio is read: a Neutral positive or a transcript hard negative."""
        return "neutral" in self.weights or self.hard_negatives == "transcript"

    @property
    def needs_text(self):
        """Whether every utterance needs a transcript."""
        return self.needs_neutral

    def __call__(self, utt_id, wav, load_neutral=None, load_negative=None):
        """The pair of ``wav``; ``load_neutral()`` returns the TTS audio when needed, and
        ``load_negative()`` the hard negative's audio (``None`` when it has none).

        Raises ``ValueError`` for an utterance the truncation rule skips (the prepare
        step drops those beforehand, so this means a manifest built with other limits).
        """
        rng = utterance_rng(self.seed, self.epoch, utt_id)
        kind = self.strategy
        if kind == "mixed":
            kind = draw_kind(self.weights, rng)
        half = choose_half(wav.shape[-1], rng, self.split_samples, self.max_samples)
        if half is None:
            raise ValueError(
                f"{utt_id}: {wav.shape[-1]} samples is over the {self.max_samples} limit; "
                "the manifest should not hold it (re-run the prepare step)"
            )
        anchor = take_half(wav, half)
        if kind == "twin":
            positive = twin_view(anchor, rng, self.mask_ratio)
        elif kind == "perturb":
            positive = self.perturbation(anchor, rng)
        else:
            if load_neutral is None:
                raise ValueError(f"{utt_id}: a neutral pair needs the TTS audio")
            positive = take_half(load_neutral(), half)
        negative = None
        if self.hard_negatives:
            negative = load_negative() if load_negative is not None else None
            if negative is None:
                raise ValueError(f"{utt_id}: --hard_negatives {self.hard_negatives} needs "
                                 "the hard negative's audio")
            # The negative's text is another utterance's: its own length rule.
            if negative.shape[-1] > self.split_samples:
                negative = take_half(negative, rng.randrange(2))
        return Pair(anchor, positive, kind, negative)


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


def info_nce(anchors, positives, temperature=0.04, symmetric=True, negatives=None):
    """InfoNCE over cosine similarities, with the paper's negatives.

    Row ``i`` of ``anchors`` and of ``positives`` form a positive pair. For every view its
    candidates are its partner and every other view of the batch but itself (for an
    anchor: its positive, all other anchors and all other positives).

    ``symmetric=True`` averages the loss over all ``2B`` views, as the paper's code did
    (``NTXentLoss``); ``symmetric=False`` averages it over the ``B`` anchors only, the
    paper's equation (which writes a sum; we take the mean so the scale does not depend
    on the batch size).

    ``negatives`` (``[M, D]``, optional): hard negatives, candidates of every view, that
    are no view's partner and have no loss term of their own.

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
    candidates = views
    if negatives is not None and len(negatives):
        candidates = torch.cat([views, F.normalize(negatives.float(), dim=1)])
    logits = views @ candidates.T / temperature
    self_mask = torch.eye(2 * batch, candidates.shape[0], dtype=torch.bool,
                          device=logits.device)
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


def global_info_nce(anchors, positives, temperature=0.04, symmetric=True, negatives=None):
    """:func:`info_nce` over the batch of every rank (negatives span the global batch)."""
    if negatives is not None:
        negatives = gather_with_grad(negatives)
    return info_nce(gather_with_grad(anchors), gather_with_grad(positives), temperature,
                    symmetric, negatives)


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
                        scale=None, num_groups=2):
    """One GradCache step: accumulates into ``.grad`` the gradient of ``loss_fn`` over all views.

    Arguments
    ---------
    encode : callable
        ``encode(wavs [n, T], rel_lens [n]) -> [n, D]``; runs the (possibly DDP-wrapped)
        encoder under the caller's autocast.
    views : list of 1-D tensors
        The ``2B`` views: anchors first, then their positives in the same order (then
        ``B`` hard negatives, with ``num_groups=3``).
    loss_fn : callable
        ``loss_fn(anchors [B, D], positives [B, D][, negatives [B, D]]) -> scalar`` (may
        gather across ranks).
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
    if num_views % num_groups:
        raise ValueError(f"views must hold {num_groups} groups of the same size "
                         f"(anchors, positives ...), got {num_views} views")
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
    loss = loss_fn(*embeddings.chunk(num_groups))
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
