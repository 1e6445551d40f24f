"""SUPERB's slot-filling scores, as official s3prl's ``downstream/ctc/metric.py`` computes them.

Every function takes the decoded hypothesis and reference strings of a corpus
(:meth:`rewire_lobes.text.slots.SlotCharacterTokenizer.decode`), still carrying their
``B-x ... E-x`` tags (``superb_protocol.md`` §7.2):

* :func:`slot_type_f1`: per utterance, F1 between the *sets* of slot types; mean over
  utterances. A fraction; SUPERB's headline SF metric with :func:`slot_value_cer`.
* :func:`slot_value_cer` / :func:`slot_value_wer`: each reference slot value is paired with
  the closest hypothesis value of its type (``""`` if none); one pooled error rate over all
  pairs. Fractions. Hypothesis slots of types absent from the reference cost nothing.
* :func:`slot_edit_f1`: exact-match F1 over slot values, already in percent (s3prl's scale).
* :func:`wer` / :func:`cer`: corpus error rates of the tagged strings themselves. Fractions.
* :func:`sf_scores`: all of them, in percent.

Edit distances are SpeechBrain's (``speechbrain.utils.edit_distance``): plain Levenshtein with
unit costs, the distance ``editdistance.eval`` gives s3prl. Where s3prl would divide by zero
(nothing to score) or silently truncate unequal lists (``zip``), these raise ``ValueError``.

Example
-------
>>> hypotheses = ["PLAY B-artist ABBA E-artist"]
>>> references = ["PLAY B-artist ABBAS E-artist"]
>>> slot_type_f1(hypotheses, references), slot_value_cer(hypotheses, references)
(1.0, 0.2)
"""

import re
from collections import Counter

from speechbrain.utils.edit_distance import accumulatable_wer_stats

_SPACE_RUN = re.compile(r" +")
# A span is an opening tag, a non-greedy value and a closing tag of the same type.
_SLOT_SPAN = re.compile(r"B-(\S+) (.+?) E-\1")
# s3prl's ``clean``: an opening tag with the space after it, a closing tag with the space
# before it. Removed in that order; a tag without its space stays.
_OPENING_TAG = re.compile(r"B-\S+ ")
_CLOSING_TAG = re.compile(r" E-\S+")

# s3prl looks for the closest hypothesis value starting from an error rate of 100, so a
# candidate whose rate is 100 or more is never chosen: the reference value then pairs with "".
_CLOSEST_VALUE_START_RATE = 100


def strip_slot_tags(text):
    """``text`` without its tags (s3prl's ``clean``): ``B-x `` then `` E-x`` removed.

    Example
    -------
    >>> strip_slot_tags("B-artist THE BEATLES E-artist B-album")
    'THE BEATLES B-album'
    """
    return _CLOSING_TAG.sub("", _OPENING_TAG.sub("", text))


def parse_slots(text, strip_nested_tags=False):
    """The slot values of one decoded string, grouped by type, as s3prl's ``parse`` reads them.

    Runs of spaces are collapsed first; each ``B-x <value> E-x`` span (the nearest closing
    tag of the same type) gives ``x -> value``. An opening tag without its closing tag gives
    nothing.

    Arguments
    ---------
    text : str
        A decoded hypothesis or reference.
    strip_nested_tags : bool
        Remove stray tags inside each value (:func:`strip_slot_tags`), as s3prl does on the
        hypothesis side only.

    Returns
    -------
    dict
        ``slot type -> list of values``, types and values in the order they occur.

    Example
    -------
    >>> parse_slots("B-city NEW  YORK E-city IN B-city PARIS E-city B-state TEXAS")
    {'city': ['NEW YORK', 'PARIS']}
    """
    slots = {}
    for slot_type, value in _SLOT_SPAN.findall(_SPACE_RUN.sub(" ", text)):
        if strip_nested_tags:
            value = strip_slot_tags(value)
        # s3prl serialises the pairs as "value:type" joined by ";" and splits them again:
        # grouping the pairs directly is the same only when neither character occurs.
        if ":" in value or ";" in value or ":" in slot_type or ";" in slot_type:
            raise ValueError(
                f"slot {slot_type!r} = {value!r} holds ':' or ';', which s3prl cannot parse"
            )
        slots.setdefault(slot_type, []).append(value)
    return slots


