"""The sequence-task pieces: s3prl's batches, SpecAugment, the BLSTM-CTC head, scorers."""

import torch

from rewire_lobes.downstream.batching import BatchStepSampler, length_buckets, sliding_windows
from rewire_lobes.downstream.ctc_scoring import SlotScorer, TranscriptScorer
from rewire_lobes.downstream.heads import RNNCTCHead
from rewire_lobes.downstream.specaug import FeatureSpecAugment
from rewire_lobes.text.characters import CharacterTokenizer
from rewire_lobes.text.slots import SlotCharacterTokenizer


def test_length_buckets_follow_s3prl():
    # 7 items, longest first: 6(70) 5(60) 4(50) 3(40) 2(30) 1(20) 0(10); buckets of 3.
    lengths = [10, 20, 30, 40, 50, 60, 70]
    buckets = length_buckets(lengths, batch_size=3, half_batch_above=55)
    # [6,5,4]: longest 70 > 55, halved as s3prl (first half batch//2 = 1 item).
    # [3,2,1]: 40 <= 55, whole. [0]: a last bucket of one item is dropped.
    assert buckets == [[6], [5, 4], [3, 2, 1]]
    # s3prl's threshold of 2000 samples halves every full bucket of real audio.
    real = length_buckets([16000 * s for s in range(1, 65)], batch_size=32, half_batch_above=2000)
    assert [len(b) for b in real] == [16, 16, 16, 16]


def test_sliding_windows_clip_and_halve():
    targets = [5, 9, 1, 7]  # order by targets: 1, 3, 0, 2
    samples = [10, 10, 10, 500]
    windows = sliding_windows(targets, samples, batch_size=2, half_batch_above=100)
    # The window starting at item 3 (500 samples > 100) is halved to its first item.
    assert windows == [[1, 3], [3], [0, 2], [0, 2]]
    halved = sliding_windows(targets, [10, 10, 10, 10], batch_size=2, half_batch_above=5)
    assert all(len(w) == 1 for w in halved)


def test_batch_step_sampler_resumes_and_covers_each_pass():
    batches = [[i] for i in range(5)]
    sampler = BatchStepSampler(batches, batches_per_round=3, seed=7)
    rounds = []
    for epoch in (1, 2, 3, 4):
        sampler.set_epoch(epoch)
        rounds.append(list(sampler))
    stream = [b[0] for r in rounds for b in r]
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    resumed = BatchStepSampler(batches, batches_per_round=3, seed=7)
    resumed.set_epoch(3)
    assert list(resumed) == rounds[2]
    orders = set()
    for seed in range(6):
        s = BatchStepSampler(batches, batches_per_round=5, seed=seed)
        orders.add(tuple(b[0] for b in s))
    assert len(orders) > 1


def test_specaug_masks_only_within_widths_and_keeps_padding_zero():
    torch.manual_seed(0)
    augment = FeatureSpecAugment(time_warp_window=2, num_freq_masks=2, freq_mask_width=3,
                                 num_time_masks=1, time_mask_width=4)
    features = torch.ones(3, 20, 8)
    lengths = torch.tensor([20, 12, 6])
    features[1, 12:] = 0
    features[2, 6:] = 0
    out = augment(features, lengths)
    assert out.shape == features.shape
    assert torch.all(out[1, 12:] == 0) and torch.all(out[2, 6:] == 0)
    zero_columns = (out[0] == 0).all(dim=0).sum().item()
    assert zero_columns <= 2 * 2  # two masks narrower than 3 each
    zero_rows = (out[0] == 0).all(dim=1).sum().item()
    assert zero_rows <= 3


def test_time_warp_preserves_a_constant_signal():
    torch.manual_seed(1)
    augment = FeatureSpecAugment(time_warp_window=3, num_freq_masks=0, num_time_masks=0)
    features = torch.full((2, 30, 4), 2.5)
    out = augment(features, torch.tensor([30, 30]))
    assert torch.allclose(out, features, atol=1e-5)
    ramp = torch.arange(30.0).repeat(4, 1).T[None].repeat(1, 1, 1)
    warped = augment(ramp, torch.tensor([30]))
    assert not torch.allclose(warped, ramp)  # the warp moves frames
    assert warped[0, 0, 0].item() < 1.0 and warped[0, -1, 0].item() > 28.0


