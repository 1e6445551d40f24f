"""QUESST's term weighted value (MTWV, ATWV) and the stdlist XML the MediaEval scorer reads.

SUPERB's QbE number is the maximum term weighted value (``superb_protocol.md`` §7.4).
Detection is per file: a trial is one (query, document) pair, true when the ground truth
has an occurrence of the query anywhere in the document. For a decision threshold θ
(a trial is detected when its score is >= θ):

    P_miss(q, θ) = 1 - N_hit(q, θ) / N_true(q)
    P_FA(q, θ)   = N_FA(q, θ) / (N_docs - N_true(q))
    TWV(θ)       = 1 - mean_q [P_miss(q, θ) + β P_FA(q, θ)]

averaged over the queries with at least one true occurrence, with
β = (C_fa / C_miss)(1 / P_target - 1) = 12.49 for QUESST's P_target 0.0008, C_fa 1 and
C_miss 100. MTWV is the maximum of TWV over the thresholds, θ running over the
submitted scores, plus "detect nothing", whose TWV is 0: MTWV is therefore never below
0. ATWV is the TWV of the submitted YES/NO decisions.

Computed by one sort: TWV(θ) = (1/Q) Σ over detected trials of a weight, 1/N_true(q)
for a true trial and -β/(N_docs - N_true(q)) for a false one; sorting the trials by
score (highest first), the cumulative sum of the weights at the end of each group of
equal scores is Q·TWV at that group's score.

The scorer (``MediaEvalQUESST2014.jar``, run by ``scoring/score-TWV-Cnxe.sh``) reads
every query of the ground truth's term list against every document of its ECF, a
trial missing from the stdlist taking a default score (SUPERB passes -10) and a NO
decision; :func:`term_weighted_value` takes the same trial lists and default. To rescore
any system's stdlist that way::

    python -m rewire_lobes.metrics.mtwv <run>/eval/benchmark.stdlist.xml \\
        quesst14Database/scoring/groundtruth_quesst14_eval
"""

import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from rewire_lobes.errors import DataFileError
from rewire_lobes.io_utils import atomic_path

P_TARGET = 0.0008
C_FA = 1.0
C_MISS = 100.0
# score-TWV-Cnxe.sh's third argument in SUPERB's scoring command.
DEFAULT_SCORE = -10.0
# s3prl's decision: YES when the query's z-normalised score exceeds 2.
YES_THRESHOLD = 2.0
STDLIST_NAME = "benchmark.stdlist.xml"


def twv_beta(p_target=P_TARGET, c_fa=C_FA, c_miss=C_MISS):
    """β = (C_fa / C_miss)(1 / P_target - 1): the weight of a false alarm against a miss.

    Example
    -------
    >>> round(twv_beta(), 6)
    12.49
    """
    return (float(c_fa) / float(c_miss)) * (1.0 / float(p_target) - 1.0)


@dataclass(frozen=True)
class TWVResult:
    """The term weighted values of one stdlist against one ground truth.

    ``threshold`` is the lowest score detected at the MTWV (None when detecting nothing
    is best, MTWV 0); ``p_miss`` and ``p_fa`` are the query means at that threshold;
    ``num_queries`` counts the queries averaged (those with a true occurrence among the
    trial documents) and ``num_queries_without_occurrence`` those left out.
    """

    mtwv: float
    threshold: Optional[float]
    atwv: float
    p_miss: float
    p_fa: float
    beta: float
    num_queries: int
    num_queries_without_occurrence: int
    num_documents: int
    num_trials: int
    num_true_trials: int

    def as_dict(self):
        return asdict(self)


