"""Contrastive lobe: the loss, the pairs, gradient caching and cross-rank gathering."""

import math
import os
import random
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rewire_lobes.rewiring.batching import LengthBucketBatchSampler
from rewire_lobes.rewiring.hard_negatives import nearest_transcripts
from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.rewiring.contrastive import (
    PairMaker,
    choose_half,
    encode_views,
    global_info_nce,
    grad_cache_backward,
    info_nce,
    mix_weights,
    pool_utterances,
    take_half,
    twin_view,
    utterance_rng,
)


# ------------------------------------------------------------------------------ loss


def paper_equation(anchors, positives, temperature, symmetric):
    """The loss written out with loops, in float64.

    For view v with partner p(v): -log(exp(cos(v, p)/t) / sum_{u != v} exp(cos(v, u)/t)).
    symmetric=False: mean over the anchors (the paper's equation); True: over all views.
    """
    views = [v.double() for v in torch.cat([anchors, positives])]
    batch = anchors.shape[0]
    rows = range(2 * batch) if symmetric else range(batch)
    losses = []
    for i in rows:
        partner = i + batch if i < batch else i - batch
        cos = [torch.nn.functional.cosine_similarity(views[i], views[j], dim=0).item()
               for j in range(2 * batch)]
        denominator = sum(math.exp(cos[j] / temperature) for j in range(2 * batch) if j != i)
        losses.append(-math.log(math.exp(cos[partner] / temperature) / denominator))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("batch", [1, 4, 7])
def test_info_nce_matches_the_equation(symmetric, batch):
    torch.manual_seed(batch)
    anchors = torch.randn(batch, 16)
    positives = anchors + 0.8 * torch.randn(batch, 16)
    expected = paper_equation(anchors, positives, 0.04, symmetric)
    got = info_nce(anchors, positives, temperature=0.04, symmetric=symmetric).item()
    assert got == pytest.approx(expected, abs=1e-6, rel=1e-6)


@pytest.mark.parametrize("symmetric", [True, False])
def test_hard_negatives_join_every_views_denominator(symmetric):
    """Written out: each view's candidates are the 2B - 1 other views plus the M negatives."""
    torch.manual_seed(3)
    anchors, negatives = torch.randn(3, 8), torch.randn(2, 8)
    positives = anchors + 0.5 * torch.randn(3, 8)
    views = torch.nn.functional.normalize(torch.cat([anchors, positives]).double(), dim=1)
    extra = torch.nn.functional.normalize(negatives.double(), dim=1)
    losses = []
    for i in range(6 if symmetric else 3):
        partner = (i + 3) % 6
        scores = torch.cat([views @ views[i], extra @ views[i]]) / 0.5
        scores[i] = -math.inf
        losses.append(-(scores[partner] - torch.logsumexp(scores, 0)).item())
    got = info_nce(anchors, positives, 0.5, symmetric, negatives=negatives).item()
    assert got == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert got > info_nce(anchors, positives, 0.5, symmetric).item()  # more candidates


@pytest.mark.parametrize("temperature", [0.04, 0.5])
def test_symmetric_info_nce_matches_ntxent(temperature):
    from pytorch_metric_learning.losses import NTXentLoss

    torch.manual_seed(0)
    anchors = torch.randn(6, 12, dtype=torch.float64)
    positives = anchors + torch.randn(6, 12, dtype=torch.float64)
    labels = torch.arange(6).repeat(2)  # how the paper's code called it
    expected = NTXentLoss(temperature=temperature)(torch.cat([anchors, positives]), labels)
    got = info_nce(anchors, positives, temperature=temperature, symmetric=True)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_info_nce_gradient_flows_to_both_views():
    anchors = torch.randn(3, 8, requires_grad=True)
    positives = torch.randn(3, 8, requires_grad=True)
    info_nce(anchors, positives).backward()
    assert anchors.grad.abs().sum() > 0 and positives.grad.abs().sum() > 0


