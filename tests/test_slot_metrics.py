"""SF targets and scores: s3prl's CharacterTextSlotEncoder and ctc/metric.py, on hand-made cases.

Every expected value is worked out by hand in the comment above it.
"""

import random

import pytest

from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.metrics.slots import (
    cer,
    parse_slots,
    sf_scores,
    slot_edit_f1,
    slot_type_f1,
    slot_value_cer,
    slot_value_wer,
    strip_slot_tags,
    wer,
)
from rewire_lobes.text.slots import SlotCharacterTokenizer

SNIPS_LIKE_TYPES = ["artist", "city", "state", "genre"]


def both_edit_f1(hypotheses, references):
    return (
        slot_edit_f1(hypotheses, references, loop_over_all_slot=True),
        slot_edit_f1(hypotheses, references, loop_over_all_slot=False),
    )


# ---------------------------------------------------------------------------- parsing


def test_parsing_collapses_spaces_and_needs_a_closing_tag_of_the_same_type():
    # "NEW  YORK" collapses to "NEW YORK"; "B-state OHIO" is never closed and "B-city X E-state"
    # closes with another type, so neither is a slot.
    assert parse_slots("B-city NEW  YORK E-city B-state OHIO") == {"city": ["NEW YORK"]}
    assert parse_slots("B-city X E-state") == {}
    assert parse_slots("B-city PARIS E-city AND B-city ROME E-city") == {
        "city": ["PARIS", "ROME"]
    }


def test_only_hypothesis_values_lose_their_stray_tags():
    text = "B-city NEW B-state YORK E-city"
    assert parse_slots(text) == {"city": ["NEW B-state YORK"]}
    assert parse_slots(text, strip_nested_tags=True) == {"city": ["NEW YORK"]}
    # A tag is removed with its space only: "B-state" at the end of a value has none after it.
    assert strip_slot_tags("NEW B-state") == "NEW B-state"
    assert strip_slot_tags("E-state YORK") == "E-state YORK"
    # Opening tags go first: "B-city " is removed, which leaves "E-state" without its space.
    assert strip_slot_tags("B-city E-state") == "E-state"
    assert strip_slot_tags("NEW B-state YORK E-state") == "NEW YORK"


# ---------------------------------------------------------------------------- the metrics


def test_an_empty_hypothesis():
    hypotheses, references = [""], ["PLAY B-artist ABBA E-artist"]
    # Types: hypothesis {} and reference {artist}: exactly one side empty, F1 = 0.
    assert slot_type_f1(hypotheses, references) == 0.0
    # ABBA pairs with "": 4 edits / 4 characters; as words [""] vs [ABBA]: 1 substitution / 1.
    assert slot_value_cer(hypotheses, references) == 1.0
    assert slot_value_wer(hypotheses, references) == 1.0
    # ABBA is a false negative; no false positive since the type was never predicted: 0 / 1.
    assert both_edit_f1(hypotheses, references) == (0.0, 0.0)
    # [""] vs the 4 words PLAY B-artist ABBA E-artist: 1 substitution + 3 deletions = 4 / 4.
    assert wer(hypotheses, references) == 1.0
    # "" vs 27 characters (4 + 1 + 8 + 1 + 4 + 1 + 8): 27 / 27.
    assert cer(hypotheses, references) == 1.0


def test_a_slot_value_with_spaces():
    references = ["B-city NEW YORK E-city"]
    # "NEWYORK" vs "NEW YORK": 1 deletion / 8 characters; words [NEWYORK] vs [NEW, YORK]:
    # 1 substitution + 1 deletion = 2 / 2.
    assert slot_value_cer(["B-city NEWYORK E-city"], references) == 1 / 8
    assert slot_value_wer(["B-city NEWYORK E-city"], references) == 1.0
    # Doubled spaces vanish before the values are compared (CER 0, exact match) but stay in
    # the corpus CER of the strings: 2 extra spaces / 22 characters (6 + 1 + 3 + 1 + 4 + 1 + 6).
    spaced = ["B-city NEW  YORK  E-city"]
    assert slot_value_cer(spaced, references) == 0.0
    assert both_edit_f1(spaced, references) == (100.0, 100.0)
    assert cer(spaced, references) == 2 / 22


