"""SD scoring: RTTM reading/writing, posteriors to turns, overall DER and the decision grid.

Expected DERs are worked out by hand from the turns (collar 0, overlap scored, each file
scored over the extent of its reference and hypothesis turns).
"""

import logging
import warnings

import numpy as np
import pytest

from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.metrics.diarization import (
    best_decision,
    decision_grid,
    diarization_error,
    hypothesis_turns,
    posteriors_to_turns,
    read_rttm,
    write_rttm,
)


def der_of(reference_turns, hypothesis_turns_):
    return diarization_error({"r": reference_turns}, {"r": hypothesis_turns_})


# ---------------------------------------------------------------- DER


def test_perfect_hypothesis_has_no_error():
    reference = [(0.0, 4.0, "A"), (4.0, 10.0, "B")]
    scores = der_of(reference, reference)
    assert scores["der"] == 0
    assert scores["total"] == pytest.approx(10)


def test_swapped_labels_are_mapped_optimally():
    reference = [(0.0, 4.0, "A"), (4.0, 10.0, "B")]
    hypothesis = [(0.0, 4.0, "r_1"), (4.0, 10.0, "r_0")]
    assert der_of(reference, hypothesis)["der"] == 0


def test_missed_turn():
    reference = [(0.0, 4.0, "A"), (5.0, 10.0, "B")]
    scores = der_of(reference, [(0.0, 4.0, "x")])
    assert scores["missed"] == pytest.approx(5)
    assert scores["false_alarm"] == scores["confusion"] == 0
    assert scores["der"] == pytest.approx(5 / (4 + 5))


def test_false_alarm_turn():
    reference = [(0.0, 4.0, "A")]
    scores = der_of(reference, [(0.0, 4.0, "x"), (6.0, 8.0, "y")])
    assert scores["false_alarm"] == pytest.approx(2)
    assert scores["der"] == pytest.approx(2 / 4)


def test_confusion():
    reference = [(0.0, 6.0, "A"), (6.0, 10.0, "B")]
    # x covers A and 2 s of B; y the rest of B: x->A, y->B, 6..8 is confused.
    scores = der_of(reference, [(0.0, 8.0, "x"), (8.0, 10.0, "y")])
    assert scores["confusion"] == pytest.approx(2)
    assert scores["missed"] == scores["false_alarm"] == 0
    assert scores["der"] == pytest.approx(2 / 10)


def test_overlapped_speech_is_scored():
    # A 0-5 and B 4-10 overlap for 1 s: 11 s of speaker time. One hypothesis speaker
    # maps to B (6 s in common): 0-4 confused, 4-5 one speaker missed.
    reference = [(0.0, 5.0, "A"), (4.0, 10.0, "B")]
    scores = der_of(reference, [(0.0, 10.0, "x")])
    assert scores["total"] == pytest.approx(5 + 6)
    assert scores["missed"] == pytest.approx(1)
    assert scores["confusion"] == pytest.approx(4)
    assert scores["der"] == pytest.approx((1 + 4) / 11)


def test_two_speakers_on_the_same_segment_are_both_kept():
    reference = [(0.0, 5.0, "A"), (0.0, 5.0, "B")]
    scores = der_of(reference, [(0.0, 5.0, "x")])
    assert scores["total"] == pytest.approx(10)
    assert scores["der"] == pytest.approx(5 / 10)


def test_hypothesis_outside_the_reference_extent_grows_the_scored_region():
    reference = [(0.0, 4.0, "A")]
    scores = der_of(reference, [(0.0, 4.0, "x"), (10.0, 12.0, "x")])
    assert scores["false_alarm"] == pytest.approx(2)
    assert scores["der"] == pytest.approx(2 / 4)


def test_overall_der_sums_errors_over_files():
    reference = {"long": [(0.0, 10.0, "A")], "short": [(0.0, 2.0, "B")]}
    # long: 2 s missed of 10 (DER 0.2); short: no hypothesis, all 2 s missed (DER 1.0).
    hypothesis = {"long": [(2.0, 10.0, "x")]}
    scores = diarization_error(reference, hypothesis)
    assert scores["der"] == pytest.approx((2 + 2) / (10 + 2))
    assert scores["der"] != pytest.approx((0.2 + 1.0) / 2)
    assert scores["missed"] == pytest.approx(4)
    assert scores["recordings"] == 2


