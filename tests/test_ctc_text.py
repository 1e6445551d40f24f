"""ASR targets, greedy CTC decoding and error rates as official s3prl (protocol §1, §7.1)."""

import pytest
import torch

from rewire_lobes.downstream.ctc_decoding import greedy_ctc
from rewire_lobes.errors import DataFileError
from rewire_lobes.metrics.error_rates import ErrorRates, write_ark
from rewire_lobes.text.characters import CharacterTokenizer
from rewire_lobes.text.subwords import SubwordTokenizer, train_sentencepiece

BLANK = 0
H, E, L, O = 11, 5, 15, 8  # char.dict positions 7, 1, 11, 4, after the 4 fairseq specials


def frame_scores(frame_ids, num_classes=32):
    """``[B, T, C]`` log-probabilities whose arg-max per frame is ``frame_ids``."""
    one_hot = torch.nn.functional.one_hot(torch.tensor(frame_ids), num_classes).float()
    return torch.log_softmax(one_hot * 5.0, dim=-1)


# ------------------------------------------------------------------ greedy decoding


def test_greedy_keeps_a_double_letter_split_by_a_blank_and_collapses_a_run():
    frames = [
        [H, E, L, BLANK, L, O],  # "L <blank> L": two letters
        [H, E, L, L, L, O],  # "L L L": one letter
    ]
    decoded = greedy_ctc(frame_scores(frames), torch.tensor([6, 6]), BLANK)
    assert decoded == [[H, E, L, L, O], [H, E, L, O]]


def test_greedy_blanks_only_and_zero_length_give_nothing():
    frames = [[BLANK, BLANK, BLANK], [H, E, L]]
    assert greedy_ctc(frame_scores(frames), torch.tensor([3, 0]), BLANK) == [[], []]


def test_greedy_ignores_frames_past_the_length():
    # Padding frames hold letters; a repeat of the last valid id after the length is no new run.
    frames = [[H, E, BLANK, O, O, L], [L, L, O, L, H, H]]
    decoded = greedy_ctc(frame_scores(frames), torch.tensor([3, 4]), BLANK)
    assert decoded == [[H, E], [L, O, L]]


def test_greedy_refuses_relative_lengths():
    with pytest.raises(TypeError):
        greedy_ctc(frame_scores([[H, E]]), torch.tensor([1.0]), BLANK)


# ------------------------------------------------------------------ character tokenizer


