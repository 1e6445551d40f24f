"""MTWV and ATWV on hand-computed cases, against the definition, and the stdlist XML.

The expected values are worked out from the definition in superb_protocol.md §7.4
(β = 0.01 · 1249 = 12.49): TWV(θ) = 1 - mean_q [P_miss + β P_FA] over the queries
with a true occurrence, maximised over the thresholds, detecting nothing giving 0.
"""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from rewire_lobes.errors import DataFileError
from rewire_lobes.metrics.mtwv import (
    DEFAULT_SCORE,
    read_stdlist,
    stdlist_decisions,
    term_weighted_value,
    twv_beta,
    write_stdlist,
)

BETA = 12.49


def docs(n):
    return [f"d{j}" for j in range(n)]


def detections(rows, yes=()):
    """``{query: {doc: score}}`` to detections, YES only for the (query, doc) in ``yes``."""
    return {q: {d: (float(s), (q, d) in yes) for d, s in row.items()} for q, row in rows.items()}


def test_beta_of_the_quesst_constants():
    assert twv_beta() == pytest.approx(BETA, rel=1e-12)
    assert twv_beta(p_target=0.5, c_fa=1, c_miss=1) == pytest.approx(1.0)


def test_perfect_detector_scores_one():
    documents = docs(10)
    truth = {"q1": ["d0", "d1"], "q2": ["d2"]}
    rows = {q: {d: (5.0 if d in truth[q] else -float(j)) for j, d in enumerate(documents)}
            for q in truth}
    result = term_weighted_value(detections(rows), truth, ["q1", "q2"], documents)
    assert result.mtwv == pytest.approx(1.0, abs=1e-12)
    assert result.threshold == 5.0
    assert (result.p_miss, result.p_fa) == (0.0, 0.0)
    assert (result.num_queries, result.num_trials, result.num_true_trials) == (2, 20, 3)


def test_one_miss_costs_half_of_its_query():
    documents = docs(10)
    truth = {"q1": ["d0", "d1"], "q2": ["d2"]}
    rows = {q: {d: (5.0 if d in truth[q] else 0.0) for d in documents} for q in truth}
    rows["q1"]["d1"] = -1.0  # below every false trial: reaching it would cost 8 false alarms
    result = term_weighted_value(detections(rows), truth, ["q1", "q2"], documents)
    # 1 - mean(P_miss) = 1 - (1/2 + 0) / 2
    assert result.mtwv == pytest.approx(0.75, abs=1e-12)
    assert result.threshold == 5.0
    assert result.p_miss == pytest.approx(0.25) and result.p_fa == 0.0


def test_one_false_alarm_costs_beta_over_the_false_trials():
    documents = docs(1000)
    rows = {"q": {d: 0.0 for d in documents}}
    rows["q"].update(d0=1.0, d1=2.0)  # d1, false, outscores the true d0
    result = term_weighted_value(detections(rows), {"q": ["d0"]}, ["q"], documents)
    assert result.mtwv == pytest.approx(1 - BETA / 999, abs=1e-12)
    assert result.threshold == 1.0
    assert result.p_fa == pytest.approx(1 / 999)
    # With 10 documents one false alarm costs more than the hit is worth: detect nothing.
    few = docs(10)
    rows = {"q": {d: 0.0 for d in few}}
    rows["q"].update(d0=1.0, d1=2.0)
    result = term_weighted_value(detections(rows), {"q": ["d0"]}, ["q"], few)
    assert (result.mtwv, result.threshold) == (0.0, None)
    assert (result.p_miss, result.p_fa) == (1.0, 0.0)


def test_all_scores_equal_detect_everything_or_nothing():
    documents = docs(50)
    truth = {"q1": ["d3"], "q2": ["d4", "d5"]}
    rows = {q: {d: 0.7 for d in documents} for q in truth}
    result = term_weighted_value(detections(rows), truth, list(truth), documents)
    # The only threshold detects all trials: TWV = 1 - (0 + β) < 0, so nothing is best.
    assert (result.mtwv, result.threshold) == (0.0, None)


def test_tied_scores_are_detected_together():
    documents = docs(101)
    rows = {"q": {d: 0.0 for d in documents}}
    rows["q"].update(d0=1.0, d1=1.0)  # the true d0 ties with the false d1
    result = term_weighted_value(detections(rows), {"q": ["d0"]}, ["q"], documents)
    assert result.mtwv == pytest.approx(1 - BETA / 100, abs=1e-12)