def test_a_repeated_slot_type():
    references = ["B-city ROME E-city AND B-city ROMA E-city"]
    hypotheses = ["B-city ROME E-city"]
    # One type on each side, counts ignored: F1 = 1.
    assert slot_type_f1(hypotheses, references) == 1.0
    # ROME pairs with ROME (0 edits), ROMA with the best hypothesis value ROME (1 edit):
    # 1 / (4 + 4).
    assert slot_value_cer(hypotheses, references) == 1 / 8
    # ROME is a true positive; ROMA a false negative and a false positive: 2 / (2 + 1 + 1).
    assert both_edit_f1(hypotheses, references) == (50.0, 50.0)
    # Order does not matter: each reference value finds its own best hypothesis value.
    swapped = ["B-city ROMA E-city AND B-city ROME E-city"]
    assert slot_value_cer(swapped, references) == 0.0


def test_a_hypothesis_value_far_worse_than_nothing_is_never_chosen():
    # s3prl starts the search for the closest value at CER 100: "A" * 150 against "B" has
    # CER 150, so B pairs with "" instead: 1 edit / 1 character, not 150 / 1.
    hypotheses, references = ["B-city " + "A" * 150 + " E-city"], ["B-city B E-city"]
    assert slot_value_cer(hypotheses, references) == 1.0
    # With a closer candidate first in line the rule picks that one: "BB" vs "B" is 1 / 1.
    hypotheses = ["B-city BB E-city B-city " + "A" * 150 + " E-city"]
    assert slot_value_cer(hypotheses, references) == 1.0
    # And a perfect one is found wherever it stands: 0 / 1.
    hypotheses = ["B-city BB E-city B-city B E-city"]
    assert slot_value_cer(hypotheses, references) == 0.0


def test_a_tag_with_no_closing_tag_is_no_slot():
    hypotheses, references = ["B-city PARIS"], ["B-city PARIS E-city"]
    # The hypothesis has no slot: F1 0; PARIS pairs with "": 5 / 5.
    assert slot_type_f1(hypotheses, references) == 0.0
    assert slot_value_cer(hypotheses, references) == 1.0


def test_a_hypothesis_type_absent_from_the_reference():
    hypotheses = ["B-city ROME E-city B-state OHIO E-state"]
    references = ["B-city ROME E-city"]
    # P = 1/2, R = 1: F1 = 2 * 1/2 * 1 / (3/2) = 2/3.
    assert slot_type_f1(hypotheses, references) == pytest.approx(2 / 3, abs=1e-15)
    # The state slot is not scored in the value CER: ROME vs ROME, 0 / 4.
    assert slot_value_cer(hypotheses, references) == 0.0
    # full: TP 1, the extra OHIO is a false positive: 2 / (2 + 1) = 66.67; part ignores it.
    assert both_edit_f1(hypotheses, references) == pytest.approx((200 / 3, 100.0))


def test_no_slot_on_either_side_scores_one():
    # Utterance 1 has no slot anywhere: F1 1; utterance 2 misses its only slot: F1 0.
    hypotheses, references = ["PLAY", ""], ["PLAY", "B-city ROME E-city"]
    assert slot_type_f1(hypotheses, references) == 0.5
    assert slot_type_f1(["PLAY"], ["PLAY MUSIC"]) == 1.0


def test_mismatched_types():
    hypotheses, references = ["B-state ROME E-state"], ["B-city ROME E-city"]
    # Both sides have a type but none shared: P = R = 0, F1 = 0.
    assert slot_type_f1(hypotheses, references) == 0.0
    # city is missing from the hypothesis: ROME pairs with "", 4 / 4.
    assert slot_value_cer(hypotheses, references) == 1.0
    # full: FN 1 (city unpredicted, no FP for it) + FP 1 (state): 0 / 2; part: 0 / 1.
    assert both_edit_f1(hypotheses, references) == (0.0, 0.0)


def test_stray_nested_tags_in_a_hypothesis_value():
    hypotheses = ["B-city NEW B-state YORK E-city"]
    references = ["B-city NEW YORK E-city"]
    # The value is cleaned to NEW YORK: an exact match, CER 0, edit F1 100.
    assert slot_value_cer(hypotheses, references) == 0.0
    assert both_edit_f1(hypotheses, references) == (100.0, 100.0)
    # References are not cleaned: as a reference, "NEW B-state YORK" (3 + 1 + 7 + 1 + 4 = 16
    # characters) vs the hypothesis "NEW YORK" is 8 deletions ("B-state ") / 16.
    assert slot_value_cer(references, hypotheses) == 8 / 16