def test_vocabulary_is_fairseq_specials_then_char_dict_order():
    tokenizer = CharacterTokenizer()
    assert tokenizer.size == 32
    assert tokenizer.symbols[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert "".join(tokenizer.symbols[4:]) == "|ETAONIHSRDLUMCWFGYPBVK'XJQZ"
    assert (tokenizer.blank_index, tokenizer.pad_index, tokenizer.eos_index,
            tokenizer.unk_index) == (0, 1, 2, 3)


def test_encode_gives_s3prl_sequence_with_eos():
    tokenizer = CharacterTokenizer()
    ids = tokenizer.encode("HELLO WORLD", data_id="u1")
    symbols = [tokenizer.symbols[i] for i in ids]
    assert " ".join(symbols) == "H E L L O | W O R L D | </s>"
    assert ids[:5] == [H, E, L, L, O]
    assert ids[-1] == tokenizer.eos_index


def test_lower_case_is_upper_cased():
    tokenizer = CharacterTokenizer()
    assert tokenizer.encode("it's ok", "u1") == tokenizer.encode("IT'S OK", "u1")


def test_decode_round_trip_drops_eos_and_blank_keeps_boundaries():
    tokenizer = CharacterTokenizer()
    ids = tokenizer.encode("HELLO WORLD", "u1")
    tokens, words = tokenizer.decode(ids)
    assert tokens == list("HELLO|WORLD|")
    assert words == "HELLO WORLD"
    # A hypothesis with blanks and repeated boundaries still reads as single-spaced words.
    bar = tokenizer.symbols.index("|")
    tokens, words = tokenizer.decode([BLANK, bar, H, E, bar, bar, L, O, tokenizer.eos_index])
    assert tokens == ["|", "H", "E", "|", "|", "L", "O"]
    assert words == "HE LO"


def test_out_of_vocabulary_character_names_the_utterance():
    with pytest.raises(DataFileError, match=r"utt-7.*'É'"):
        CharacterTokenizer().encode("CAFé AU LAIT", data_id="utt-7")


def test_unknown_map_encodes_unk_and_counts():
    tokenizer = CharacterTokenizer(unknown="map")
    ids = tokenizer.encode("A1 B1", "u1")
    assert ids.count(tokenizer.unk_index) == 2
    assert tokenizer.unknown_characters == {"1": 2}


# ------------------------------------------------------------------ error rates


def test_error_rates_divide_by_reference_length():
    rates = ErrorRates()
    rates.append(
        ["a", "b", "c", "d"],
        [["THE", "CAT", "SAT"], [], ["A", "B"], ["HELLO"]],
        [["THE", "CAT"], ["GO", "HOME", "NOW"], [], ["HELLO", "THERE", "YOU", "ALL"]],
        [list("AB"), [], list("XY"), list("ABC")],
        [list("AC"), list("ABC"), [], list("ABCDE")],
    )
    # words: a 1 insertion / 2 ref, b 3 deletions / 3, c 2 insertions / 0, d 3 deletions / 4
    #   -> 9 edits / 9 reference words = 100 %. Dividing by the 6 hypothesis words
    #   (the fork's bug) would give 150 %.
    # units: a 1 substitution / 2, b 3 / 3, c 2 / 0, d 2 / 5 -> 8 / 10 = 80 %.
    scores = rates.summarize()
    assert scores["wer"] == pytest.approx(100.0)
    assert scores["cer"] == pytest.approx(80.0)


def test_error_rates_are_corpus_level_not_mean_of_utterances():
    rates = ErrorRates()
    rates.append(["a", "b"], [["X"], ["A", "B", "C", "D"]], [["Y"], ["A", "B", "C", "D"]],
                 [["X"], ["A"]], [["Y"], ["A"]])
    # 1 edit / (1 + 4) words = 20 %; the mean of per-utterance rates would be 50 %.
    assert rates.summarize()["wer"] == pytest.approx(20.0)


def test_error_rates_refuse_strings_and_repeated_ids():
    rates = ErrorRates()
    with pytest.raises(TypeError):
        rates.append(["a"], ["HELLO"], [["HELLO"]], [["H"]], [["H"]])
    rates.append(["a"], [["HI"]], [["HI"]], [["H"]], [["H"]])
    with pytest.raises(ValueError, match="a"):
        rates.append(["a"], [["HI"]], [["HI"]], [["H"]], [["H"]])


def test_write_ark_and_alignments(tmp_path):
    rates = ErrorRates()
    rates.append(["u2", "u1"], [["HELLO", "WORD"], []], [["HELLO", "WORLD"], ["HI"]],
                 [list("HELLO|WORD|"), []], [list("HELLO|WORLD|"), list("HI|")])
    rates.write_alignments(tmp_path / "wer_test.txt")
    text = (tmp_path / "wer_test.txt").read_text()
    assert "%WER 66.67 [ 2 / 3" in text
    assert "u2, %WER 50.00" in text and "u1, %WER 100.00" in text
    rates.write_alignments(tmp_path / "uer_test.txt", level="units")
    assert "[ 4 / 15" in (tmp_path / "uer_test.txt").read_text()

    write_ark(tmp_path / "test-noLM-hyp.ark", ["u2", "u1"], ["HELLO WORD", ""])
    assert (tmp_path / "test-noLM-hyp.ark").read_text() == "u2 HELLO WORD\nu1 \n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ SentencePiece

SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "THE DOG SAT ON THE LOG",
    "A CAT AND A DOG",
    "HELLO WORLD",
    "it's the cat's hat",
]


def test_sentencepiece_is_deterministic(tmp_path):
    first = train_sentencepiece(SENTENCES, tmp_path / "one", vocab_size=24)
    second = train_sentencepiece(SENTENCES, tmp_path / "two", vocab_size=24)
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "one.vocab").read_text() == (tmp_path / "two.vocab").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "one.model", "one.vocab", "two.model", "two.vocab"]


def test_subword_round_trip_never_emits_the_blank(tmp_path):
    tokenizer = SubwordTokenizer(train_sentencepiece(SENTENCES, tmp_path / "units", 24))
    assert (tokenizer.blank_index, tokenizer.eos_index, tokenizer.size) == (0, 1, 24)
    for sentence in SENTENCES + ["THE HAT SAT", "a dog's log"]:
        ids = tokenizer.encode(sentence, data_id="u1")
        assert ids[-1] == tokenizer.eos_index
        assert tokenizer.blank_index not in ids
        tokens, words = tokenizer.decode(ids)
        assert words == sentence.upper()
        assert len(tokens) == len(ids) - 1
        assert "".join(tokens).replace("\u2581", " ").strip() == sentence.upper()


def test_subword_unknown_character_names_the_utterance(tmp_path):
    tokenizer = SubwordTokenizer(train_sentencepiece(SENTENCES, tmp_path / "units", 24))
    with pytest.raises(DataFileError, match=r"dev-3.*'Z'"):
        tokenizer.encode("ZOO", data_id="dev-3")