def test_head_ignores_padding_and_has_superb_sizes():
    head = RNNCTCHead(16, 32, projector_dim=12, hidden_sizes=[10, 10], dropout=0.2).eval()
    frames = torch.randn(2, 9, 16)
    lengths = torch.tensor([9, 4])
    padded = frames.clone()
    padded[1, 4:] = 100.0  # garbage in the padding must not reach the valid frames
    assert torch.allclose(head(frames, lengths)[1, :4], head(padded, lengths)[1, :4], atol=1e-6)
    superb = RNNCTCHead(1024, 32)
    lstm_params = sum(p.numel() for p in superb.rnns.parameters())
    # 2 bidirectional layers: 4 * (in*h + h*h + 2h) per direction, h = 1024.
    h = 1024
    expected = 2 * 4 * (1024 * h + h * h + 2 * h) + 2 * 4 * (2 * h * h + h * h + 2 * h)
    assert lstm_params == expected
    assert superb.classifier.in_features == 2048


def test_transcript_scorer_scores_and_writes(tmp_path):
    tokenizer = CharacterTokenizer()
    scorer = TranscriptScorer(tokenizer)
    ref = tokenizer.encode("HELLO WORLD")
    hyp = [i for i in tokenizer.encode("HELLO WORD") if i != tokenizer.eos_index]
    scorer.append(["u1"], [hyp], [ref])
    scores = scorer.summarize()
    assert scores["wer"] == 50.0  # one substituted word of two
    # Units H E L L O | W O R L D | vs H E L L O | W O R D |: one deletion of 12.
    assert abs(scores["cer"] - 100.0 / 12) < 1e-9
    scorer.write(tmp_path, "dev")
    assert (tmp_path / "dev-hyp.ark").read_text() == "u1 HELLO WORD\n"
    assert (tmp_path / "dev-ref.ark").read_text() == "u1 HELLO WORLD\n"
    assert (tmp_path / "dev-wer.txt").exists()


def test_slot_scorer_drops_eos_inside_a_hypothesis(tmp_path):
    tokenizer = SlotCharacterTokenizer(["artist"])
    ref = tokenizer.encode(["PLAY", "ADELE"], ["O", "artist"])
    eos = tokenizer.eos_index
    hyp = ref[:3] + [eos] + ref[3:-1]  # an <eos> emitted mid-utterance
    scorer = SlotScorer(tokenizer)
    scorer.append(["u1"], [hyp], [ref])
    assert scorer.summarize()["slot_type_f1"] == 100.0
    scorer.write(tmp_path, "test")
    assert (tmp_path / "test-hyp.ark").read_text() == "u1 PLAY B-artist ADELE E-artist\n"


def test_padded_blstm_equals_a_packed_bidirectional_lstm():
    from rewire_lobes.downstream.heads import PaddedBLSTM

    torch.manual_seed(3)
    ours = PaddedBLSTM(5, 4)
    packed_lstm = torch.nn.LSTM(5, 4, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(packed_lstm, name).copy_(getattr(ours.forward_lstm, name))
            getattr(packed_lstm, f"{name}_reverse").copy_(getattr(ours.backward_lstm, name))
    x, lengths = torch.randn(3, 8, 5), torch.tensor([8, 5, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False)
    expected, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_lstm(packed)[0], batch_first=True)
    assert torch.allclose(ours(x, lengths), expected, atol=1e-6)


def test_transcript_scorer_cer_counts_characters_for_subword_units(tmp_path):
    from rewire_lobes.text.subwords import SubwordTokenizer, train_sentencepiece

    texts = ["HELLO WORLD", "HELLO THERE", "WORLD PEACE", "A SMALL WORLD"] * 5
    train_sentencepiece(texts, str(tmp_path / "units"), vocab_size=20)
    tokenizer = SubwordTokenizer(str(tmp_path / "units.model"))
    scorer = TranscriptScorer(tokenizer)
    ref = tokenizer.encode("HELLO WORLD")
    hyp = [i for i in tokenizer.encode("HELLO WORD") if i != tokenizer.eos_index]
    scorer.append(["u1"], [hyp], [ref])
    # Characters as for the character tokenizer: one deletion of 12 units, whatever the pieces.
    assert abs(scorer.summarize()["cer"] - 100.0 / 12) < 1e-9
