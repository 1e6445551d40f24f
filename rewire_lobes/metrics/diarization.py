"""SUPERB speaker diarization scoring: RTTM files, posteriors to turns, and DER.

The protocol (``superb_protocol.md`` §5 and §7.3): the head's per-frame speaker posteriors of
each recording are binarised (``> threshold``), median-filtered along time and cut into
turns (:func:`posteriors_to_turns`); the turns of all recordings are scored against the
reference RTTM with dscore's defaults, i.e. collar 0, overlapped speech scored, and, without
a UEM file, each file scored from the earliest onset to the latest offset of its reference
and hypothesis turns (:func:`diarization_error`, pyannote.metrics' ``DiarizationErrorRate``).
s3prl tries 5 thresholds × 2 median widths (:func:`decision_grid`) and reports the lowest
OVERALL DER (:func:`best_decision`).

A recording's turns are a list of ``(start_s, end_s, speaker)`` sorted by start; a corpus
is ``{recording id: turns}``. pyannote is imported only by the functions that score, so
importing this module stays cheap.

Example
-------
>>> import numpy as np
>>> posteriors = np.array([[0.9, 0.1], [0.8, 0.6], [0.2, 0.7]])
>>> hypothesis = {"mix": posteriors_to_turns(posteriors, 0.5, 1, 0.02, "mix")}
>>> hypothesis["mix"]
[(0.0, 0.04, 'mix_0'), (0.02, 0.06, 'mix_1')]
>>> reference = {"mix": [(0.0, 0.04, "alice"), (0.02, 0.06, "bob")]}
>>> diarization_error(reference, hypothesis)["der"]
0.0
"""

import itertools
import logging
import math

import numpy as np

from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.io_utils import atomic_path

logger = logging.getLogger(__name__)

# The nine fields of an RTTM SPEAKER line (a tenth, the signal lookahead time, is optional).
_RTTM_FIELDS = 9
_TYPE, _RECORDING, _START, _DURATION, _SPEAKER = 0, 1, 3, 4, 7

DEFAULT_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
DEFAULT_MEDIAN_WIDTHS = (1, 11)
GRID_SCORES = ("der", "missed", "false_alarm", "confusion", "total")


def read_rttm(path, recordings=None):
    """Reads the SPEAKER turns of an RTTM file.

    Overlapping turns of one speaker in one recording are merged into one (dscore merges
    them before scoring; pyannote would otherwise count their overlap twice in the
    reference time). Turns that only touch are kept apart.

    Arguments
    ---------
    path : str or Path
        The RTTM: ``SPEAKER <rec> <chan> <start> <dur> <NA> <NA> <speaker> <NA> [<NA>]``
        per line, separated by spaces or tabs; blank lines are skipped.
    recordings : iterable of str, optional
        The recording ids of the data folder (wav.scp). A recording of the RTTM that is
        not among them is an error; one of them without any turn gets an empty list.

    Returns
    -------
    turns : dict
        ``{recording: [(start_s, end_s, speaker), ...]}``, each list sorted by start.
    stats : dict
        ``recordings``, ``turns`` (after merging), ``speakers`` (distinct labels),
        ``merged_turns`` (turns absorbed by merging) and ``recordings_without_turns``
        (recordings given but absent from the RTTM; 0 without ``recordings``).

    Raises
    ------
    DataFileError
        A malformed line (too few fields, a type other than SPEAKER, a start or duration
        that is not a non-negative number), named by ``path:line``, or a recording missing
        from ``recordings``.
    """
    known = None if recordings is None else set(recordings)
    raw = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            recording, turn = _parse_rttm_line(fields, f"{path}:{number}")
            if known is not None and recording not in known:
                raise DataFileError(
                    f"{path}:{number}: recording {recording} is missing from wav.scp; "
                    "the rttm and wav.scp of a split must list the same recordings"
                )
            raw.setdefault(recording, []).append(turn)

    turns, merged = {}, 0
    for recording, recording_turns in raw.items():
        turns[recording], absorbed = merge_speaker_turns(recording_turns)
        merged += absorbed
    if merged:
        logger.warning(
            "%s: merged %d overlapping turns of the same speaker (as dscore does)", path, merged
        )
    without_turns = 0
    if known is not None:
        for recording in known - turns.keys():
            turns[recording] = []
            without_turns += 1
        if without_turns:
            logger.warning("%s: %d recordings of wav.scp have no turn", path, without_turns)
    stats = {
        "recordings": len(turns),
        "turns": sum(len(recording_turns) for recording_turns in turns.values()),
        "speakers": len({speaker for listed in turns.values() for _, _, speaker in listed}),
        "merged_turns": merged,
        "recordings_without_turns": without_turns,
    }
    return turns, stats


