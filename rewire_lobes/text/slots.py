"""s3prl's SF targets: characters with ``B-``/``E-`` slot tags (``superb_protocol.md`` §4).

Official s3prl's ``downstream/ctc/text.py: CharacterTextSlotEncoder`` with the SNIPS
configuration (``downstream/ctc/snips.yaml``: ``vocab/character.txt`` and ``slots.txt``).
The vocabulary is ``<pad>=0`` (the CTC blank), ``<eos>=1``, ``<unk>=2``, the 28 characters
of ``character.txt`` (space, ``A``-``Z``, apostrophe, in that file's order), then
``B-<slot>`` and ``E-<slot>`` for each slot type in ``slots.txt`` order: 109 outputs for
SNIPS's 39 slot types.

A word tagged with a slot opens the span (``B-x``) when its left neighbour has another
label and closes it (``E-x``) when its right neighbour has another label; a space token
follows every word but the last, which is followed by ``<eos>``. Decoded, a span reads
``B-x THE BEATLES E-x``: the form :mod:`rewire_lobes.metrics.slots` parses.
"""

from collections import Counter

from rewire_lobes.errors import DataFileError
from rewire_lobes.text.characters import check_unknown_policy

# s3prl/downstream/ctc/vocab/character.txt, in its line order: the order fixes the output indices.
S3PRL_SLOT_CHARACTERS = (" ",) + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + ("'",)

SPECIAL_SYMBOLS = ("<pad>", "<eos>", "<unk>")

OUTSIDE = "O"  # the label of a word in no slot

# s3prl skips a word when it is a substring of this string (``wrd in "?!.,;-"``): the six
# marks, but also the empty word and runs such as "?!".
SKIPPED_WORDS = "?!.,;-"


def spoken_words(words):
    """The words s3prl spells, with their positions: marks skipped, ``&`` read ``AND``.

    Arguments
    ---------
    words : list of str

    Returns
    -------
    list of (int, str)
        ``(position in words, spelling)``; the position indexes the slot labels.

    Example
    -------
    >>> spoken_words(["ROCK", "&", "ROLL", "?"])
    [(0, 'ROCK'), (1, 'AND'), (2, 'ROLL')]
    """
    return [
        (position, "AND" if word == "&" else word)
        for position, word in enumerate(words)
        if word not in SKIPPED_WORDS
    ]


def unspellable_characters(words):
    """The characters of the spoken ``words`` outside s3prl's SF vocabulary, in order.

    Only :func:`spoken_words` count: the marks s3prl skips are not spelled and ``&`` is
    spelled ``AND``. A character is listed each time it occurs, so a caller can count it.

    Arguments
    ---------
    words : list of str

    Returns
    -------
    list of str
        Those s3prl would encode as ``<unk>``.

    Example
    -------
    >>> unspellable_characters(["ROCK", "&", "ROLL", "?", "CAFÉ", "No", "É"])
    ['É', 'o', 'É']
    """
    return [
        character
        for _, word in spoken_words(words)
        for character in word
        if character not in S3PRL_SLOT_CHARACTERS
    ]


def _utterance(data_id):
    return f"utterance {data_id}" if data_id is not None else "an utterance"