def term_weighted_value(detections, occurrences, queries, documents,
                        default_score=DEFAULT_SCORE, beta=None):
    """MTWV, its threshold and ATWV of ``detections`` over the trials ``queries × documents``.

    Arguments
    ---------
    detections : dict
        ``{query: {document: (score, yes)}}``, as :func:`read_stdlist` returns; a trial
        that is absent gets ``default_score`` and a NO decision. Queries and documents
        outside the trial lists are ignored.
    occurrences : dict
        ``{query: iterable of documents}`` holding it (the ground truth); documents
        outside ``documents`` do not count.
    queries, documents : sequence of str
        The trials: every query against every document.
    default_score : float
        The score of a trial missing from ``detections``.
    beta : float, optional
        β of the TWV; default :func:`twv_beta` of QUESST's constants.

    Returns
    -------
    TWVResult

    Example
    -------
    >>> detections = {"q": {"d1": (3.0, True), "d2": (1.0, False), "d3": (0.0, False)}}
    >>> result = term_weighted_value(detections, {"q": ["d1"]}, ["q"], ["d1", "d2", "d3"])
    >>> result.mtwv, result.threshold, result.atwv
    (1.0, 3.0, 1.0)
    """
    beta = twv_beta() if beta is None else float(beta)
    queries, documents = list(dict.fromkeys(queries)), list(dict.fromkeys(documents))
    column = {doc: j for j, doc in enumerate(documents)}
    truth = np.zeros((len(queries), len(documents)), dtype=bool)
    for i, query in enumerate(queries):
        for doc in occurrences.get(query, ()):
            if doc in column:
                truth[i, column[doc]] = True
    n_true = truth.sum(axis=1)
    scored = n_true > 0
    if not scored.any():
        raise ValueError(f"none of the {len(queries)} queries occurs in the "
                         f"{len(documents)} documents: the TWV is undefined")
    truth, n_true = truth[scored], n_true[scored]
    kept = [query for query, keep in zip(queries, scored) if keep]
    scores = np.full(truth.shape, float(default_score))
    yes = np.zeros(truth.shape, dtype=bool)
    for i, query in enumerate(kept):
        for doc, (score, decision) in detections.get(query, {}).items():
            j = column.get(doc)
            if j is not None:
                scores[i, j], yes[i, j] = float(score), bool(decision)

    n_false = len(documents) - n_true
    false_weight = np.divide(-beta, n_false, out=np.zeros(len(n_true)), where=n_false > 0)
    weights = np.where(truth, (1.0 / n_true)[:, None], false_weight[:, None])
    num_queries = len(kept)

    flat_scores, flat_weights = scores.ravel(), weights.ravel()
    order = np.argsort(-flat_scores, kind="stable")
    sorted_scores = flat_scores[order]
    totals = np.cumsum(flat_weights[order]) / num_queries
    group_ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    best = group_ends[np.argmax(totals[group_ends])]
    if totals[best] > 0:
        mtwv, threshold = float(totals[best]), float(sorted_scores[best])
        detected = scores >= threshold
    else:  # detecting nothing is best: TWV 0
        mtwv, threshold = 0.0, None
        detected = np.zeros(truth.shape, dtype=bool)
    hits = (detected & truth).sum(axis=1)
    false_alarms = (detected & ~truth).sum(axis=1)
    p_fa = np.divide(false_alarms, n_false, out=np.zeros(len(n_true)), where=n_false > 0)
    return TWVResult(
        mtwv=mtwv,
        threshold=threshold,
        atwv=float(weights[yes].sum() / num_queries),
        p_miss=float(np.mean(1.0 - hits / n_true)),
        p_fa=float(np.mean(p_fa)),
        beta=beta,
        num_queries=num_queries,
        num_queries_without_occurrence=len(queries) - num_queries,
        num_documents=len(documents),
        num_trials=int(truth.size),
        num_true_trials=int(truth.sum()),
    )


# ---------------------------------------------------------------------- stdlist XML
def stdlist_decisions(scores, yes_threshold=YES_THRESHOLD):
    """``{query: {doc: (score, yes)}}`` from ``{query: {doc: score}}``: YES above the threshold."""
    return {query: {doc: (float(score), float(score) > yes_threshold)
                    for doc, score in row.items()}
            for query, row in scores.items()}


