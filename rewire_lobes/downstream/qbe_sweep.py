"""QbE over every hidden state: features once, then match, write and score each layer.

``sweep_layers`` is what ``recipes/QbE/evaluate.py`` runs after preparation: the encoder
runs once over the documents and both query sets (every hidden state cached on disk by
``FrameCache``); for each chosen state and split the queries are matched
(``rewire_lobes.downstream.qbe``), the stdlist written and scored (MTWV in both trial
scopes); the state with the best dev MTWV is chosen, its stdlists copied to
``<output_folder>/{dev,eval}/`` and results.json written.

A killed run resumes: a state's split whose ``match.json`` (written after its stdlist) is
there is read back, not recomputed, and the rerun writes the same results.json.
"""

import json
import logging
import shutil
import time
from pathlib import Path

import speechbrain as sb
import torch

from rewire_lobes.data.quesst14 import GROUNDTRUTH_FILE, SPLIT_MANIFESTS, SPLITS, GroundTruth
from rewire_lobes.downstream.dataio import audio_pipeline, audio_pipeline_tag
from rewire_lobes.downstream.frame_cache import FrameCache
from rewire_lobes.downstream.qbe import (
    TRIAL_SCOPES,
    LayerFrames,
    MatchSettings,
    layer_statistics,
    match_split,
    trial_lists,
)
from rewire_lobes.downstream.results import describe_device, results_record, write_results
from rewire_lobes.errors import DataFileError, OptionError
from rewire_lobes.io_utils import atomic_path, write_json_atomic
from rewire_lobes.metrics.mtwv import (
    STDLIST_NAME,
    read_stdlist,
    term_weighted_value,
    twv_beta,
    write_stdlist,
)
from rewire_lobes.runs.provenance import read_provenance
from rewire_lobes.upstream.encoder import describe_encoder

logger = logging.getLogger(__name__)

MATCH_RECORD = "match.json"
FEATURES_RECORD = "features.json"
LAYERS_FOLDER = "layers"


def sweep_layers(hparams, manifest_folder, settings, scope, device, progressbar=True):
    """Features, every chosen layer matched and scored, the best dev layer, results.json.

    Returns the results.json record.
    """
    upstream = hparams["upstream"].to(device)
    encoder = describe_encoder(upstream)
    layers = chosen_layers(hparams["layers"], upstream.num_states)
    frames, ids, wavs, feature_seconds = load_frames(hparams, manifest_folder, upstream,
                                                     encoder, progressbar)
    check_document_frames(frames["documents"], wavs)
    groundtruth = read_prepared_groundtruth(manifest_folder)

    output = Path(hparams["output_folder"])
    scored = {layer: score_layer(layer, frames, ids, groundtruth, settings, hparams, output)
              for layer in layers}
    chosen = choose_layer(scored, scope)
    for split in SPLITS:
        copy_atomic(layer_folder(output, chosen, split) / STDLIST_NAME,
                    output / split / STDLIST_NAME)

    record = results(hparams, encoder, upstream.source, scored, chosen, scope, ids,
                     groundtruth, settings, feature_seconds, device)
    write_results(hparams["results_file"], record)
    logger.info("QbE: layer %d chosen (dev MTWV %.4f); eval MTWV %.4f (%s trials). Wrote %s",
                chosen, record["best_dev"], record["test"], scope, hparams["results_file"])
    return record


# ---------------------------------------------------------------------- options
def match_settings(hparams, device="cpu"):
    """The DTW settings and the MTWV trial scope, checked before any audio is read.

    The distances and the DTW run on ``device``. On a GPU, TF32 matrix products are turned
    off (SpeechBrain turns them on): they would round the cosines to about three digits
    and make the scores depend on the hardware.
    """
    scope = hparams["mtwv_trials"]
    if scope not in TRIAL_SCOPES:
        raise OptionError(f"--mtwv_trials {scope!r}: use one of {', '.join(TRIAL_SCOPES)}")
    if int(hparams["min_query_frames"]) < 1:
        raise OptionError(f"--min_query_frames must be >= 1, got {hparams['min_query_frames']}")
    for key in ("dtw_batch_elements", "max_document_frames"):
        if int(hparams[key]) < 1:
            raise OptionError(f"--{key} must be >= 1, got {hparams[key]}")
    settings = MatchSettings(
        dist_method=hparams["dist_method"],
        minmax_norm=bool(hparams["minmax_norm"]),
        feature_normalization=bool(hparams["feature_normalization"]),
        min_query_frames=int(hparams["min_query_frames"]),
        batch_elements=int(hparams["dtw_batch_elements"]),
        max_document_frames=int(hparams["max_document_frames"]),
        device=str(device),
    )
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return settings, scope


def chosen_layers(value, num_states):
    """The hidden states to score: ``all`` or a list of indices in ``[0, num_states)``.

    Example
    -------
    >>> chosen_layers("all", 3), chosen_layers([2, 0, 2], 3)
    ([0, 1, 2], [0, 2])
    """
    if value == "all":
        return list(range(num_states))
    values = [value] if isinstance(value, int) else value
    try:
        layers = sorted({int(v) for v in values})
    except (TypeError, ValueError):
        layers = None
    if not layers or any(not 0 <= layer < num_states for layer in layers):
        raise OptionError(f"--layers {value!r}: give 'all' or hidden-state indices from 0 to "
                          f"{num_states - 1} (this encoder has {num_states} states)")
    return layers