def _parse_rttm_line(fields, where):
    """``(recording, (start, end, speaker))`` of one split line; ``where`` names it in errors."""
    if len(fields) < _RTTM_FIELDS:
        raise DataFileError(
            f"{where}: {len(fields)} fields, an RTTM line needs {_RTTM_FIELDS} "
            "(SPEAKER <rec> <chan> <start> <dur> <NA> <NA> <speaker> <NA>)"
        )
    if fields[_TYPE] != "SPEAKER":
        raise DataFileError(f"{where}: type {fields[_TYPE]!r}, only SPEAKER lines are read")
    start = _non_negative_seconds(fields[_START], "start", where)
    duration = _non_negative_seconds(fields[_DURATION], "duration", where)
    return fields[_RECORDING], (start, start + duration, fields[_SPEAKER])


def _non_negative_seconds(text, name, where):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataFileError(f"{where}: {name} {text!r} is not a number of seconds")
    if value < 0:
        raise DataFileError(f"{where}: {name} {text} is negative")
    return value


def merge_speaker_turns(turns):
    """Merges the strictly overlapping turns of each speaker of one recording.

    Arguments
    ---------
    turns : list of (float, float, str)
        ``(start_s, end_s, speaker)`` in any order.

    Returns
    -------
    merged : list of (float, float, str)
        Sorted by start (then end, then speaker).
    absorbed : int
        How many turns were merged into another.

    Example
    -------
    >>> merge_speaker_turns([(4.0, 7.0, "a"), (0.0, 5.0, "a"), (7.0, 8.0, "a")])
    ([(0.0, 7.0, 'a'), (7.0, 8.0, 'a')], 1)
    """
    by_speaker = {}
    for start, end, speaker in turns:
        by_speaker.setdefault(speaker, []).append((start, end))
    merged = []
    for speaker, spans in by_speaker.items():
        spans.sort()
        current_start, current_end = spans[0]
        for start, end in spans[1:]:
            if start < current_end:
                current_end = max(current_end, end)
            else:
                merged.append((current_start, current_end, speaker))
                current_start, current_end = start, end
        merged.append((current_start, current_end, speaker))
    merged.sort()
    return merged, len(turns) - len(merged)


def write_rttm(path, turns, decimals=2):
    """Writes turns as s3prl's ``make_rttm.py`` does, atomically.

    One line ``SPEAKER <rec> 1 <start:.2f> <dur:.2f> <NA> <NA> <speaker> <NA>`` per turn,
    recordings in sorted order, each recording's turns by start.

    Arguments
    ---------
    path : str or Path
        The RTTM to write.
    turns : dict
        ``{recording: [(start_s, end_s, speaker), ...]}``.
    decimals : int
        Digits after the point of the times: s3prl's 2 for hypotheses (what
        :func:`posteriors_to_turns` gives is then written exactly); more for a
        reference copied from finer times.
    """
    lines = []
    for recording in sorted(turns):
        for start, end, speaker in sorted(turns[recording]):
            for name in (recording, speaker):
                if not name or any(character.isspace() for character in name):
                    raise ValueError(f"{name!r}: an RTTM field may not be empty or hold spaces")
            lines.append(
                f"SPEAKER {recording} 1 {start:.{decimals}f} {end - start:.{decimals}f} "
                f"<NA> <NA> {speaker} <NA>\n"
            )
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def check_median_width(median_width):
    """Raises :class:`OptionError` unless ``median_width`` is an odd integer >= 1."""
    if (
        isinstance(median_width, bool)
        or not isinstance(median_width, (int, np.integer))
        or median_width < 1
        or median_width % 2 == 0
    ):
        raise OptionError(
            f"median_width {median_width!r}: the median filter needs an odd integer window "
            ">= 1 (1 = no filtering; s3prl tries 1 and 11)"
        )


