"""Scorers of decoded CTC id sequences: ASR transcripts and SF tagged strings.

A scorer is made per evaluation with the task's tokenizer, receives each batch's
hypothesis ids (greedy CTC) and reference ids (the unpadded targets), and at the end gives
the scores (``summarize``) and writes s3prl's ``<split>-hyp.ark`` / ``<split>-ref.ark``
(``<uttid> <decoded string>`` per line) into the run folder (``write``).
"""

from pathlib import Path

from rewire_lobes.metrics.error_rates import ErrorRates, write_ark
from rewire_lobes.metrics.slots import sf_scores
from rewire_lobes.text.characters import CharacterTokenizer


class DecodedStrings:
    """The ids, hypothesis strings and reference strings of one evaluation."""

    def __init__(self):
        self.ids, self.hypotheses, self.references = [], [], []

    def add(self, data_id, hypothesis, reference):
        self.ids.append(data_id)
        self.hypotheses.append(hypothesis)
        self.references.append(reference)

    def write(self, folder, split):
        folder = Path(folder)
        write_ark(folder / f"{split}-hyp.ark", self.ids, self.hypotheses)
        write_ark(folder / f"{split}-ref.ark", self.ids, self.references)


class TranscriptScorer:
    """ASR: WER and CER at corpus level, in %.

    CER is s3prl's unit error rate over characters (``|`` for each word boundary): the
    decoded units of a character tokenizer, or the characters of the decoded words of a
    sub-word one (whose pieces are not characters). ``write`` adds SpeechBrain's
    per-utterance alignment file ``<split>-wer.txt``.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.rates = ErrorRates()
        self.strings = DecodedStrings()
        self.characters = None if isinstance(tokenizer, CharacterTokenizer) else CharacterTokenizer()

    def decode(self, ids):
        """``(character units, words)`` of an id sequence."""
        units, words = self.tokenizer.decode(ids)
        if self.characters is not None:
            units = self.characters.units(words)
        return units, words

    def append(self, ids, hypotheses, references):
        decoded = [(self.decode(h), self.decode(r)) for h, r in zip(hypotheses, references)]
        self.rates.append(
            list(ids),
            [hyp_words.split() for (_, hyp_words), _ in decoded],
            [ref_words.split() for _, (_, ref_words) in decoded],
            [hyp_units for (hyp_units, _), _ in decoded],
            [ref_units for _, (ref_units, _) in decoded],
        )
        for data_id, ((_, hyp_words), (_, ref_words)) in zip(ids, decoded):
            self.strings.add(data_id, hyp_words, ref_words)

    def summarize(self):
        return self.rates.summarize()

    def write(self, folder, split):
        self.strings.write(folder, split)
        self.rates.write_alignments(Path(folder) / f"{split}-wer.txt")


class SlotScorer:
    """SF: s3prl's ``ctc/metric.py`` scores on the tagged strings, in %."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.strings = DecodedStrings()

    def append(self, ids, hypotheses, references):
        eos = self.tokenizer.eos_index
        for data_id, hypothesis, reference in zip(ids, hypotheses, references):
            # Official s3prl drops <eos> from a hypothesis wherever it is; decode would
            # stop at the first one (right for a reference, which ends with it).
            hypothesis = [index for index in hypothesis if index != eos]
            self.strings.add(data_id, self.tokenizer.decode(hypothesis),
                             self.tokenizer.decode(reference))

    def summarize(self):
        if not self.strings.ids:
            return {"slot_type_f1": float("nan"), "slot_value_cer": float("nan")}
        return sf_scores(self.strings.hypotheses, self.strings.references)

    def write(self, folder, split):
        self.strings.write(folder, split)