def test_pool_utterances_ignores_padding():
    hidden = torch.zeros(3, 2, 5, 4)
    hidden[:, 0, :5] = 1.0
    hidden[:, 1, :2] = torch.arange(3.0)[:, None, None] + 1  # layers 1, 2, 3; frames 0-1 valid
    pooled = pool_utterances(hidden, torch.tensor([5, 2]))
    assert torch.allclose(pooled, torch.tensor([[1.0] * 4, [2.0] * 4]))
    last = pool_utterances(hidden, torch.tensor([5, 2]), "last")
    assert torch.allclose(last[1], torch.full((4,), 3.0))
    hidden[:, 1, 2:] = 1e3  # padded frames never count, even when not zero
    assert torch.allclose(pool_utterances(hidden, torch.tensor([5, 2])), pooled)


# ------------------------------------------------------------------------------ pairs


def test_twin_mask_geometry():
    n = 1003
    wav = torch.rand(n) + 1.0  # no natural zeros
    view = twin_view(wav, random.Random(3))
    zero = (view == 0).nonzero().flatten()
    assert len(zero) == int(0.2 * n)
    assert (zero[1:] - zero[:-1] == 1).all(), "the masked span is contiguous"
    assert zero[0] <= n - int(0.2 * n), "the span starts within the first 4/5 and fits"
    keep = torch.ones(n, dtype=torch.bool)
    keep[zero] = False
    assert torch.equal(view[keep], wav[keep])
    assert (wav != 0).all(), "the anchor itself is not masked"


def test_twin_mask_start_is_uniform_over_the_first_four_fifths():
    n = 1000
    starts = []
    for seed in range(2000):
        view = twin_view(torch.ones(n), random.Random(seed))
        starts.append(int((view == 0).nonzero()[0]))
    assert min(starts) < 20 and max(starts) > 780 and max(starts) <= 800
    low = sum(s < 400 for s in starts) / len(starts)
    assert 0.4 < low < 0.6


def test_pairs_are_redrawn_per_epoch_and_reproducible():
    maker = PairMaker("twin", seed=5)
    wav = torch.rand(5000) + 1
    first = maker("u1", wav).positive
    assert torch.equal(first, maker("u1", wav).positive)
    maker.epoch = 1
    assert not torch.equal(first, maker("u1", wav).positive)
    assert not torch.equal(maker("u1", wav).positive, maker("u2", wav).positive)


def test_truncation_rule():
    rng = random.Random(0)
    assert choose_half(90_000, rng) == "whole"
    assert choose_half(180_001, rng) is None
    halves = {choose_half(120_000, rng) for _ in range(50)}
    assert halves == {0, 1}
    wav = torch.arange(11.0)
    assert torch.equal(take_half(wav, 0), torch.arange(5.0))
    assert torch.equal(take_half(wav, 1), torch.arange(5.0, 11.0))


def test_neutral_pair_uses_the_matching_half_of_the_tts_audio():
    maker = PairMaker("neutral", seed=0)
    wav = torch.arange(100_000.0)
    tts = -torch.arange(60_000.0)
    seen = set()
    for utt in range(20):
        pair = maker(f"u{utt}", wav, lambda: tts)
        first_half = pair.anchor[0].item() == 0
        assert pair.anchor.shape[0] == 50_000 and pair.positive.shape[0] == 30_000
        assert (pair.positive[0].item() == 0) == first_half
        seen.add(first_half)
    assert seen == {True, False}
    short = maker("short", torch.ones(80_000), lambda: tts)
    assert short.anchor.shape[0] == 80_000 and short.positive.shape[0] == 60_000
    with pytest.raises(ValueError, match="over the 180000"):
        maker("long", torch.ones(180_001), lambda: tts)


def test_mixed_draws_both_kinds_about_evenly():
    maker = PairMaker("mixed", seed=1)
    kinds = [maker(f"u{i}", torch.rand(2000) + 1, lambda: torch.ones(1500)).kind
             for i in range(400)]
    assert set(kinds) == {"twin", "neutral"}
    assert 0.4 < kinds.count("twin") / len(kinds) < 0.6