def _utterance_pairs(hypotheses, references):
    """``[(hypothesis, reference)]``, refusing an empty corpus or unequal lengths."""
    hypotheses, references = list(hypotheses), list(references)
    if not references:
        raise ValueError("no references to score")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses for {len(references)} references"
        )
    return list(zip(hypotheses, references))


def _parsed_slots(hypotheses, references):
    """``[(hypothesis slots, reference slots)]`` per utterance (:func:`parse_slots`)."""
    return [
        (parse_slots(hypothesis, strip_nested_tags=True), parse_slots(reference))
        for hypothesis, reference in _utterance_pairs(hypotheses, references)
    ]


def _characters(text):
    return text


def _words(text):
    # split(" "), not split(): s3prl counts "" as one word, so an empty hypothesis value
    # is one token and an empty reference string one reference word.
    return text.split(" ")


def _pooled_error_rate(hypothesis_tokens, reference_tokens, what):
    """Σ edit distance / Σ reference length over aligned token sequences."""
    stats = accumulatable_wer_stats(reference_tokens, hypothesis_tokens, Counter())
    if stats["num_ref_tokens"] == 0:
        raise ValueError(f"no reference {what} to score: the error rate is undefined")
    errors = stats["insertions"] + stats["deletions"] + stats["substitutions"]
    return errors / stats["num_ref_tokens"]


def cer(hypotheses, references):
    """Corpus character error rate of the strings as given (tags and spaces are characters).

    Returns
    -------
    float
        A fraction: total edit distance over total reference length.

    Example
    -------
    >>> cer(["AB", ""], ["ABC", "D"])
    0.5
    """
    pairs = _utterance_pairs(hypotheses, references)
    return _pooled_error_rate(
        [_characters(h) for h, _ in pairs], [_characters(r) for _, r in pairs], "characters"
    )


def wer(hypotheses, references):
    """Corpus word error rate of the strings as given, words split on single spaces
    (tags are words; an empty string is one empty word).

    Returns
    -------
    float
        A fraction.

    Example
    -------
    >>> wer(["PLAY B-artist ABBA E-artist"], ["PLAY B-artist ABBA E-artist NOW"])
    0.2
    """
    pairs = _utterance_pairs(hypotheses, references)
    return _pooled_error_rate(
        [_words(h) for h, _ in pairs], [_words(r) for _, r in pairs], "words"
    )


def _type_f1(hypothesis_types, reference_types):
    if not hypothesis_types and not reference_types:
        return 1.0
    if not hypothesis_types or not reference_types:
        return 0.0
    shared = len(hypothesis_types & reference_types)
    precision = shared / len(hypothesis_types)
    recall = shared / len(reference_types)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def slot_type_f1(hypotheses, references):
    """Mean over utterances of the F1 between hypothesis and reference slot-type sets.

    Values and repetitions are ignored; an utterance with no slot on either side scores 1,
    one with slots on one side only scores 0.

    Returns
    -------
    float
        A fraction in [0, 1].

    Example
    -------
    >>> slot_type_f1(["B-city PARIS E-city B-state OHIO E-state", ""], ["B-city ROME E-city", ""])
    0.8333333333333333
    """
    scores = [
        _type_f1(set(hypothesis_slots), set(reference_slots))
        for hypothesis_slots, reference_slots in _parsed_slots(hypotheses, references)
    ]
    return sum(scores) / len(scores)


def _closest_value(candidates, reference_value, tokens):
    """The first candidate with the lowest error rate against ``reference_value``."""
    closest, lowest_rate = "", _CLOSEST_VALUE_START_RATE
    for candidate in candidates:
        rate = _pooled_error_rate(
            [tokens(candidate)], [tokens(reference_value)], "slot value"
        )
        if rate < lowest_rate:
            closest, lowest_rate = candidate, rate
    return closest


def _slot_value_error_rate(hypotheses, references, tokens, what):
    hypothesis_values, reference_values = [], []
    for hypothesis_slots, reference_slots in _parsed_slots(hypotheses, references):
        for slot_type, values in reference_slots.items():
            candidates = hypothesis_slots.get(slot_type, [])
            for reference_value in values:
                closest = _closest_value(candidates, reference_value, tokens)
                hypothesis_values.append(tokens(closest))
                reference_values.append(tokens(reference_value))
    return _pooled_error_rate(hypothesis_values, reference_values, what)