def test_query_without_occurrence_is_left_out_of_the_mean():
    documents = docs(10)
    truth = {"q1": ["d0", "d1"]}
    rows = {"q1": {d: (5.0 if d == "d0" else 0.0) for d in documents}}
    alone = term_weighted_value(detections(rows), truth, ["q1"], documents)
    assert alone.mtwv == pytest.approx(0.5)
    for none_score in (9.0, -3.0):  # whatever its scores, the absent query changes nothing
        rows["q0"] = {d: none_score for d in documents}
        both = term_weighted_value(detections(rows), truth, ["q0", "q1"], documents)
        assert both.mtwv == pytest.approx(0.5)
        assert (both.num_queries, both.num_queries_without_occurrence) == (1, 1)
    with pytest.raises(ValueError, match="undefined"):
        term_weighted_value(detections(rows), {}, ["q0", "q1"], documents)


def test_unreported_trials_take_the_default_score():
    """As the scorer run with -10: a listed query or document without scores counts."""
    documents = docs(20)
    truth = {"q1": ["d0"], "q2": ["d1"]}
    rows = {"q1": {d: (3.0 if d == "d0" else 0.0) for d in documents[:10]}}
    # q2 was never scored and d10..d19 were not scored for q1: q2 is all missed.
    result = term_weighted_value(detections(rows), truth, ["q1", "q2"], documents)
    assert result.mtwv == pytest.approx(0.5)
    # Restricted to what was scored, q1 alone is perfect.
    english = term_weighted_value(detections(rows), truth, ["q1"], documents[:10])
    assert english.mtwv == pytest.approx(1.0)
    # A default above the scored trials makes every unreported trial a detection first.
    high = term_weighted_value(detections(rows), truth, ["q1", "q2"], documents,
                               default_score=5.0)
    assert high.mtwv < result.mtwv
    assert DEFAULT_SCORE == -10.0


def test_occurrences_outside_the_documents_do_not_count():
    documents = docs(10)
    rows = {"q": {d: (2.0 if d == "d0" else 0.0) for d in documents}}
    result = term_weighted_value(detections(rows), {"q": ["d0", "elsewhere"]}, ["q"], documents)
    assert result.mtwv == pytest.approx(1.0) and result.num_true_trials == 1


def test_atwv_uses_the_decisions():
    documents = docs(1000)
    truth = {"q1": ["d0", "d1"], "q2": ["d2"]}
    rows = {q: {d: 0.0 for d in documents} for q in truth}
    rows["q1"].update(d0=3.0, d1=3.0)
    rows["q2"]["d2"] = 3.0
    yes = {("q1", "d0"), ("q1", "d5"), ("q2", "d2")}  # q1: a hit, a miss, a false alarm
    result = term_weighted_value(detections(rows, yes), truth, list(truth), documents)
    expected = 1 - ((0.5 + BETA / 998) + 0.0) / 2
    assert result.atwv == pytest.approx(expected, abs=1e-12)
    assert result.mtwv == pytest.approx(1.0)


def brute_force_mtwv(scores, truth, beta=BETA):
    """TWV at every threshold straight from the definition, and 0 for detecting nothing."""
    best = 0.0
    n_docs = scores.shape[1]
    keep = truth.any(axis=1)
    for theta in np.unique(scores):
        detected = scores >= theta
        values = []
        for q in np.flatnonzero(keep):
            n_true = truth[q].sum()
            p_miss = 1 - (detected[q] & truth[q]).sum() / n_true
            p_fa = (detected[q] & ~truth[q]).sum() / (n_docs - n_true)
            values.append(p_miss + beta * p_fa)
        best = max(best, 1 - np.mean(values))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mtwv_equals_the_definition_on_random_systems(seed):
    rng = np.random.default_rng(seed)
    n_queries, n_docs = 6, 300
    truth = rng.random((n_queries, n_docs)) < 0.01
    truth[0] = False  # a query that occurs nowhere
    truth[1, :3] = True
    # Scores rounded to one decimal, so that ties are many; true trials somewhat higher.
    scores = np.round(rng.normal(size=truth.shape) + 2.5 * truth, 1)
    queries, documents = [f"q{i}" for i in range(n_queries)], docs(n_docs)
    rows = {q: dict(zip(documents, scores[i])) for i, q in enumerate(queries)}
    occurrences = {q: [d for d, t in zip(documents, truth[i]) if t] for i, q in enumerate(queries)}
    result = term_weighted_value(detections(rows), occurrences, queries, documents)
    assert result.mtwv == pytest.approx(brute_force_mtwv(scores, truth), abs=1e-9)
    assert result.num_queries == int(truth.any(axis=1).sum())


