"""SentencePiece sub-word units for the CTC head, an option beside s3prl's characters.

s3prl's SUPERB ASR recipe (``downstream/asr``) has characters only; its newer
``s3prl.dataio`` code trains SentencePiece with ``--pad_id=0 --eos_id=1 --unk_id=2
--bos_id=-1 --eos_piece=<eos>`` and uses the pad id as the CTC blank. This module keeps that
layout: id 0 (``<pad>``) is the blank, a control symbol SentencePiece never emits, id 1
(``<eos>``) ends every target as ``</s>`` does for characters, id 2 is ``<unk>``.

The model must be trained on the training transcripts only. Transcripts are upper-cased
(:func:`rewire_lobes.text.characters.normalise`) before training and encoding, and
SentencePiece's own normalisation is off (``identity``), so the pieces spell the
transcripts exactly. The unit error rate is computed on the pieces.
"""

import io
from collections import Counter
from pathlib import Path

from rewire_lobes.errors import OptionError
from rewire_lobes.io_utils import atomic_path
from rewire_lobes.text.characters import (
    check_unknown_policy,
    normalise,
    refuse_unknown_characters,
)

BLANK_ID, EOS_ID, UNK_ID = 0, 1, 2

WORD_START = "\u2581"  # SentencePiece's "▁", which opens every word

# SentencePiece's default limit; longer sentences would be dropped silently.
DEFAULT_MAX_SENTENCE_BYTES = 4192


def _sentencepiece():
    import sentencepiece

    return sentencepiece


def train_sentencepiece(texts, model_prefix, vocab_size, model_type="unigram"):
    """Trains a SentencePiece model on ``texts`` and writes ``<prefix>.model`` and ``.vocab``.

    The texts are upper-cased and used in the given order, none dropped or deduplicated.
    Training is deterministic: one thread, every sentence read (no sampling, no shuffling)
    and a fixed random seed, so the same texts give a byte-identical model. Both files are
    written under temporary names and renamed into place.

    Arguments
    ---------
    texts : iterable of str
        The training transcripts (never dev or test).
    model_prefix : str or Path
        Output path without extension.
    vocab_size : int
        Pieces in the model, the three specials included (the CTC head's output count).
    model_type : str
        ``"unigram"`` (s3prl's choice) or ``"bpe"``.

    Returns
    -------
    Path
        The ``.model`` file.

    Example
    -------
    >>> import tempfile, pathlib
    >>> prefix = pathlib.Path(tempfile.mkdtemp()) / "units"
    >>> model = train_sentencepiece(["A CAT", "A DOG", "THE CAT"], prefix, vocab_size=13)
    >>> SubwordTokenizer(model).size
    13
    """
    if model_type not in ("unigram", "bpe"):
        raise OptionError(f"model_type={model_type!r}: expected 'unigram' or 'bpe'")
    texts = [normalise(text) for text in texts]
    if not texts:
        raise OptionError("train_sentencepiece needs at least one training transcript")
    longest = max(len(text.encode("utf-8")) for text in texts)
    spm = _sentencepiece()
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=BLANK_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            bos_id=-1,
            eos_piece="<eos>",
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=True,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=max(DEFAULT_MAX_SENTENCE_BYTES, longest + 1),
            num_threads=1,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise OptionError(
            f"vocab_size={vocab_size}: SentencePiece could not train {model_type} units on "
            f"{len(texts)} training transcripts: {error}"
        ) from error
    model_path = Path(f"{model_prefix}.model")
    with atomic_path(model_path) as tmp:
        tmp.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())
    )
    with atomic_path(f"{model_prefix}.vocab") as tmp:
        tmp.write_text(vocab, encoding="utf-8")
    return model_path


class SubwordTokenizer:
    """CTC targets and decoding with a model from :func:`train_sentencepiece`.

    Same interface as :class:`rewire_lobes.text.characters.CharacterTokenizer`: characters
    the model never saw are refused (``DataFileError``) unless ``unknown="map"``, which
    encodes them as ``<unk>`` and counts them in :attr:`unknown_characters`.

    Arguments
    ---------
    model_file : str or Path
        A ``.model`` file written by :func:`train_sentencepiece`.
    unknown : str
        ``"refuse"`` (default) or ``"map"``.
    """

    def __init__(self, model_file, unknown="refuse"):
        check_unknown_policy(unknown)
        self.unknown = unknown
        self.unknown_characters = Counter()
        self.model_file = Path(model_file)
        self.processor = _sentencepiece().SentencePieceProcessor(model_file=str(model_file))
        layout = (self.processor.pad_id(), self.processor.eos_id(), self.processor.unk_id())
        if layout != (BLANK_ID, EOS_ID, UNK_ID):
            raise OptionError(
                f"{model_file}: pad/eos/unk ids are {layout}, expected "
                f"{(BLANK_ID, EOS_ID, UNK_ID)}; train it with train_sentencepiece"
            )
        self.blank_index = self.pad_index = BLANK_ID
        self.eos_index, self.unk_index = EOS_ID, UNK_ID
        self.size = self.processor.get_piece_size()
        self.symbols = [self.processor.id_to_piece(i) for i in range(self.size)]

    def normalise(self, text):
        """Upper-cases ``text``, as the training transcripts were."""
        return normalise(text)

    def encode(self, text, data_id=None):
        """Piece ids of ``text`` then ``<eos>``; never the blank."""
        text = self.normalise(text)
        ids = self.processor.encode(text)
        if self.unk_index in ids:
            unknown = [
                character
                for character in text
                if not character.isspace() and self.unk_index in self.processor.encode(character)
            ]
            if self.unknown == "refuse":
                vocabulary_name = f"SentencePiece model {self.model_file}"
                refuse_unknown_characters(data_id, unknown, vocabulary_name)
            self.unknown_characters.update(unknown)
        return ids + [self.eos_index]

    def decode(self, ids):
        """Pieces (the error-rate units) and words of an id sequence.

        The blank and ``<eos>`` are skipped, ``<unk>`` stays as a piece.

        Returns
        -------
        tokens : list of str
        words : str
            The pieces joined, each ``▁`` read as a space, single-space separated.
        """
        tokens = []
        for index in ids:
            index = int(index)
            if not 0 <= index < self.size:
                raise ValueError(f"id {index} is outside the {self.size}-piece vocabulary")
            if index not in (self.blank_index, self.eos_index):
                tokens.append(self.symbols[index])
        words = "".join(tokens).replace(WORD_START, " ").split()
        return tokens, " ".join(words)
