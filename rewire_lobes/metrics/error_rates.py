"""ASR word and unit error rates as official s3prl computes them (``superb_protocol.md`` §7.1).

``expert.py: _compute_metrics`` sums the Levenshtein distances of all utterances and divides
by the total REFERENCE length: ``WER = 100 * Σ edits(hyp_words, ref_words) / Σ |ref_words|``,
and the unit error rate the same way over the unit lists (characters with ``|`` for the
character vocabulary, pieces for SentencePiece); 100 when the references hold no token.
Both also come with SpeechBrain's per-utterance alignments (``ErrorRateStats``).
"""

from speechbrain.utils.metric_stats import ErrorRateStats

from rewire_lobes.io_utils import atomic_path

LEVELS = ("words", "units")


class ErrorRates:
    """Accumulates per-utterance hypotheses and references; corpus-level WER and CER.

    "cer" is s3prl's unit error rate (UER): on the character vocabulary it is the
    character error rate, the word boundary ``|`` counted as a unit. This follows s3prl
    after its 2022 fix (commit ``b619de2b``); the paper's fork passed the targets in the
    prediction slots, so it divided by the number of HYPOTHESIS words (and scored units on
    raw strings, spaces included): its numbers are not comparable.

    Example
    -------
    >>> rates = ErrorRates()
    >>> rates.append(["u1"], [["A", "CAT"]], [["THE", "CAT"]], [["A", "|"]], [["T", "|"]])
    >>> rates.summarize()
    {'wer': 50.0, 'cer': 50.0}
    """

    def __init__(self):
        self.stats = {level: ErrorRateStats() for level in LEVELS}
        self.ids = []
        self._seen = set()

    def append(self, ids, hypotheses_words, references_words, hypotheses_units, references_units):
        """Adds a batch of utterances.

        Arguments
        ---------
        ids : list of str
            Utterance ids, unique over everything appended.
        hypotheses_words, references_words : list of list of str
            Each utterance's words (``decode(...)[1].split()``).
        hypotheses_units, references_units : list of list of str
            Each utterance's units (``decode(...)[0]``).
        """
        columns = (hypotheses_words, references_words, hypotheses_units, references_units)
        if any(len(column) != len(ids) for column in columns):
            raise ValueError(
                f"{len(ids)} ids but {[len(column) for column in columns]} "
                "hypotheses/references (words, then units)"
            )
        for column in columns:
            for tokens in column:
                if isinstance(tokens, str):
                    # Levenshtein over a string would count characters, the fork's mistake.
                    raise TypeError(f"expected a list of tokens, got the string {tokens!r}")
        for utterance_id in ids:
            if utterance_id in self._seen:
                raise ValueError(f"utterance {utterance_id} was already scored")
            self._seen.add(utterance_id)
        self.ids.extend(ids)
        self.stats["words"].append(ids, hypotheses_words, references_words)
        self.stats["units"].append(ids, hypotheses_units, references_units)

    def summarize(self):
        """``{"wer": %, "cer": %}``: total edits over total reference tokens, times 100."""
        return {
            "wer": self._error_rate("words"),
            "cer": self._error_rate("units"),
        }

    def _error_rate(self, level):
        if not self.ids:
            return 100.0
        summary = self.stats[level].summarize()
        if summary["num_scored_tokens"] == 0:
            return 100.0  # s3prl's value when the references are all empty
        return 100.0 * summary["num_edits"] / summary["num_scored_tokens"]

    def write_alignments(self, path, level="words"):
        """Writes SpeechBrain's summary and per-utterance alignment file (``write_stats``).

        Arguments
        ---------
        path : str or Path
        level : str
            ``"words"`` or ``"units"``.
        """
        if level not in LEVELS:
            raise ValueError(f"level={level!r}: expected one of {LEVELS}")
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as stream:
            self.stats[level].write_stats(stream)


def write_ark(path, ids, strings):
    """Writes s3prl's ``<uttid> <decoded string>`` lines, in the given order.

    An empty string still gets its line, ``"<uttid> "`` as s3prl writes it.

    Example
    -------
    >>> import tempfile, pathlib
    >>> ark = pathlib.Path(tempfile.mkdtemp()) / "dev-clean-noLM-hyp.ark"
    >>> write_ark(ark, ["u2", "u1"], ["HELLO WORLD", ""])
    >>> ark.read_text()
    'u2 HELLO WORLD\\nu1 \\n'
    """
    if len(ids) != len(strings):
        raise ValueError(f"{len(ids)} ids but {len(strings)} strings")
    lines = []
    for utterance_id, text in zip(ids, strings):
        if "\n" in text or "\n" in utterance_id or " " in utterance_id:
            raise ValueError(f"utterance {utterance_id!r}: ids and strings must fit one line")
        lines.append(f"{utterance_id} {text}\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