# ---------------------------------------------------------------------- stdlist XML
def test_stdlist_has_s3prls_layout_and_reads_back(tmp_path):
    path = tmp_path / "benchmark.stdlist.xml"
    scores = {"quesst14_dev_0001": {"quesst14_00001": 2.00004, "quesst14_00002": -0.123456},
              "quesst14_dev_0002": {"quesst14_00001": 1.99996, "quesst14_00002": 3.5}}
    written = write_stdlist(path, scores)
    root = ET.parse(path).getroot()
    assert root.tag == "stdlist" and root.attrib == {
        "termlist_filename": "benchmark.stdlist.xml", "indexing_time": "1.00",
        "language": "english", "index_size": "1", "system_id": "benchmark"}
    termlists = root.findall("detected_termlist")
    assert [t.attrib for t in termlists] == [
        {"termid": q, "term_search_time": "1.0", "oov_term_count": "1"} for q in scores]
    first = termlists[0].findall("term")
    assert first[0].attrib == {"file": "quesst14_00001", "channel": "1", "tbeg": "0.000",
                               "dur": "0.00", "score": "2.0000", "decision": "YES"}
    assert first[1].attrib["score"] == "-0.1235" and first[1].attrib["decision"] == "NO"
    # YES is decided on the unrounded score: 1.99996 is written 2.0000 but stays NO.
    assert termlists[1].find("term").attrib == {
        **first[0].attrib, "decision": "NO"}
    read = read_stdlist(path)
    assert read == written == {
        "quesst14_dev_0001": {"quesst14_00001": (2.0, True), "quesst14_00002": (-0.1235, False)},
        "quesst14_dev_0002": {"quesst14_00001": (2.0, False), "quesst14_00002": (3.5, True)},
    }
    assert stdlist_decisions({"q": {"d": 2.5, "e": 2.0}}) == {"q": {"d": (2.5, True),
                                                                     "e": (2.0, False)}}


def test_stdlist_write_is_atomic_and_refuses_nan(tmp_path):
    path = tmp_path / "benchmark.stdlist.xml"
    write_stdlist(path, {"q": {"d": 1.0}})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="finite"):
        write_stdlist(path, {"q": {"d": float("nan")}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmark.stdlist.xml"]


@pytest.mark.parametrize("text, message", [
    ("not xml at all", "not a readable stdlist"),
    ("<ecf/>", "expected <stdlist>"),
    ('<stdlist><detected_termlist termid="q"><term file="d" score="x" decision="NO"/>'
     "</detected_termlist></stdlist>", "query q, document d: score 'x'"),
    ('<stdlist><detected_termlist termid="q"><term file="d" score="1" decision="MAYBE"/>'
     "</detected_termlist></stdlist>", "decision 'MAYBE'"),
    ('<stdlist><detected_termlist termid="q"><term file="d" score="1" decision="NO"/>'
     '<term file="d" score="2" decision="NO"/></detected_termlist></stdlist>', "twice"),
    ('<stdlist><detected_termlist termid="q"><term file="d" decision="NO"/>'
     "</detected_termlist></stdlist>", "needs file, score and decision"),
])
def test_bad_stdlist_is_a_data_file_error(tmp_path, text, message):
    path = tmp_path / "system.stdlist.xml"
    path.write_text(text)
    with pytest.raises(DataFileError, match=message) as err:
        read_stdlist(path)
    assert str(path) in str(err.value)


def test_rescore_command_scores_a_stdlist_against_a_groundtruth_folder(tmp_path, capsys):
    """``python -m rewire_lobes.metrics.mtwv``: the term list x ECF trials, default -10."""
    from rewire_lobes.metrics.mtwv import main

    truth = tmp_path / "groundtruth_quesst14_dev"
    truth.mkdir()
    (truth / "quesst14.ecf.xml").write_text(
        "<ecf>" + "".join(f'<excerpt audio_filename="d{j}"/>' for j in range(4)) + "</ecf>")
    (truth / "quesst14_dev.tlist.xml").write_text(
        '<termlist><term termid="q1"/><term termid="q2"/></termlist>')
    (truth / "quesst14_dev.rttm").write_text(
        "LEXEME d0 1 0.5 0.4 q1 lex <NA> <NA>\n"
        "LEXEME d1 1 0.0 2.0 NO_KEYWORD lex <NA> <NA>\n"
        "LEXEME d2 1 0.3 0.4 q2 lex <NA> <NA>\n")
    stdlist = tmp_path / "benchmark.stdlist.xml"
    write_stdlist(stdlist, {"q1": {"d0": 3.0, "d1": 0.0, "d2": 0.0}})  # q2, d3: unreported
    main([str(stdlist), str(truth)])
    printed = json.loads(capsys.readouterr().out)
    # q1 found, q2 (never scored) missed: 1 - (0 + 1) / 2.
    assert printed["mtwv"] == pytest.approx(0.5) and printed["num_queries"] == 2
    assert printed["num_documents"] == 4