# ---------------------------------------------------------------------- features
def load_frames(hparams, manifest_folder, upstream, encoder, progressbar):
    """Every hidden state of the documents and both query sets, cached on disk.

    Returns ``({name: LayerFrames}, {name: ids in manifest order}, {item id: wav path},
    seconds)``; the seconds are those of the feature step of the first run in this
    folder (``features.json``; near 0 when the frame cache was there already), so that
    a resumed run reports the same.
    """
    cache = FrameCache(
        hparams["frame_cache_folder"],
        upstream,
        dtype=hparams["frame_cache_dtype"],
        max_disk_gb=hparams["frame_cache_max_gb"],
        batch_size=hparams["feature_batch_size"],
        encoder_hash=encoder["content_hash"],
    )
    tag = audio_pipeline_tag(hparams["gain_db"])
    start = time.time()
    frames, ids, wavs = {}, {}, {}
    for name, manifest in SPLIT_MANIFESTS.items():
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(str(manifest_folder / manifest))
        dataset.add_dynamic_item(audio_pipeline(hparams["gain_db"]))
        frames[name] = LayerFrames(cache.load(dataset, tag, progressbar=progressbar))
        ids[name] = list(dataset.data_ids)
        wavs.update({item: dataset.data[item]["wav"] for item in dataset.data_ids})
    record_path = Path(hparams["output_folder"]) / FEATURES_RECORD
    if not record_path.exists():
        write_json_atomic(record_path, {"seconds": round(time.time() - start, 3)})
    return frames, ids, wavs, json.loads(record_path.read_text(encoding="utf-8"))["seconds"]


def check_document_frames(documents, wavs):
    """A document too short for one encoder frame cannot be matched: name its file."""
    empty = [item for item in documents.ids if documents.num_frames(item) == 0]
    if empty:
        raise DataFileError(f"{wavs[empty[0]]}: too short for one encoder frame (under "
                            f"25 ms); {len(empty)} document(s) are, e.g. {empty[:3]}. "
                            "The QUESST documents are seconds long: check the corpus")


def read_prepared_groundtruth(manifest_folder):
    """``{split: GroundTruth}`` from the prepared ``groundtruth.json``."""
    with open(Path(manifest_folder) / GROUNDTRUTH_FILE, encoding="utf-8") as fin:
        return {split: GroundTruth.from_dict(record) for split, record in json.load(fin).items()}


# ---------------------------------------------------------------------- matching
def layer_folder(output, layer, split):
    return Path(output) / LAYERS_FOLDER / str(layer) / split


def score_layer(layer, frames, ids, groundtruth, settings, hparams, output):
    """``{split: {"match": match.json record, "twv": {scope: TWVResult}}}`` of one state.

    A split already matched (its ``match.json``, written after its stdlist) is read
    back; otherwise it is matched and written. Either way it is scored from the stdlist
    as written (scores rounded to four decimals, as the scorer reads them).
    """
    document_ids = ids["documents"]
    document_stats = None
    scored = {}
    for split in SPLITS:
        folder = layer_folder(output, layer, split)
        stdlist, record_path = folder / STDLIST_NAME, folder / MATCH_RECORD
        key = match_key(frames, split, layer, settings, hparams)
        record = None
        if record_path.exists() and stdlist.exists():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            if record.get("key") != key:
                logger.warning("layer %d %s: %s was made from other frames or settings; "
                               "matching again", layer, split, record_path)
                record = None
        if record is not None:
            detections = read_stdlist(stdlist)
            logger.info("layer %d %s: already matched, read from %s", layer, split, folder)
        else:
            if settings.feature_normalization and document_stats is None:
                document_stats = layer_statistics(frames["documents"], document_ids, layer)
            match = match_split(frames[split], ids[split], frames["documents"],
                                document_ids, layer, settings, document_stats)
            detections = write_stdlist(stdlist, match.score_rows(), hparams["yes_threshold"])
            record = {"key": key, "layer": layer, "split": split,
                      "queries": len(match.query_ids),
                      "documents": len(match.document_ids), "skipped": match.skipped,
                      "seconds": round(match.seconds, 3)}
            write_json_atomic(record_path, record)
            logger.info("layer %d %s: %d queries x %d documents in %.1f s", layer, split,
                        record["queries"], record["documents"], match.seconds)
        scored[split] = {"match": record,
                         "twv": split_twv(detections, groundtruth[split], ids[split],
                                          document_ids, hparams)}
    return scored


def match_key(frames, split, layer, settings, hparams):
    """What a split's stdlist was made from: the frame caches read (their folders name the
    encoder's features hash, the manifest hash and the dtype), the layer, the matching
    settings and the device (float32 sums differ between devices). A ``match.json`` with
    another key is never reused."""
    caches = {name: "/".join(Path(frames[name].features.folder).parts[-2:])
              for name in ("documents", split)}
    return {"frame_caches": caches, "layer": int(layer), **settings.identity(),
            "device": str(settings.device), "yes_threshold": float(hparams["yes_threshold"])}


