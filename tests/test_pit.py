"""PIT BCE loss and frame-level diarization error counts, checked against hand computations."""

import itertools
import math

import pytest
import torch

from rewire_lobes.downstream.pit import frame_error_counts, pit_bce


def bce(logit, label):
    probability = 1 / (1 + math.exp(-logit))
    return -(label * math.log(probability) + (1 - label) * math.log(1 - probability))


def brute_force_pit(logits, labels, lengths):
    """Python loops over utterances, permutations, frames and speakers."""
    speakers = logits.shape[2]
    total, best_orders = 0.0, []
    for b, length in enumerate(lengths.tolist()):
        losses = {}
        for order in itertools.permutations(range(speakers)):
            losses[order] = 0.0
            for t in range(length):
                frame = [
                    bce(logits[b, t, s].item(), labels[b, t, order[s]].item())
                    for s in range(speakers)
                ]
                losses[order] += sum(frame) / speakers
        best = min(losses, key=losses.get)
        total += losses[best]
        best_orders.append(best)
    return total / sum(lengths.tolist()), best_orders


def batch(seed=0, speakers=2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, speakers, generator=generator) * 2
    labels = (torch.rand(3, 6, speakers, generator=generator) > 0.5).float()
    return logits, labels, torch.tensor([6, 4, 1])


@pytest.mark.parametrize("speakers", [2, 3])
def test_loss_is_the_minimum_over_permutations(speakers):
    logits, labels, lengths = batch(speakers=speakers)
    loss, permuted = pit_bce(logits, labels, lengths)
    expected, orders = brute_force_pit(logits, labels, lengths)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    for b, order in enumerate(orders):
        assert torch.equal(permuted[b], labels[b][:, list(order)])


def test_best_permutation_is_found():
    target = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]).expand(3, 4, 2)
    logits = 8 * (2 * target - 1)  # confident and right in slot order
    labels = target.clone()
    labels[1] = target[1][:, [1, 0]]  # the second utterance's speakers listed the other way
    loss, permuted = pit_bce(logits, labels, torch.tensor([4, 4, 3]))
    assert torch.equal(permuted, target)
    assert loss.item() == pytest.approx(bce(8.0, 1.0), rel=1e-3)  # float32


def test_padding_does_not_matter():
    logits, labels, lengths = batch()
    loss, permuted = pit_bce(logits, labels, lengths)
    padding = torch.arange(6)[None, :, None] >= lengths[:, None, None]
    changed_logits = torch.where(padding, torch.full_like(logits, 50.0), logits)
    changed_labels = torch.where(padding, 1 - labels, labels)
    changed_loss, changed_permuted = pit_bce(changed_logits, changed_labels, lengths)
    assert changed_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    valid = ~padding.expand_as(labels)
    assert torch.equal(changed_permuted[valid], permuted[valid])


def test_gradients_reach_valid_frames_only():
    logits, labels, lengths = batch()
    logits.requires_grad_(True)
    loss, permuted = pit_bce(logits, labels, lengths)
    loss.backward()
    assert not permuted.requires_grad
    assert logits.grad[0].abs().sum() > 0
    assert logits.grad[1, :4].abs().sum() > 0
    assert torch.all(logits.grad[1, 4:] == 0)
    assert torch.all(logits.grad[2, 1:] == 0)


def test_lengths_beyond_the_frames_are_refused():
    logits, labels, _ = batch()
    with pytest.raises(ValueError, match="lengths"):
        pit_bce(logits, labels, torch.tensor([7, 1, 1]))


def test_frame_error_counts_hand_case():
    # (label, decision) per frame; the last frame is padding.
    labels = torch.tensor([[[1, 0], [1, 1], [0, 0], [1, 0], [0, 1], [1, 1]]]).float()
    decisions = torch.tensor([[[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]]])
    logits = torch.where(decisions.bool(), 3.0, -3.0)
    counts = frame_error_counts(logits, labels, torch.tensor([5]))
    # frame 1 misses one speaker; frames 2 and 4 add one; frame 3 confuses one.
    assert counts == {
        "miss": 1,
        "false_alarm": 1 + 1,
        "confusion": 1,
        "speaker_time": 1 + 2 + 0 + 1 + 1,
        "correct": (2 + 1 + 1 + 0 + 1) / 2,
        "frames": 5,
    }


def test_frame_error_counts_sum_over_the_batch():
    labels = torch.tensor([[[1, 0], [1, 0]], [[0, 1], [0, 0]]]).float()
    logits = torch.tensor([[[1.0, -1.0], [-1.0, -1.0]], [[-1.0, 1.0], [1.0, 1.0]]])
    counts = frame_error_counts(logits, labels, torch.tensor([2, 1]))
    assert counts["miss"] == 1  # the first utterance's second frame
    assert counts["false_alarm"] == 0  # the second utterance's second frame is padding
    assert counts["speaker_time"] == 2 + 1
    assert counts["frames"] == 2 + 1
    assert counts["correct"] == (2 + 1 + 2) / 2
