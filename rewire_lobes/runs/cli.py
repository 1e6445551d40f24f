"""Run identity: which encoder a run uses, and the folder name that says so.

A run folder is ``<output_root>/<task>/<encoder_id>/<strategy>/fraction<f>_seed<s>``,
where ``encoder_id`` is the encoder's name plus a fingerprint of its files. Two
different encoders (say two rewired encoders both exported as ``.../encoder``) thus
never share a folder, and SpeechBrain's silent resume (pitfall C.14) can only continue
a run of the same configuration.

The yaml cannot compute the fingerprint itself (HyperPyYAML substitutes ``!ref`` strings
before it calls ``!apply`` functions), so ``train.py`` calls :func:`run_overrides`
before loading the yaml: it reads ``upstream_source`` and ``output_root`` from the yaml
and the command line, resolves the embedded default, and returns the overrides with
``upstream_source`` (resolved) and ``encoder_id`` filled in.
"""

import dataclasses
import hashlib
import io
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from rewire_lobes.runs.defaults import resolve_upstream_source
from rewire_lobes.upstream.encoder import encoder_tag

ENCODER_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def encoder_fingerprint(source, chunk=1 << 22):
    """sha256 of an encoder directory's config and weight files (or of a hub id)."""
    digest = hashlib.sha256()
    path = Path(source)
    if not path.is_dir():
        digest.update(str(source).encode())
        return digest.hexdigest()
    files = sorted(
        f for f in path.iterdir()
        if f.is_file() and (f.name in ENCODER_FILES or f.suffix in WEIGHT_SUFFIXES)
    )
    for file in files:
        digest.update(f"{file.name}\0".encode())
        with open(file, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def encoder_id(source):
    """``<name>-<fingerprint[:8]>``, e.g. ``wav2vec2-large-lv60-1a2b3c4d``."""
    return f"{encoder_tag(source)}-{encoder_fingerprint(source)[:8]}"


def _plain(value):
    """A scalar yaml value, or None for tagged values such as ``!ref``."""
    return value if isinstance(value, (str, int, float)) else None


def run_overrides(hparams_file, overrides):
    """The command-line overrides plus the resolved ``upstream_source`` and ``encoder_id``.

    Arguments
    ---------
    hparams_file : str
        The recipe yaml; it must define ``upstream_source``, ``output_root`` and
        ``encoder_id``.
    overrides : str
        The yaml overrides string from ``speechbrain.parse_arguments``.

    Returns
    -------
    str : overrides to pass to ``load_hyperpyyaml`` and ``create_experiment_directory``.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as fin:
        defaults = yaml.load(fin)
    given = yaml.load(overrides) if overrides else None
    given = given if given is not None else {}

    def value(key):
        return _plain(given[key]) if key in given else _plain(defaults.get(key))

    fallback_folder = Path(str(value("output_root") or "results"))
    source = value("upstream_source")
    if source is None:
        raise ValueError(f"{hparams_file}: upstream_source must be a plain path or hub id")
    # The fallback encoder (if needed) is written once, on the main process.
    resolved = run_on_main(resolve_upstream_source, args=[source, fallback_folder])

    given["upstream_source"] = resolved
    if "encoder_id" not in given:
        given["encoder_id"] = encoder_id(resolved)
    text = io.StringIO()
    yaml.dump(dict(given), text)
    return text.getvalue()


def parse_arguments(argv):
    """``speechbrain.parse_arguments``, with ``--optimizer_step_limit`` read as an integer.

    SpeechBrain 1.1.2 gives no type to run options whose default is None, so the limit
    would arrive as a string and the first comparison with the update count would fail.
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    limit = run_opts["optimizer_step_limit"]
    if isinstance(limit, str):
        try:
            run_opts = dataclasses.replace(run_opts, optimizer_step_limit=int(limit))
        except ValueError:
            raise SystemExit(
                f"--optimizer_step_limit must be a whole number of updates, got {limit!r}"
            ) from None
    return hparams_file, run_opts, overrides


def load_recipe_hparams(argv):
    """The start of every recipe: command line, DDP group, run identity, then the yaml.

    Returns
    -------
    ``(hparams, hparams_file, run_opts, overrides)``; ``overrides`` holds the resolved
    ``upstream_source`` and ``encoder_id``, for ``create_experiment_directory``.
    """
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    overrides = run_overrides(hparams_file, overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    return hparams, hparams_file, run_opts, overrides