def split_twv(detections, truth, query_ids, document_ids, hparams):
    """``{scope: TWVResult}`` for both trial scopes."""
    beta = twv_beta(hparams["p_target"], hparams["c_fa"], hparams["c_miss"])
    results = {}
    for scope in TRIAL_SCOPES:
        queries, documents = trial_lists(scope, truth, query_ids, document_ids)
        try:
            results[scope] = term_weighted_value(detections, truth.occurrences, queries,
                                                 documents, default_score=hparams["default_score"],
                                                 beta=beta)
        except ValueError as err:  # no query occurs in any document
            raise DataFileError(f"{truth.files.get('rttm', 'the ground truth')}: {err} "
                                f"({scope} trials); check the ground-truth folder and "
                                "--language") from None
    return results


# MTWVs that differ only in the last bits (the order of a float sum) are a tie.
MTWV_DIGITS = 10


def choose_layer(scored, scope):
    """The state with the best dev MTWV in ``scope``; a tie goes to the lowest index."""
    return max(scored, key=lambda layer: (
        round(scored[layer]["dev"]["twv"][scope].mtwv, MTWV_DIGITS), -layer))


def copy_atomic(source, target):
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


# ---------------------------------------------------------------------- results
def layer_entry(layer, scored, scope):
    entry = {"layer": layer}
    for split in SPLITS:
        twv = scored[split]["twv"]
        entry[f"{split}_mtwv"] = twv[scope].mtwv
        for name in TRIAL_SCOPES:
            entry[f"{split}_mtwv_{name}"] = twv[name].mtwv
        entry[f"{split}_atwv"] = twv[scope].atwv
        entry[f"{split}_threshold"] = twv[scope].threshold
    entry["twv"] = {split: {name: result.as_dict() for name, result in
                            scored[split]["twv"].items()} for split in SPLITS}
    entry["match_seconds"] = {split: scored[split]["match"]["seconds"] for split in SPLITS}
    return entry


def results(hparams, encoder, source, scored, chosen, scope, ids, groundtruth, settings,
            feature_seconds, device):
    """The results.json record (zero-shot: no fraction, seed or updates)."""
    best = scored[chosen]
    skipped = {split: best[split]["match"]["skipped"] for split in SPLITS}
    seconds = feature_seconds + sum(s[split]["match"]["seconds"]
                                    for s in scored.values() for split in SPLITS)
    test_scores = {
        "mtwv": best["eval"]["twv"][scope].mtwv,
        "atwv": best["eval"]["twv"][scope].atwv,
        **{f"mtwv_{name}": best["eval"]["twv"][name].mtwv for name in TRIAL_SCOPES},
    }
    return results_record(
        task=hparams["task"],
        encoder=encoder,
        provenance=read_provenance(source),
        strategy=hparams["strategy"],
        profile=hparams["run_profile"],
        profile_reason=hparams.get("profile_reason"),
        settings=hparams.get("run_identity"),
        zero_shot=True,
        fraction=None,
        seed=None,
        metric=hparams["metric"],
        dev_metric=hparams["dev_metric"],
        test_scores=test_scores,
        dev_curve=[],
        best_step=None,
        best_dev=best["dev"]["twv"][scope].mtwv,
        steps=None,
        max_steps=None,
        eval_every_steps=None,
        wall_seconds=seconds,
        device=describe_device(device),
        chosen_layer=chosen,
        layer_choice=f"best dev MTWV ({scope} trials); a tie goes to the lowest state",
        mtwv_trials=scope,
        layers=[layer_entry(layer, scored[layer], scope) for layer in sorted(scored)],
        skipped_queries={split: {reason: len(ids) for reason, ids in skipped[split].items()}
                         for split in SPLITS},
        skipped_query_ids=skipped,
        items={
            "documents": len(ids["documents"]),
            **{f"{split}_queries": len(ids[split]) for split in SPLITS},
            "groundtruth": {split: {"documents": len(groundtruth[split].documents),
                                    "queries": len(groundtruth[split].queries),
                                    "unlisted_occurrences": groundtruth[split].unlisted}
                            for split in SPLITS},
        },
        language=hparams["language"],
        dtw={**settings.identity(), "device": settings.device, "step_pattern": "asymmetric",
             "open_begin": True, "open_end": True, "normalization": "cost / query frames",
             "score": "-cost",
             "score_normalization": "per-query z-score over the documents",
             "yes_threshold": hparams["yes_threshold"]},
        twv_constants={"p_target": hparams["p_target"], "c_fa": hparams["c_fa"],
                       "c_miss": hparams["c_miss"],
                       "beta": twv_beta(hparams["p_target"], hparams["c_fa"], hparams["c_miss"]),
                       "default_score": hparams["default_score"]},
        feature_seconds=feature_seconds,
        stdlists={split: str(Path(hparams["output_folder"]) / split / STDLIST_NAME)
                  for split in SPLITS},
    )