def posteriors_to_turns(posteriors, threshold, median_width, frame_shift, label):
    """The turns of one recording from its per-frame speaker posteriors (s3prl's make_rttm).

    Each speaker column is binarised (``> threshold``), median-filtered along time with
    ``scipy.signal.medfilt`` (zero-padded at both ends, as s3prl's ``(width, 1)`` kernel
    over the whole matrix), and each run of active frames becomes a turn.

    Arguments
    ---------
    posteriors : array-like
        ``[frames, speakers]`` posteriors in [0, 1].
    threshold : float
        A frame is active when its posterior is strictly greater.
    median_width : int
        Odd window of the median filter, in frames; 1 leaves the decisions as they are.
    frame_shift : float
        Seconds per frame.
    label : str
        Prefix of the speaker labels: speaker ``k`` is ``f"{label}_{k}"``.

    Returns
    -------
    list of (float, float, str)
        ``(first frame × frame_shift, (last frame + 1) × frame_shift, speaker)``, by start,
        the start and the duration rounded to 10 ms as the RTTM holds them (s3prl's
        ``.2f``), so that a DER computed from these turns is the DER of the written file.

    Example
    -------
    >>> posteriors_to_turns([[0.2], [0.7], [0.9], [0.1]], 0.5, 1, 0.5, "mix")
    [(0.5, 1.5, 'mix_0')]
    """
    check_median_width(median_width)
    decisions = np.asarray(posteriors, dtype=float)
    if decisions.ndim != 2:
        raise ValueError(f"posteriors must be [frames, speakers], got shape {decisions.shape}")
    active = _median_filter(decisions > threshold, median_width)
    turns = []
    for speaker, column in enumerate(active.T):
        # Padding with inactive frames makes every run start and end at a change.
        changes = np.flatnonzero(np.diff(np.concatenate(([0], column, [0]))))
        for first, past_last in zip(changes[::2], changes[1::2]):
            start = round(float(first * frame_shift), 2)
            duration = round(float((past_last - first) * frame_shift), 2)
            turns.append((start, start + duration, f"{label}_{speaker}"))
    turns.sort()
    return turns


def _median_filter(active, width):
    """``[frames, speakers]`` 0/1 decisions after a median filter of ``width`` frames along time."""
    active = active.astype(np.int8)
    if width == 1 or len(active) == 0:
        return active
    from scipy.signal import medfilt

    # medfilt pads with zeros itself; padding here as well changes nothing but keeps the
    # kernel within the volume, so short recordings raise no "zero-padded" warning.
    half = width // 2
    padded = np.pad(active.astype(float), ((half, half), (0, 0)))
    filtered = medfilt(padded, kernel_size=(width, 1))[half : half + len(active)]
    return (filtered > 0.5).astype(np.int8)