def test_paper_mix_draws_the_pairs_of_the_rule_before_mix_existed():
    """{twin: 0.5, neutral: 0.5} keeps the old draw: Neutral below 0.5 of the first number."""
    maker = PairMaker("mixed", seed=4, mix={"twin": 1, "neutral": 1})
    for i in range(50):
        old_rule = "neutral" if utterance_rng(4, 0, f"u{i}").random() < 0.5 else "twin"
        assert maker(f"u{i}", torch.rand(2000) + 1, lambda: torch.ones(1500)).kind == old_rule
    assert PairMaker("mixed").weights == {"twin": 0.5, "neutral": 0.5}


def test_mix_of_any_kinds_draws_with_its_weights():
    shifted = []
    maker = PairMaker("mixed", seed=2, mix={"twin": 1, "perturb": 3},
                      perturbation=lambda wav, rng: shifted.append(1) or wav + 1)
    assert not maker.needs_neutral
    pairs = [maker(f"u{i}", torch.zeros(3000)) for i in range(800)]
    kinds = [pair.kind for pair in pairs]
    assert set(kinds) == {"twin", "perturb"} and len(shifted) == kinds.count("perturb")
    assert 0.70 < kinds.count("perturb") / len(kinds) < 0.80
    perturbed = next(pair for pair in pairs if pair.kind == "perturb")
    assert torch.equal(perturbed.positive, perturbed.anchor + 1)


@pytest.mark.parametrize("strategy, mix, message", [
    ("mixed", {"twin": 1, "speed": 1}, "--mix must map kinds"),
    ("mixed", {"twin": 0, "neutral": 0}, "not all zero"),
    ("mixed", {"twin": -1, "neutral": 2}, ">= 0"),
    ("mixed", [0.5, 0.5], "--mix must map kinds"),
    ("twin", {"twin": 0.5, "neutral": 0.5}, "--mix is for hparams/mixed.yaml"),
    ("noisy", None, "--strategy must be one of"),
])
def test_bad_mix_is_refused(strategy, mix, message):
    with pytest.raises(OptionError, match=message):
        mix_weights(strategy, mix)


def test_perturb_needs_a_perturbation_and_hard_negatives_a_known_rule():
    with pytest.raises(OptionError, match="perturbation"):
        PairMaker("perturb")
    with pytest.raises(OptionError, match="--hard_negatives"):
        PairMaker("twin", hard_negatives="embedding")


def test_transcript_hard_negative_is_a_third_view_with_the_length_rule():
    maker = PairMaker("twin", seed=0, hard_negatives="transcript")
    assert maker.needs_neutral and maker.needs_text
    pair = maker("u", torch.ones(50_000), load_negative=lambda: torch.arange(120_000.0))
    assert pair.negative.shape[0] == 60_000  # over split_samples: one half
    with pytest.raises(ValueError, match="hard negative"):
        maker("u", torch.ones(50_000))


def test_nearest_transcript_is_never_the_same_text():
    ids = ["a", "b", "c", "d"]
    texts = ["the cat sat on the mat", "THE CAT  SAT on the mat", "the cat sat on a hat",
             "rain fell all night"]
    neighbours = nearest_transcripts(ids, texts)
    assert neighbours["a"] == neighbours["b"] == "c"  # a and b are one text
    assert neighbours["c"] in ("a", "b") and neighbours["d"] != "d"
    with pytest.raises(DataFileError, match="two different transcripts"):
        nearest_transcripts(["a", "b"], ["same", "same"])


def test_utterance_rng_is_stable():
    assert utterance_rng(1, 2, "a").random() == utterance_rng(1, 2, "a").random()
    assert utterance_rng(1, 2, "a").random() != utterance_rng(1, 3, "a").random()


def test_bucket_sampler_is_deterministic_and_groups_lengths():
    lengths = [random.Random(i).random() for i in range(103)]
    sampler = LengthBucketBatchSampler(lengths, batch_size=4, bucket_batches=5, seed=2)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25 and all(len(b) == 4 for b in batches)
    assert len({i for b in batches for i in b}) == 100
    assert batches == list(sampler)
    sampler.set_epoch(1)
    assert batches != list(sampler)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / 25
    assert spread < 0.15, "members of a batch have similar lengths"