def slot_value_cer(hypotheses, references):
    """Pooled character error rate of the reference slot values.

    Each reference value is paired with the hypothesis value of its type that has the
    lowest CER against it (the first of equals; ``""`` when the hypothesis has no value of
    that type). Hypothesis types absent from the reference are not scored.

    Returns
    -------
    float
        A fraction: Σ edit distance / Σ reference value length, spaces counted.

    Raises
    ------
    ValueError
        When the references hold no slot at all (s3prl divides by zero).

    Example
    -------
    >>> slot_value_cer(["B-city PARIS E-city B-city ROMA E-city"], ["B-city ROME E-city"])
    0.25
    """
    return _slot_value_error_rate(hypotheses, references, _characters, "slot value characters")


def slot_value_wer(hypotheses, references):
    """:func:`slot_value_cer` on words (values split on single spaces).

    Returns
    -------
    float
        A fraction.

    Example
    -------
    >>> slot_value_wer(["B-city NEW YORK E-city"], ["B-city NEW YORK CITY E-city"])
    0.3333333333333333
    """
    return _slot_value_error_rate(hypotheses, references, _words, "slot value words")


def slot_edit_f1(hypotheses, references, loop_over_all_slot):
    """Exact-match F1 over slot values, pooled over the corpus, in percent.

    Per reference value: a true positive when some hypothesis value of its type equals it,
    otherwise a false negative *and* a false positive. With ``loop_over_all_slot`` (s3prl's
    ``slot_edit_f1_full``) each hypothesis value of a type absent from the reference is a
    false positive too; without (``slot_edit_f1_part``) those are ignored.

    Returns
    -------
    float
        ``100 * 2TP / (2TP + FP + FN)``, in [0, 100] (s3prl's own scale).

    Raises
    ------
    ValueError
        When nothing is counted (no reference slot, nor hypothesis slot for ``full``).

    Example
    -------
    >>> hypotheses, references = ["B-city ROME E-city B-state OHIO E-state"], ["B-city ROME E-city"]
    >>> slot_edit_f1(hypotheses, references, True), slot_edit_f1(hypotheses, references, False)
    (66.66666666666667, 100.0)
    """
    true_positives = false_negatives = false_positives = 0
    for hypothesis_slots, reference_slots in _parsed_slots(hypotheses, references):
        for slot_type, values in reference_slots.items():
            candidates = hypothesis_slots.get(slot_type, [])
            for reference_value in values:
                if reference_value in candidates:
                    true_positives += 1
                else:
                    false_negatives += 1
                    # s3prl counts the miss as a false positive only when the type was
                    # predicted at all.
                    false_positives += bool(candidates)
        if loop_over_all_slot:
            false_positives += sum(
                len(values)
                for slot_type, values in hypothesis_slots.items()
                if slot_type not in reference_slots
            )
    counted = 2 * true_positives + false_positives + false_negatives
    if counted == 0:
        raise ValueError("no slot in the references or hypotheses: slot edit F1 is undefined")
    return 100.0 * 2 * true_positives / counted


def sf_scores(hypotheses, references):
    """Every score s3prl logs for SF, in percent.

    ``slot_type_f1``, ``slot_value_cer``, ``slot_value_wer``, ``wer`` and ``cer`` are s3prl's
    fractions times 100; ``slot_edit_f1_full`` and ``slot_edit_f1_part`` are s3prl's
    values unchanged (already percent).

    Arguments
    ---------
    hypotheses : list of str
        Decoded hypotheses, with their tags.
    references : list of str
        Decoded references, same order.

    Returns
    -------
    dict
        ``{"slot_type_f1", "slot_value_cer", "slot_value_wer", "slot_edit_f1_full",
        "slot_edit_f1_part", "wer", "cer"}`` to floats in percent.

    Example
    -------
    >>> scores = sf_scores(["PLAY B-artist ABBA E-artist"], ["PLAY B-artist ABBA E-artist"])
    >>> scores["slot_type_f1"], scores["slot_value_cer"], scores["slot_edit_f1_full"]
    (100.0, 0.0, 100.0)
    """
    return {
        "slot_type_f1": 100 * slot_type_f1(hypotheses, references),
        "slot_value_cer": 100 * slot_value_cer(hypotheses, references),
        "slot_value_wer": 100 * slot_value_wer(hypotheses, references),
        "slot_edit_f1_full": slot_edit_f1(hypotheses, references, loop_over_all_slot=True),
        "slot_edit_f1_part": slot_edit_f1(hypotheses, references, loop_over_all_slot=False),
        "wer": 100 * wer(hypotheses, references),
        "cer": 100 * cer(hypotheses, references),
    }