def diarization_error(reference, hypothesis):
    """Overall DER of a corpus, as dscore scores it without a UEM (collar 0, overlap scored).

    Each reference recording is scored by pyannote.metrics' ``DiarizationErrorRate``
    (optimal one-to-one speaker mapping per recording) over the extent of its reference and
    hypothesis turns; errors and reference time are summed over recordings, so
    ``der = (missed + false_alarm + confusion) / total`` (not a mean of per-file DERs).
    A reference recording without a hypothesis counts as all missed.

    Arguments
    ---------
    reference : dict
        ``{recording: [(start_s, end_s, speaker), ...]}`` (from :func:`read_rttm`).
    hypothesis : dict
        The same for the system; every recording must be in ``reference``.

    Returns
    -------
    dict
        ``der`` (a fraction), ``missed``, ``false_alarm``, ``confusion``, ``total``
        (seconds; total = reference speaker time) and ``recordings`` (scored).

    Raises
    ------
    ValueError
        A hypothesis recording absent from the reference, or no reference speech at all.
    """
    from pyannote.metrics.diarization import DiarizationErrorRate

    extra = sorted(set(hypothesis) - set(reference))
    if extra:
        shown = ", ".join(extra[:5]) + (" ..." if len(extra) > 5 else "")
        raise ValueError(
            f"{len(extra)} hypothesis recordings are not in the reference: {shown}"
        )
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    sums = {"missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
    for recording, reference_turns in reference.items():
        hypothesis_turns = hypothesis.get(recording, [])
        # Merged as read_rttm merges: pyannote would count a speaker's overlap twice.
        reference_turns = merge_speaker_turns(reference_turns)[0]
        hypothesis_turns = merge_speaker_turns(hypothesis_turns)[0]
        extent = _extent(reference_turns + hypothesis_turns)
        if extent is None:
            continue
        components = metric(
            _annotation(recording, reference_turns),
            _annotation(recording, hypothesis_turns),
            uem=_timeline(recording, extent),
            detailed=True,
        )
        sums["missed"] += components["missed detection"]
        sums["false_alarm"] += components["false alarm"]
        sums["confusion"] += components["confusion"]
        sums["total"] += components["total"]
    if sums["total"] <= 0:
        raise ValueError("the reference holds no speaker time: there is nothing to score")
    errors = sums["missed"] + sums["false_alarm"] + sums["confusion"]
    return {"der": errors / sums["total"], **sums, "recordings": len(reference)}


def _extent(turns):
    """``(earliest onset, latest offset)`` of non-empty turns, or None when there is none."""
    spans = [(start, end) for start, end, _ in turns if end > start]
    if not spans:
        return None
    return min(start for start, _ in spans), max(end for _, end in spans)


def _annotation(recording, turns):
    from pyannote.core import Annotation, Segment

    annotation = Annotation(uri=recording)
    for track, (start, end, speaker) in enumerate(turns):
        if end > start:
            # A track per turn: two speakers sharing one segment would otherwise overwrite.
            annotation[Segment(start, end), track] = speaker
    return annotation


def _timeline(recording, extent):
    from pyannote.core import Segment, Timeline

    return Timeline([Segment(*extent)], uri=recording)


def hypothesis_turns(posteriors, threshold, median_width, frame_shift):
    """The turns of every recording at one decision, labelled ``<recording>_<speaker>``.

    Arguments
    ---------
    posteriors : dict
        ``{recording: [frames, speakers] posteriors}``.
    threshold, median_width, frame_shift
        As :func:`posteriors_to_turns`.

    Returns
    -------
    dict
        ``{recording: turns}``, ready for :func:`write_rttm` or :func:`diarization_error`.
    """
    return {
        recording: posteriors_to_turns(matrix, threshold, median_width, frame_shift, recording)
        for recording, matrix in posteriors.items()
    }


def decision_grid(
    posteriors,
    reference,
    frame_shift,
    thresholds=DEFAULT_THRESHOLDS,
    median_widths=DEFAULT_MEDIAN_WIDTHS,
):
    """Scores every (threshold, median width) as s3prl's ``score.sh`` does.

    Arguments
    ---------
    posteriors : dict
        ``{recording: [frames, speakers] posteriors}``; a reference recording without
        posteriors counts as all missed.
    reference : dict
        ``{recording: turns}`` (from :func:`read_rttm`).
    frame_shift : float
        Seconds per frame.
    thresholds, median_widths : sequences
        The decisions tried; s3prl's 5 × 2 by default.

    Returns
    -------
    list of dict
        ``threshold``, ``median_width``, ``der``, ``missed``, ``false_alarm``, ``confusion``
        and ``total`` for each combination, thresholds outer, widths inner.
    """
    for width in median_widths:
        check_median_width(width)
    grid = []
    for threshold, width in itertools.product(thresholds, median_widths):
        scores = diarization_error(
            reference, hypothesis_turns(posteriors, threshold, width, frame_shift)
        )
        grid.append(
            {
                "threshold": threshold,
                "median_width": width,
                **{key: scores[key] for key in GRID_SCORES},
            }
        )
    return grid


def best_decision(grid):
    """The entry of :func:`decision_grid` with the lowest DER; the first of equals.

    Example
    -------
    >>> best_decision([{"threshold": 0.3, "der": 0.2}, {"threshold": 0.4, "der": 0.1},
    ...                {"threshold": 0.5, "der": 0.1}])
    {'threshold': 0.4, 'der': 0.1}
    """
    if not grid:
        raise ValueError("the decision grid is empty")
    return min(grid, key=lambda entry: entry["der"])