# ------------------------------------------------------------------------------ gradient caching


def _tiny_upstream(folder, dropout=0.1, **options):
    from rewire_lobes.upstream.encoder import SSLUpstream

    upstream = SSLUpstream(folder, freeze=False, dropout=dropout, **options)
    upstream.train()
    return upstream


def _views(count=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = [3200 + 400 * ((i * 5) % count) for i in range(count)]
    return [torch.randn(n, generator=generator) for n in lengths]


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk_size", [3, 16])
def test_grad_cache_gradients_equal_plain_gradients(tiny_encoder, chunk_size):
    """Same seed, dropout on: re-encoded chunks replay the first pass's dropout masks."""
    upstream = _tiny_upstream(tiny_encoder(feat_extract_norm="layer"))
    views = _views()

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    torch.manual_seed(11)
    embeddings = encode_views(encode, views, chunk_size=chunk_size)
    plain_loss = info_nce(embeddings[:4], embeddings[4:])
    plain_loss.backward()
    plain = _grads(upstream)
    upstream.zero_grad()

    torch.manual_seed(11)
    cached_loss = grad_cache_backward(encode, views, info_nce, chunk_size, "cpu")
    cached = _grads(upstream)

    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)
    assert plain.keys() == cached.keys() and len(plain) > 10
    for name in plain:
        assert torch.allclose(cached[name], plain[name], atol=1e-6, rtol=1e-4), name
    # Dropout was really on: another seed gives another loss.
    torch.manual_seed(12)
    with torch.no_grad():
        other = encode_views(encode, views, chunk_size=chunk_size)
    assert info_nce(other[:4], other[4:]).item() != pytest.approx(plain_loss.item(), abs=1e-6)


def test_grad_cache_with_hard_negatives_equals_plain_gradients(tiny_encoder):
    """Three groups of views (anchors, positives, negatives) split as the plain loss does."""
    upstream = _tiny_upstream(tiny_encoder(feat_extract_norm="layer"))
    views = _views(count=9, seed=3)

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    def loss(anchors, positives, negatives):
        return info_nce(anchors, positives, negatives=negatives)

    torch.manual_seed(5)
    plain_loss = loss(*encode_views(encode, views, chunk_size=4).chunk(3))
    plain_loss.backward()
    plain = _grads(upstream)
    upstream.zero_grad()
    torch.manual_seed(5)
    cached_loss = grad_cache_backward(encode, views, loss, 4, "cpu", num_groups=3)
    cached = _grads(upstream)
    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-6)
    for name in plain:
        assert torch.allclose(cached[name], plain[name], atol=1e-6, rtol=1e-4), name
    with pytest.raises(ValueError, match="3 groups"):
        grad_cache_backward(encode, views[:8], loss, 4, "cpu", num_groups=3)


def test_grad_cache_equals_one_full_batch_backward_group_norm(tiny_encoder):
    """GradCache's chunks pad differently from one full batch: gradients must not care.

    Eval mode, so no dropout at all: one padded pass of all views and length-sorted chunks
    cannot draw the same dropout masks (``test_grad_cache_gradients_equal_plain_gradients``
    checks that the masks are replayed). The CNN front-end, group norm included, trains.
    """
    upstream = _tiny_upstream(tiny_encoder(feat_extract_norm="group"), dropout=0.0,
                              freeze_feature_encoder=False).eval()
    views = _views()
    assert len({v.shape[-1] for v in views}) > 1

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    embeddings = encode_views(encode, views)  # one padded forward pass, chunk_size=None
    plain_loss = info_nce(embeddings[:4], embeddings[4:])
    plain_loss.backward()
    plain = _grads(upstream)
    upstream.zero_grad()

    cached_loss = grad_cache_backward(encode, views, info_nce, 3, "cpu")
    cached = _grads(upstream)

    assert cached_loss.item() == pytest.approx(plain_loss.item(), abs=1e-5)
    assert "model.feature_extractor.conv_layers.0.layer_norm.weight" in plain
    assert plain.keys() == cached.keys()
    for name in plain:
        assert torch.allclose(cached[name], plain[name], atol=1e-5, rtol=1e-3), name