class SlotCharacterTokenizer:
    """s3prl's character-and-slot vocabulary for SF, CTC blank (``<pad>``) at index 0.

    Out-of-vocabulary characters are refused by default. Official s3prl maps them to
    ``<unk>``; ``unknown="map"`` does the same and counts each one in
    :attr:`unknown_characters` (a ``Counter`` of characters) so the caller can report them.
    :meth:`check_text` refuses whatever the policy.

    Arguments
    ---------
    slot_types : list of str
        The slot types in ``slots.txt`` order, without its first line ``O``.
    unknown : str
        ``"refuse"`` (default): raise :class:`DataFileError`; ``"map"``: encode as ``<unk>``.

    Example
    -------
    >>> tokenizer = SlotCharacterTokenizer(["artist", "album"])
    >>> tokenizer.size, tokenizer.blank_index, tokenizer.symbols[31:33]
    (35, 0, ['B-artist', 'E-artist'])
    >>> ids = tokenizer.encode(["PLAY", "THE", "BEATLES"], ["O", "artist", "artist"])
    >>> tokenizer.decode(ids)
    'PLAY B-artist THE BEATLES E-artist'
    """

    def __init__(self, slot_types, unknown="refuse"):
        check_unknown_policy(unknown)
        slot_types = list(slot_types)
        self._check_slot_types(slot_types)
        self.unknown = unknown
        self.unknown_characters = Counter()
        self.slot_types = slot_types
        tags = [f"{edge}-{slot}" for slot in slot_types for edge in ("B", "E")]
        untagged = list(SPECIAL_SYMBOLS) + list(S3PRL_SLOT_CHARACTERS)
        self.symbols = untagged + tags
        self.blank_index, self.eos_index, self.unk_index = range(3)
        self.size = len(self.symbols)
        self._index_of = {symbol: index for index, symbol in enumerate(self.symbols)}
        # s3prl prints an opening tag before a space and a closing tag after one, so the
        # tags stand apart from the words they wrap.
        self._renderings = untagged + [
            f"{tag} " if tag.startswith("B-") else f" {tag}" for tag in tags
        ]

    def __len__(self):
        return self.size

    @staticmethod
    def _check_slot_types(slot_types):
        if len(set(slot_types)) != len(slot_types):
            raise ValueError(f"slot types repeat: {slot_types}")
        for slot in slot_types:
            if not slot or slot == OUTSIDE or any(character.isspace() for character in slot):
                raise ValueError(
                    f"slot type {slot!r}: expected a non-empty name without spaces, other "
                    "than 'O' (the first line of slots.txt is not a slot type)"
                )

    def _check_labels(self, words, slots, data_id):
        if len(words) != len(slots):
            raise DataFileError(
                f"{_utterance(data_id)}: {len(words)} words but {len(slots)} slot labels"
            )
        unknown = sorted({slot for slot in slots if slot != OUTSIDE} - set(self.slot_types))
        if unknown:
            raise DataFileError(
                f"{_utterance(data_id)}: slot labels {unknown} are not in slots.txt"
            )

    def check_text(self, words, data_id):
        """Raises :class:`DataFileError` listing the characters of ``words`` outside the
        vocabulary (those s3prl would encode as ``<unk>``), naming ``data_id``.

        Skipped marks are not spelled and so not checked; ``&`` is spelled ``AND``.

        Example
        -------
        >>> tokenizer = SlotCharacterTokenizer(["artist"])
        >>> tokenizer.check_text(["ROCK", "&", "ROLL", "?"], "utt1")
        >>> tokenizer.check_text(["CAFÉ", "NOIR"], "utt2")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rewire_lobes.errors.DataFileError: utterance utt2: characters 'É' are not in ...
        """
        unknown = unspellable_characters(words)
        if unknown:
            listed = " ".join(repr(character) for character in sorted(set(unknown)))
            raise DataFileError(
                f"{_utterance(data_id)}: characters {listed} are not in the SF character "
                "vocabulary (space, A-Z, apostrophe) and s3prl would train on <unk> for them; "
                "normalise the text as s3prl/preprocess/snips_text_norm.py does"
            )

    def encode(self, words, slots, data_id=None):
        """CTC target ids of one utterance, as s3prl's ``CharacterTextSlotEncoder.encode``.

        For each word not skipped (:func:`spoken_words`): ``B-x`` if its slot ``x`` is not
        ``O`` and it is the first word or its left neighbour's label differs; its characters;
        ``E-x`` if it is the last word or its right neighbour's label differs; then ``<eos>``
        after the last word, a space after any other. Neighbours are the words of the list,
        skipped ones included, as in s3prl: a skipped last word leaves the target ending with
        a space and no ``<eos>``, and words that are all skipped give ``[]``.

        Arguments
        ---------
        words : list of str
            The upper-case words, without SNIPS's ``BOS``/``EOS``.
        slots : list of str
            One label per word: a slot type or ``O`` (without the leading ``O`` and the intent).
        data_id : str
            Named in the errors.

        Returns
        -------
        list of int

        Raises
        ------
        DataFileError
            When the word and label counts differ, a label is not a slot type, or (policy
            ``"refuse"``) a character is outside the vocabulary.
        """
        self._check_labels(words, slots, data_id)
        if self.unknown == "refuse":
            self.check_text(words, data_id)
        else:
            self.unknown_characters.update(unspellable_characters(words))
        last = len(words) - 1
        ids = []
        for position, word in spoken_words(words):
            slot = slots[position]
            in_slot = slot != OUTSIDE
            if in_slot and (position == 0 or slots[position - 1] != slot):
                ids.append(self._index_of[f"B-{slot}"])
            ids.extend(self._index_of.get(character, self.unk_index) for character in word)
            if in_slot and (position == last or slots[position + 1] != slot):
                ids.append(self._index_of[f"E-{slot}"])
            ids.append(self.eos_index if position == last else self._index_of[" "])
        return ids

    def decode(self, ids):
        """The string s3prl writes for an id sequence (``CharacterTextSlotEncoder.decode``).

        ``<pad>`` is skipped and the first ``<eos>`` ends the string, so a padded target
        decodes as it is; ``B-x`` reads ``"B-x "``, ``E-x`` reads ``" E-x"``, ``<unk>`` reads
        ``"<unk>"`` and characters read as themselves. Hypothesis ids come already
        collapsed by greedy CTC (repeats merged, then blank and ``<eos>`` removed). s3prl
        decodes references the same way, so there is no separate target decoder.

        Arguments
        ---------
        ids : iterable of int

        Returns
        -------
        str

        Example
        -------
        >>> tokenizer = SlotCharacterTokenizer(["artist"])
        >>> tokenizer.decode([31, 4, 5, 32, 1, 0, 0])
        'B-artist AB E-artist'
        """
        pieces = []
        for index in ids:
            index = int(index)
            if not 0 <= index < self.size:
                raise ValueError(f"id {index} is outside the {self.size}-symbol vocabulary")
            if index == self.eos_index:
                break
            if index != self.blank_index:
                pieces.append(self._renderings[index])
        return "".join(pieces)
