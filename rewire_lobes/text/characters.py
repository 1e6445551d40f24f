"""s3prl's ASR character vocabulary and target encoding (``superb_protocol.md`` §1, §7.1).

The vocabulary is a fairseq ``Dictionary``: the four specials ``<s>=0`` (s3prl's CTC blank),
``<pad>=1``, ``</s>=2``, ``<unk>=3``, then the 28 symbols of ``s3prl/downstream/asr/char.dict``
in that file's order (most frequent first), ``|`` being the word boundary: 32 outputs.

A transcript is upper-cased, every space becomes ``|``, a trailing ``|`` is added and ``</s>``
ends the CTC target (``dataset.py: _load_transcript`` then ``Dictionary.encode_line``).
Decoding follows ``Dictionary.string`` and ``expert.py: token_to_word``.
"""

from collections import Counter

from rewire_lobes.errors import DataFileError, OptionError

WORD_BOUNDARY = "|"

# s3prl/downstream/asr/char.dict, in its line order: the order fixes the output indices.
S3PRL_CHARACTERS = tuple("|ETAONIHSRDLUMCWFGYPBVK'XJQZ")

SPECIAL_SYMBOLS = ("<s>", "<pad>", "</s>", "<unk>")

UNKNOWN_POLICIES = ("refuse", "map")


def normalise(text):
    """s3prl's only transcript normalisation: upper-casing.

    Example
    -------
    >>> normalise("Hello world")
    'HELLO WORLD'
    """
    return text.upper()


def check_unknown_policy(unknown):
    """Raises :class:`OptionError` unless ``unknown`` is one of :data:`UNKNOWN_POLICIES`."""
    if unknown not in UNKNOWN_POLICIES:
        raise OptionError(
            f"unknown={unknown!r}: expected one of {', '.join(UNKNOWN_POLICIES)}"
        )


def refuse_unknown_characters(data_id, characters, vocabulary_name):
    """Raises :class:`DataFileError` naming the utterance and its out-of-vocabulary characters."""
    listed = " ".join(repr(character) for character in sorted(set(characters)))
    raise DataFileError(
        f"utterance {data_id}: characters {listed} are not in the {vocabulary_name} "
        "(after upper-casing); fix the transcript or build the tokenizer with unknown='map'"
    )


class CharacterTokenizer:
    """s3prl's 32-way ASR character vocabulary, CTC blank at index 0.

    Out-of-vocabulary characters (after upper-casing) are refused by default. Official
    s3prl does not map them to ``<unk>``: ``dataset.py`` calls fairseq's ``encode_line`` with
    its default ``add_if_not_exist=True``, which appends the character to the dictionary as a
    new index (32, 33, ...) past the head's 32 outputs, so the CTC loss then reads targets
    the model cannot emit. LibriSpeech never has such characters. With ``unknown="map"``
    they become ``<unk>`` (what ``add_if_not_exist=False`` would give) and are counted in
    :attr:`unknown_characters`.

    Arguments
    ---------
    unknown : str
        ``"refuse"`` (default): raise :class:`DataFileError`; ``"map"``: encode as ``<unk>``.

    Example
    -------
    >>> tokenizer = CharacterTokenizer()
    >>> tokenizer.size, tokenizer.blank_index, tokenizer.symbols[4]
    (32, 0, '|')
    >>> ids = tokenizer.encode("Hi you", data_id="utt1")
    >>> " ".join(tokenizer.symbols[i] for i in ids)
    'H I | Y O U | </s>'
    >>> tokenizer.decode(ids)
    (['H', 'I', '|', 'Y', 'O', 'U', '|'], 'HI YOU')
    """

    def __init__(self, unknown="refuse"):
        check_unknown_policy(unknown)
        self.unknown = unknown
        self.unknown_characters = Counter()
        self.symbols = list(SPECIAL_SYMBOLS) + list(S3PRL_CHARACTERS)
        self.blank_index, self.pad_index, self.eos_index, self.unk_index = range(4)
        self.size = len(self.symbols)
        self._index_of = {symbol: index for index, symbol in enumerate(self.symbols)}
        # Dictionary.string skips <s> and </s>; <pad> and <unk> print as their names.
        self._skipped_when_decoding = {self.blank_index, self.eos_index}

    def normalise(self, text):
        """Upper-cases ``text`` (s3prl does nothing else)."""
        return normalise(text)

    def units(self, text):
        """The unit symbols of ``text``: its upper-cased characters, ``|`` for each space and
        a trailing ``|`` (s3prl's ``H E L L O | W O R L D |``), without ``</s>``."""
        return [
            WORD_BOUNDARY if character == " " else character
            for character in self.normalise(text)
        ] + [WORD_BOUNDARY]

    def encode(self, text, data_id=None):
        """Target ids of ``text`` for CTC: :meth:`units` then ``</s>``.

        Arguments
        ---------
        text : str
            A transcript, words separated by single spaces (LibriSpeech's ``trans.txt``).
        data_id : str
            Named in the error for an out-of-vocabulary character.

        Returns
        -------
        list of int
        """
        units = self.units(text)
        unknown = [unit for unit in units if unit not in self._index_of]
        if unknown:
            if self.unknown == "refuse":
                refuse_unknown_characters(data_id, unknown, "ASR character vocabulary")
            self.unknown_characters.update(unknown)
        return [self._index_of.get(unit, self.unk_index) for unit in units] + [self.eos_index]

    def decode(self, ids):
        """Unit symbols and words of a label or greedy CTC id sequence.

        ``<s>`` (the blank) and ``</s>`` are skipped, as fairseq's ``Dictionary.string``
        does; ``<pad>`` and ``<unk>`` stay as the units ``<pad>`` and ``<unk>``, which s3prl
        also counts in the unit error rate and glues into the words. Pass hypothesis ids
        already collapsed (``greedy_ctc``) and reference ids unpadded.

        Arguments
        ---------
        ids : list of int

        Returns
        -------
        tokens : list of str
            The units scored by s3prl's UER, ``|`` included.
        words : str
            The words, single-space separated (``token_to_word``: the units joined,
            ``|`` read as a space), as s3prl writes them to its ``.ark`` files.
        """
        tokens = []
        for index in ids:
            index = int(index)
            if not 0 <= index < self.size:
                raise ValueError(f"id {index} is outside the {self.size}-symbol vocabulary")
            if index not in self._skipped_when_decoding:
                tokens.append(self.symbols[index])
        words = "".join(tokens).replace(WORD_BOUNDARY, " ").split()
        return tokens, " ".join(words)