@pytest.mark.parametrize("chunk_size", [1, 3])  # 1: the recipe's forward_chunk_size on a CPU
@pytest.mark.parametrize("norm", ["layer", "group"])
def test_chunked_encoding_equals_one_pass_without_dropout(tiny_encoder, norm, chunk_size):
    upstream = _tiny_upstream(tiny_encoder(feat_extract_norm=norm), dropout=0.0)
    upstream.eval()

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    with torch.no_grad():
        whole = encode_views(encode, _views())
        chunked = encode_views(encode, _views(), chunk_size=chunk_size)
    assert torch.allclose(whole, chunked, atol=1e-5)


# ------------------------------------------------------------------------------ DDP


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world, port, encoder_dir, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from rewire_lobes.rewiring.brain import trainable_parameters

        upstream = _tiny_upstream(encoder_dir, dropout=0.0).eval()  # no dropout at all
        trainable_parameters(upstream)  # freezes what DDP would see unused
        model = DistributedDataParallel(upstream)
        views = _views(8)
        pairs = len(views) // 2 // world  # this rank's share of the global batch
        mine = (views[rank * pairs:(rank + 1) * pairs]
                + views[4 + rank * pairs:4 + (rank + 1) * pairs])

        def encode(wavs, rel_lens):
            hidden, frame_lens = model(wavs, rel_lens)
            return pool_utterances(hidden, frame_lens)

        results = {}
        embeddings = encode_views(encode, mine)
        loss = global_info_nce(embeddings[:pairs], embeddings[pairs:], 0.04)
        loss.backward()
        results["plain"] = (loss.item(), _grads(upstream))
        upstream.zero_grad()
        # One view at a time (forward_chunk_size 1, the recipe on a CPU): several forward
        # passes of the DDP module before one backward.
        embeddings = encode_views(encode, mine, chunk_size=1)
        loss = global_info_nce(embeddings[:pairs], embeddings[pairs:], 0.04)
        loss.backward()
        results["one_at_a_time"] = (loss.item(), _grads(upstream))
        upstream.zero_grad()
        loss = grad_cache_backward(
            encode, mine, lambda a, p: global_info_nce(a, p, 0.04), 2, "cpu",
            sync_context=lambda sync: model.no_sync() if not sync else _null())
        results["cached"] = (loss.item(), _grads(upstream))
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.slow  # two spawned processes each import torch and transformers
def test_ddp_loss_uses_the_negatives_of_every_rank(tiny_encoder, tmp_path):
    """2 ranks x 2 pairs == 1 process x 4 pairs: same loss, same (averaged) gradients."""
    encoder_dir = tiny_encoder(feat_extract_norm="layer")
    mp.spawn(_ddp_worker, args=(2, _free_port(), encoder_dir, str(tmp_path)), nprocs=2, join=True)

    upstream = _tiny_upstream(encoder_dir, dropout=0.0).eval()

    def encode(wavs, rel_lens):
        hidden, frame_lens = upstream(wavs, rel_lens)
        return pool_utterances(hidden, frame_lens)

    embeddings = encode_views(encode, _views(8))
    loss = info_nce(embeddings[:4], embeddings[4:], 0.04)
    loss.backward()
    expected = _grads(upstream)
    local = info_nce(embeddings[:2].detach(), embeddings[4:6].detach(), 0.04).item()

    for rank in range(2):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for variant in ("plain", "one_at_a_time", "cached"):
            got_loss, grads = results[variant]
            assert got_loss == pytest.approx(loss.item(), abs=1e-5), (rank, variant)
            assert got_loss != pytest.approx(local, abs=1e-3), "the loss saw only local negatives"
            for name, grad in expected.items():
                close = torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-3)
                assert close, (rank, variant, name)