def write_stdlist(path, scores, yes_threshold=YES_THRESHOLD, language="english"):
    """Writes s3prl's ``benchmark.stdlist.xml`` atomically; returns what a reader gets back.

    Every (query, document) pair of ``scores`` is written, its score with four decimals
    and ``decision="YES"`` when the unrounded score is above ``yes_threshold`` (s3prl's
    2.0 on z-normalised scores). ``tbeg`` and ``dur`` are dummies: detection is per file.

    Arguments
    ---------
    path : str or Path
        The file to write.
    scores : dict
        ``{query id: {document id: score}}``, in the order to write.
    yes_threshold : float
        Scores above it are YES.
    language : str
        The root's ``language`` attribute (s3prl writes ``english``).

    Returns
    -------
    dict : ``{query: {doc: (written score, yes)}}``, as :func:`read_stdlist` reads it.
    """
    root = ET.Element("stdlist", {
        "termlist_filename": STDLIST_NAME,
        "indexing_time": "1.00",
        "language": language,
        "index_size": "1",
        "system_id": "benchmark",
    })
    written = {}
    for query, row in scores.items():
        termlist = ET.SubElement(root, "detected_termlist", {
            "termid": str(query), "term_search_time": "1.0", "oov_term_count": "1"})
        written[query] = {}
        for doc, score in row.items():
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"{path}: query {query}, document {doc}: score {score} "
                                 "is not a finite number")
            yes = score > yes_threshold
            text = f"{score:.4f}"
            ET.SubElement(termlist, "term", {
                "file": str(doc), "channel": "1", "tbeg": "0.000", "dur": "0.00",
                "score": text, "decision": "YES" if yes else "NO"})
            written[query][doc] = (float(text), yes)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    with atomic_path(path) as tmp:
        tree.write(tmp, encoding="UTF-8", xml_declaration=True)
    return written


def read_stdlist(path):
    """``{query: {doc: (score, yes)}}`` of a stdlist XML (ours, s3prl's or any system's).

    A file that is not a stdlist, a term without a file, score or decision, a score that
    is not a number, a decision other than YES/NO and a pair listed twice are each a
    :class:`DataFileError` naming the file, the query and the document.
    """
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise DataFileError(f"{path}: not a readable stdlist XML ({err})") from None
    if root.tag != "stdlist":
        raise DataFileError(f"{path}: the root element is <{root.tag}>, expected <stdlist>")
    detections = {}
    for termlist in root.iter("detected_termlist"):
        query = termlist.get("termid")
        if not query:
            raise DataFileError(f"{path}: a <detected_termlist> has no termid")
        row = detections.setdefault(query, {})
        for term in termlist.iter("term"):
            doc, score, decision = term.get("file"), term.get("score"), term.get("decision")
            where = f"{path}: query {query}, document {doc}"
            if not doc or score is None or decision is None:
                raise DataFileError(f"{where}: a <term> needs file, score and decision")
            try:
                value = float(score)
            except ValueError:
                raise DataFileError(f"{where}: score {score!r} is not a number") from None
            if not math.isfinite(value):
                raise DataFileError(f"{where}: score {score!r} is not a finite number")
            if decision not in ("YES", "NO"):
                raise DataFileError(f"{where}: decision {decision!r} (expected YES or NO)")
            if doc in row:
                raise DataFileError(f"{where}: the pair is listed twice")
            row[doc] = (value, decision == "YES")
    return detections


def main(argv=None):
    """Scores a stdlist against a ground-truth folder, every term-list query against every
    ECF document, as the MediaEval scorer is run by SUPERB (to our reading)."""
    import argparse
    import json

    from rewire_lobes.data.quesst14 import read_groundtruth  # the data layer, only here

    parser = argparse.ArgumentParser(description=main.__doc__.split(",")[0])
    parser.add_argument("stdlist", help="a *.stdlist.xml file")
    parser.add_argument("groundtruth",
                        help="e.g. quesst14Database/scoring/groundtruth_quesst14_eval")
    parser.add_argument("--default_score", type=float, default=DEFAULT_SCORE,
                        help="score of a trial the stdlist lacks (SUPERB: -10)")
    args = parser.parse_args(argv)
    truth = read_groundtruth(args.groundtruth)
    result = term_weighted_value(read_stdlist(args.stdlist), truth.occurrences, truth.queries,
                                 truth.documents, default_score=args.default_score)
    print(json.dumps(result.as_dict(), indent=2))


__all__ = [
    "P_TARGET",
    "C_FA",
    "C_MISS",
    "DEFAULT_SCORE",
    "YES_THRESHOLD",
    "STDLIST_NAME",
    "TWVResult",
    "twv_beta",
    "term_weighted_value",
    "stdlist_decisions",
    "write_stdlist",
    "read_stdlist",
]

if __name__ == "__main__":
    from rewire_lobes.runs.cli import user_errors

    with user_errors():
        main()