def test_corpus_rates_pool_over_utterances():
    # cer: ("AB" vs "ABC": 1) + ("" vs "D": 1) = 2 / (3 + 1).
    assert cer(["AB", ""], ["ABC", "D"]) == 0.5
    # wer: [A, B-x, C] vs [A, B-x, D] = 1; [""] vs [""] = 0; over 3 + 1 words (an empty
    # reference is one empty word, as s3prl's split(" ") gives).
    assert wer(["A B-x C", ""], ["A B-x D", ""]) == 1 / 4


def test_sf_scores_are_percent():
    hypotheses = ["PLAY B-artist ABBA E-artist", "B-city PARIS E-city B-state OHIO E-state"]
    references = ["PLAY B-artist ABBAS E-artist", "B-city PARIS E-city"]
    scores = sf_scores(hypotheses, references)
    assert set(scores) == {"slot_type_f1", "slot_value_cer", "slot_value_wer",
                           "slot_edit_f1_full", "slot_edit_f1_part", "wer", "cer"}
    # type F1: utterance 1 → 1, utterance 2 → 2/3 (P 1/2, R 1): mean 5/6 → 83.33 %.
    assert scores["slot_type_f1"] == pytest.approx(100 * 5 / 6)
    # value CER: ABBA vs ABBAS 1 + PARIS 0 over 5 + 5 characters → 10 %.
    assert scores["slot_value_cer"] == pytest.approx(10.0)
    # value WER: [ABBA] vs [ABBAS] 1 + 0 over 1 + 1 words → 50 %.
    assert scores["slot_value_wer"] == pytest.approx(50.0)
    # edit F1, full: TP 1 (PARIS), FN+FP 1 each (ABBAS), FP 1 (OHIO): 2 / (2 + 2 + 1) → 40;
    # part: 2 / (2 + 1 + 1) → 50. Already percent, not multiplied again.
    assert scores["slot_edit_f1_full"] == pytest.approx(40.0)
    assert scores["slot_edit_f1_part"] == pytest.approx(50.0)
    # wer: 1 (ABBA) + 3 insertions (B-state OHIO E-state) over 4 + 3 words → 57.14 %.
    assert scores["wer"] == pytest.approx(100 * 4 / 7)
    # cer: 1 (S) + 21 inserted (" B-state OHIO E-state": 1 + 7 + 1 + 4 + 1 + 7) over
    # 28 (4 + 1 + 8 + 1 + 5 + 1 + 8) + 19 (6 + 1 + 5 + 1 + 6) characters.
    assert scores["cer"] == pytest.approx(100 * 22 / 47)


def test_nothing_to_score_is_refused():
    with pytest.raises(ValueError, match="no references"):
        sf_scores([], [])
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        slot_type_f1(["", ""], [""])
    # No reference slot: s3prl divides by zero in the value CER and, with no hypothesis slot
    # either, in the edit F1.
    with pytest.raises(ValueError, match="slot value"):
        slot_value_cer(["B-city ROME E-city"], ["PLAY"])
    with pytest.raises(ValueError, match="edit F1"):
        slot_edit_f1(["PLAY"], ["PLAY"], loop_over_all_slot=True)
    with pytest.raises(ValueError, match="no reference characters"):
        cer(["A"], [""])


def test_edit_distance_is_plain_levenshtein():
    import editdistance  # s3prl's; pinned in the test extras

    rng = random.Random(7)
    for _ in range(200):
        hypothesis = "".join(rng.choice("AB C") for _ in range(rng.randint(0, 12)))
        reference = "".join(rng.choice("AB C") for _ in range(rng.randint(1, 12)))
        assert cer([hypothesis], [reference]) * len(reference) == pytest.approx(
            editdistance.eval(hypothesis, reference)
        )
        words = reference.split(" ")
        assert wer([hypothesis], [reference]) * len(words) == pytest.approx(
            editdistance.eval(hypothesis.split(" "), words)
        )


# ---------------------------------------------------------------------------- the tokenizer


def test_vocabulary_layout():
    slot_types = [f"type{number}" for number in range(39)]
    tokenizer = SlotCharacterTokenizer(slot_types)
    # 3 specials + 28 characters + 2 tags for each of the 39 types.
    assert tokenizer.size == len(tokenizer) == 3 + 28 + 2 * 39 == 109
    assert (tokenizer.blank_index, tokenizer.eos_index, tokenizer.unk_index) == (0, 1, 2)
    assert tokenizer.symbols[:5] == ["<pad>", "<eos>", "<unk>", " ", "A"]
    assert tokenizer.symbols[29:33] == ["Z", "'", "B-type0", "E-type0"]
    assert tokenizer.symbols[-1] == "E-type38"