def test_scoring_passes_its_own_uem():
    reference = {"r": [(0.0, 4.0, "A")]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diarization_error(reference, {"r": [(1.0, 5.0, "x")]})


def test_hypothesis_recording_missing_from_reference_is_an_error():
    with pytest.raises(ValueError, match="stray"):
        diarization_error({"r": [(0.0, 1.0, "A")]}, {"r": [], "stray": [(0.0, 1.0, "x")]})


# ---------------------------------------------------------------- RTTM files


def test_read_rttm_tab_separated_sorted_with_blank_lines(tmp_path):
    path = tmp_path / "rttm"
    path.write_text(
        "SPEAKER\tmix1\t1\t2.50\t1.00\t<NA>\t<NA>\t84\t<NA>\n"
        "\n"
        "SPEAKER mix1 1 0.25 2.00 <NA> <NA> 174 <NA> <NA>\n"
        "SPEAKER\tmix2\t1\t0.00\t3.00\t<NA>\t<NA>\t84\t<NA>\n"
    )
    turns, stats = read_rttm(path)
    assert turns["mix1"] == [(0.25, 2.25, "174"), (2.5, 3.5, "84")]
    assert turns["mix2"] == [(0.0, 3.0, "84")]
    assert stats == {
        "recordings": 2,
        "turns": 3,
        "speakers": 2,
        "merged_turns": 0,
        "recordings_without_turns": 0,
    }


def test_read_rttm_merges_overlapping_turns_of_one_speaker(tmp_path, caplog):
    path = tmp_path / "rttm"
    path.write_text(
        "SPEAKER m 1 0.0 5.0 <NA> <NA> a <NA>\n"
        "SPEAKER m 1 4.0 3.0 <NA> <NA> a <NA>\n"  # overlaps the first: merged
        "SPEAKER m 1 7.0 1.0 <NA> <NA> a <NA>\n"  # only touches: kept apart
        "SPEAKER m 1 4.0 3.0 <NA> <NA> b <NA>\n"  # another speaker: kept
    )
    with caplog.at_level(logging.WARNING):
        turns, stats = read_rttm(path)
    assert turns["m"] == [(0.0, 7.0, "a"), (4.0, 7.0, "b"), (7.0, 8.0, "a")]
    assert stats["merged_turns"] == 1
    assert stats["turns"] == 3
    assert "merged 1" in caplog.text


def test_read_rttm_recording_missing_from_wav_scp(tmp_path):
    path = tmp_path / "rttm"
    path.write_text("SPEAKER known 1 0 1 <NA> <NA> a <NA>\nSPEAKER ghost 1 0 1 <NA> <NA> a <NA>\n")
    with pytest.raises(DataFileError) as error:
        read_rttm(path, recordings=["known"])
    message = str(error.value)
    assert str(path) in message and "ghost" in message and "wav.scp" in message


def test_read_rttm_gives_recordings_without_turns_an_empty_list(tmp_path):
    path = tmp_path / "rttm"
    path.write_text("SPEAKER a 1 0 1 <NA> <NA> x <NA>\n")
    turns, stats = read_rttm(path, recordings=["a", "silent"])
    assert turns["silent"] == []
    assert stats["recordings_without_turns"] == 1


@pytest.mark.parametrize(
    "bad_line, complaint",
    [
        ("SPEAKER m 1 0.0 1.0 <NA> <NA> a", "fields"),
        ("LEXEME m 1 0.0 1.0 <NA> <NA> a <NA>", "SPEAKER"),
        ("SPEAKER m 1 zero 1.0 <NA> <NA> a <NA>", "start"),
        ("SPEAKER m 1 0.0 nan <NA> <NA> a <NA>", "duration"),
        ("SPEAKER m 1 -1.0 1.0 <NA> <NA> a <NA>", "negative"),
        ("SPEAKER m 1 0.0 -0.5 <NA> <NA> a <NA>", "negative"),
    ],
)
def test_read_rttm_malformed_line_names_file_and_line(tmp_path, bad_line, complaint):
    path = tmp_path / "rttm"
    path.write_text(f"SPEAKER m 1 0.0 1.0 <NA> <NA> a <NA>\n\n{bad_line}\n")
    with pytest.raises(DataFileError, match=complaint) as error:
        read_rttm(path)
    assert f"{path}:3" in str(error.value)


def test_write_then_read_round_trip(tmp_path):
    turns = {
        "mix_b": [(1.24, 3.5, "mix_b_1"), (0.0, 2.02, "mix_b_0")],
        "mix_a": [(0.02, 0.4, "mix_a_0")],
    }
    path = tmp_path / "out" / "hyp.rttm"
    write_rttm(path, turns)
    lines = path.read_text().splitlines()
    assert lines[0] == "SPEAKER mix_a 1 0.02 0.38 <NA> <NA> mix_a_0 <NA>"
    assert [line.split()[1] for line in lines] == ["mix_a", "mix_b", "mix_b"]
    read, _ = read_rttm(path)
    assert read.keys() == turns.keys()
    for recording, expected in turns.items():
        assert [speaker for _, _, speaker in read[recording]] == [s for _, _, s in sorted(expected)]
        assert np.allclose([t[:2] for t in read[recording]], [t[:2] for t in sorted(expected)])


# ---------------------------------------------------------------- posteriors to turns


def test_threshold_is_strictly_greater():
    posteriors = np.array([[0.5], [0.51], [0.5]])
    assert posteriors_to_turns(posteriors, 0.5, 1, 1.0, "m") == [(1.0, 2.0, "m_0")]


def test_turn_times_and_labels():
    posteriors = np.zeros((10, 2))
    posteriors[3:8, 0] = 0.9
    posteriors[0:2, 1] = 0.9
    posteriors[9, 1] = 0.9  # a run ending on the last frame
    turns = posteriors_to_turns(posteriors, 0.5, 1, 0.02, "mix")
    assert turns == [
        pytest.approx((0 * 0.02, 2 * 0.02, "mix_1")),
        pytest.approx((3 * 0.02, 8 * 0.02, "mix_0")),
        pytest.approx((9 * 0.02, 10 * 0.02, "mix_1")),
    ]


def test_median_filter_removes_a_blip_at_width_11_only():
    posteriors = np.zeros((30, 1))
    posteriors[10] = 1.0  # a one-frame blip
    posteriors[20:30] = 1.0
    posteriors[24] = 0.0  # a one-frame hole in a run
    unfiltered = posteriors_to_turns(posteriors, 0.5, 1, 1.0, "m")
    assert unfiltered == [(10.0, 11.0, "m_0"), (20.0, 24.0, "m_0"), (25.0, 30.0, "m_0")]
    # Width 11: the blip (1 of 11) goes and the hole (9 of 11 around it) fills; frame 20
    # (window 15..25: 5 ones) and frame 29 (24..34 with zero-padding: 5 ones) turn off.
    assert posteriors_to_turns(posteriors, 0.5, 11, 1.0, "m") == [(21.0, 29.0, "m_0")]


def test_median_filter_on_a_recording_shorter_than_the_window():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert posteriors_to_turns(np.ones((3, 1)), 0.5, 11, 1.0, "m") == []
        assert posteriors_to_turns(np.ones((0, 2)), 0.5, 11, 1.0, "m") == []


@pytest.mark.parametrize("width", [0, 2, 10, -1, 1.0])
def test_bad_median_width_is_an_option_error(width):
    with pytest.raises(OptionError, match="median_width"):
        posteriors_to_turns(np.zeros((5, 2)), 0.5, width, 0.02, "m")


# ---------------------------------------------------------------- decision grid


def grid_case():
    """Speaker "a" speaks 0-1 s (frames 0-9 at 0.1 s).

    Slot 0 follows it at 0.65; slot 1 holds 0.35 over 1-2 s (a false alarm below 0.35) and a
    0.9 blip at 1.5 s (a 0.1 s false alarm unless the width-11 filter removes it).
    """
    posteriors = np.zeros((20, 2))
    posteriors[0:10, 0] = 0.65
    posteriors[10:20, 1] = 0.35
    posteriors[15, 1] = 0.9
    return {"r": posteriors}, {"r": [(0.0, 1.0, "a")]}


def test_decision_grid_scores_every_combination():
    posteriors, reference = grid_case()
    grid = decision_grid(posteriors, reference, 0.1)
    assert [(entry["threshold"], entry["median_width"]) for entry in grid] == [
        (threshold, width) for threshold in (0.3, 0.4, 0.5, 0.6, 0.7) for width in (1, 11)
    ]
    der = {(entry["threshold"], entry["median_width"]): entry["der"] for entry in grid}
    assert der[0.3, 1] == pytest.approx(1.0 / 1)  # slot 1 active all of 1-2 s
    assert der[0.3, 11] == pytest.approx(1.0 / 1)
    assert der[0.5, 1] == pytest.approx(0.1 / 1)  # the blip
    assert der[0.5, 11] == 0
    assert der[0.7, 1] == pytest.approx((1.0 + 0.1) / 1)  # speaker missed, blip kept
    assert der[0.7, 11] == pytest.approx(1.0 / 1)


def test_best_decision_is_the_lowest_der_first_of_ties():
    posteriors, reference = grid_case()
    best = best_decision(decision_grid(posteriors, reference, 0.1))
    # 0.4, 0.5 and 0.6 with width 11 all score 0: the lowest threshold wins.
    assert (best["threshold"], best["median_width"], best["der"]) == (0.4, 11, 0)


def test_hypothesis_turns_label_each_recording():
    posteriors = {"m1": np.array([[0.9, 0.1]]), "m2": np.array([[0.1, 0.9]])}
    turns = hypothesis_turns(posteriors, 0.5, 1, 0.02)
    assert turns == {"m1": [(0.0, 0.02, "m1_0")], "m2": [(0.0, 0.02, "m2_1")]}