def test_the_protocol_example_round_trips():
    tokenizer = SlotCharacterTokenizer(SNIPS_LIKE_TYPES)
    ids = tokenizer.encode(["PLAY", "THE", "BEATLES"], ["O", "artist", "artist"], "utt1")
    assert [tokenizer.symbols[index] for index in ids] == (
        list("PLAY ") + ["B-artist"] + list("THE BEATLES") + ["E-artist", "<eos>"]
    )
    assert tokenizer.decode(ids) == "PLAY B-artist THE BEATLES E-artist"


def test_ampersand_and_punctuation():
    tokenizer = SlotCharacterTokenizer(SNIPS_LIKE_TYPES)
    words, slots = ["ROCK", "&", "ROLL"], ["genre"] * 3
    assert tokenizer.decode(tokenizer.encode(words, slots)) == "B-genre ROCK AND ROLL E-genre"
    # s3prl skips "?" without its space: ROLL (not the last word) is followed by a space and
    # the target gets no <eos>.
    ids = tokenizer.encode(words + ["?"], slots + ["O"])
    assert tokenizer.eos_index not in ids
    assert tokenizer.decode(ids) == "B-genre ROCK AND ROLL E-genre "
    # Neighbours are read in the original list: a skipped "-" labelled O splits the span.
    ids = tokenizer.encode(["NEW", "-", "YORK"], ["city", "O", "city"])
    assert tokenizer.decode(ids) == "B-city NEW E-city B-city YORK E-city"
    ids = tokenizer.encode(["NEW", "-", "YORK"], ["city"] * 3)
    assert tokenizer.decode(ids) == "B-city NEW YORK E-city"


def test_adjacent_spans_of_different_types():
    tokenizer = SlotCharacterTokenizer(SNIPS_LIKE_TYPES)
    ids = tokenizer.encode(["PARIS", "TEXAS"], ["city", "state"])
    text = tokenizer.decode(ids)
    assert text == "B-city PARIS E-city B-state TEXAS E-state"
    assert parse_slots(text) == {"city": ["PARIS"], "state": ["TEXAS"]}


def test_decoding_skips_padding_and_stops_at_eos():
    tokenizer = SlotCharacterTokenizer(SNIPS_LIKE_TYPES)
    a, b = tokenizer.symbols.index("A"), tokenizer.symbols.index("B")
    assert tokenizer.decode([0, a, 0, 2, b, 1, a, 0]) == "A<unk>B"
    with pytest.raises(ValueError, match="outside"):
        tokenizer.decode([tokenizer.size])


def test_unknown_characters_are_refused_or_counted():
    words, slots = ["CAFÉ", "NO1R", "?"], ["O", "O", "O"]
    with pytest.raises(DataFileError, match=r"utterance utt7: characters '1' 'É'"):
        SlotCharacterTokenizer(SNIPS_LIKE_TYPES).encode(words, slots, "utt7")
    mapping = SlotCharacterTokenizer(SNIPS_LIKE_TYPES, unknown="map")
    ids = mapping.encode(words, slots, "utt7")
    assert ids.count(mapping.unk_index) == 2
    mapping.encode(["É"], ["O"])
    assert mapping.unknown_characters == {"É": 2, "1": 1}
    # check_text refuses whatever the policy; skipped marks and "&" are not characters spelled.
    with pytest.raises(DataFileError, match="utt8"):
        mapping.check_text(["CAFÉ"], "utt8")
    mapping.check_text(["ROCK", "&", "ROLL", "?", "!."], "utt9")


def test_bad_labels_name_the_utterance():
    tokenizer = SlotCharacterTokenizer(SNIPS_LIKE_TYPES)
    with pytest.raises(DataFileError, match="utt3: 2 words but 1 slot labels"):
        tokenizer.encode(["A", "B"], ["O"], "utt3")
    with pytest.raises(DataFileError, match=r"utt4: slot labels \['movie'\]"):
        tokenizer.encode(["A", "B"], ["O", "movie"], "utt4")
    with pytest.raises(ValueError, match="'O'"):
        SlotCharacterTokenizer(["O", "city"])
    with pytest.raises(ValueError, match="repeat"):
        SlotCharacterTokenizer(["city", "city"])
    with pytest.raises(OptionError):
        SlotCharacterTokenizer(["city"], unknown="drop")
