"""The start of every recipe: command line, encoder, profile, strategy, run identity.

A run folder is ``<output_root>/<task>/<encoder_id>/<strategy>/fraction<f>_seed<s>``,
where ``encoder_id`` is the encoder's name plus a fingerprint of its files. Two
different encoders (say two rewired encoders both exported as ``.../encoder``) thus
never share a folder, and SpeechBrain's silent resume (pitfall C.14) can only continue
a run of the same configuration.

The yaml cannot compute the fingerprint itself (HyperPyYAML substitutes ``!ref`` strings
before it calls ``!apply`` functions), so ``train.py`` calls :func:`run_overrides`
before loading the yaml: it reads ``upstream_source`` and ``output_root`` from the yaml
and the command line, resolves the embedded default, and returns the overrides with
``upstream_source`` (resolved), ``encoder_id``, the profile's values and the strategy
filled in. :func:`load_recipe_hparams` then claims the run folder for the run's identity
(``rewire_lobes.runs.identity``), and :func:`user_errors` turns a user's mistake into a
one-line message.

Profiles: ``embedded`` (the embedded encoder or the mini corpus) applies the yaml's
``embedded_profile`` values; ``paper`` (anything else) keeps the yaml's own values, which
are the paper's and SUPERB's. ``--run_profile`` overrides the choice.
"""

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import io
import logging
import shutil
import sys
from pathlib import Path

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main
from speechbrain.utils.run_opts import RunOptions

from rewire_lobes.data.fractions import check_fraction
from rewire_lobes.downstream.schedule import paper_step_budget
from rewire_lobes.errors import OptionError, UserError
from rewire_lobes.runs.defaults import choose_profile, repo_path, resolve_upstream_source
from rewire_lobes.runs.identity import claim_run_folder, run_identity
from rewire_lobes.runs.provenance import resolve_strategy
from rewire_lobes.upstream.encoder import encoder_tag

logger = logging.getLogger(__name__)

ENCODER_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def encoder_files(source):
    """The config and weight files of an encoder directory, sorted by name."""
    return sorted(
        f for f in Path(source).iterdir()
        if f.is_file() and (f.name in ENCODER_FILES or f.suffix in WEIGHT_SUFFIXES)
    )


def encoder_fingerprint(source):
    """sha256 of an encoder directory's config and weight files (or of a hub id).

    A recipe asks twice (for the run folder's name and for the run identity), and a Large
    encoder's weights take seconds to read: the digest is kept per file names, sizes and
    modification times, so a changed file is read again.
    """
    path = Path(source)
    if not path.is_dir():
        return hashlib.sha256(str(source).encode()).hexdigest()
    stats = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in encoder_files(path))
    return _files_digest(str(path.resolve()), stats)


@functools.lru_cache(maxsize=16)
def _files_digest(folder, stats, chunk=1 << 22):
    digest = hashlib.sha256()
    for name, _, _ in stats:
        digest.update(f"{name}\0".encode())
        with open(Path(folder) / name, "rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def encoder_id(source):
    """``<name>-<fingerprint[:8]>``, e.g. ``wav2vec2-large-lv60-1a2b3c4d``."""
    return f"{encoder_tag(source)}-{encoder_fingerprint(source)[:8]}"


def _plain(value):
    """A scalar yaml value, or None for tagged values such as ``!ref``."""
    return value if isinstance(value, (str, int, float)) else None


def check_known_keys(hparams_file, defaults, given):
    """Every override must name a key of the yaml (HyperPyYAML's own error is a traceback)."""
    for key in given:
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean --{close[0]}?)" if close else ""
            raise OptionError(f"--{key} is not an option of {hparams_file}{hint}")


def check_flags_have_no_value(argv):
    """SpeechBrain's boolean run options are flags (``--compile``, not ``--compile True``).
    Its parser joins a word given to one into the option before it (``--max_steps 4
    --compile True`` runs with ``max_steps: 4 True``), so such a word is refused here."""
    flags = {f.name for f in dataclasses.fields(RunOptions) if f.type is bool}
    for option, following in zip(argv, argv[1:]):
        if option.startswith("--") and option[2:] in flags and not following.startswith("--"):
            raise OptionError(f"{option} is a flag and takes no value, got {following!r}: "
                              f"write {option} alone")


def load_overrides(overrides):
    """The command line's overrides as a mapping."""
    try:
        given = ruamel.yaml.YAML().load(overrides) if overrides else None
    except ruamel.yaml.YAMLError:
        raise OptionError(f"cannot read the command line's options: {overrides!r} (every "
                          "value needs an --option before it)") from None
    if given is not None and not isinstance(given, dict):
        raise OptionError(f"a value without an --option on the command line: {given!r}")
    return dict(given) if given is not None else {}


def apply_profile(defaults, given, value):
    """Chooses the profile and fills in the values it changes that the user did not pass.

    ``embedded``: the yaml's ``embedded_profile`` mapping (short budgets for the mini corpus
    and the small encoder). ``paper``: the yaml's own values, and for a ``max_steps: null``
    the paper's Table 3 budget of the task at the fraction.
    """
    profile, _ = choose_profile(value("run_profile"), given["upstream_source"],
                                value("data_folder"))
    given["run_profile"] = profile
    if profile == "embedded":
        for key, setting in (defaults.get("embedded_profile") or {}).items():
            if key not in given:
                given[key] = setting
    if "max_steps" in defaults and value("max_steps") is None:
        fraction = check_fraction(value("fraction"))
        budget = paper_step_budget(value("task"), fraction)
        if budget is None:
            raise OptionError(
                f"the paper gives no update budget for {value('task')} at fraction {fraction}: "
                "pass --max_steps"
            )
        given["max_steps"] = budget


def run_overrides(hparams_file, overrides, derived=None):
    """The command-line overrides plus what the yaml cannot compute itself.

    Fills in ``upstream_source`` (resolved), ``encoder_id``, ``profile`` (and the values
    the embedded profile changes), ``max_steps`` (the paper's budget when the yaml leaves it
    null) and, when the yaml's ``strategy`` is ``auto``, the strategy read from the
    encoder's ``rewiring.json``.

    Arguments
    ---------
    hparams_file : str
        The recipe yaml; it must define ``upstream_source``, ``output_root`` and
        ``encoder_id``.
    overrides : str
        The yaml overrides string from ``speechbrain.parse_arguments``.

    derived : callable, optional
        ``derived(defaults, given) -> dict`` of further values the recipe computes from the
        yaml's and the command line's (e.g. a run folder name), filled in before the
        encoder and the profile are resolved.

    Returns
    -------
    str : overrides to pass to ``load_hyperpyyaml`` and ``create_experiment_directory``.
    """
    yaml = ruamel.yaml.YAML()
    with open(hparams_file, encoding="utf-8") as fin:
        defaults = yaml.load(fin)
    given = load_overrides(overrides)
    check_known_keys(hparams_file, defaults, given)

    def value(key):
        return _plain(given[key]) if key in given else _plain(defaults.get(key))

    if "fraction" in defaults:
        check_fraction(value("fraction"))  # before anything is loaded or written
    if derived is not None:  # first: the profile may depend on what it computes
        given.update(derived(defaults, given))

    fallback_folder = Path(str(value("output_root") or "results"))
    source = value("upstream_source")
    if source is None:
        raise OptionError(f"{hparams_file}: upstream_source must be a plain path or hub id")
    # The fallback encoder (if needed) is written once, on the main process.
    resolved = run_on_main(resolve_upstream_source, args=[source, fallback_folder])

    given["upstream_source"] = resolved
    if "encoder_id" not in given:
        given["encoder_id"] = encoder_id(resolved)
    if "run_profile" in defaults:
        apply_profile(defaults, given, value)
    if defaults.get("strategy") == "auto":
        given["strategy"] = resolve_strategy(given.get("strategy"), resolved)
    elif "strategy" in given and given["strategy"] != defaults.get("strategy"):
        # A rewiring yaml is its strategy: its update count and comments belong to it.
        raise OptionError(
            f"--strategy {given['strategy']}: {hparams_file} is the "
            f"'{defaults.get('strategy')}' recipe; use hparams/{given['strategy']}.yaml instead"
        )
    text = io.StringIO()
    yaml.dump(given, text)
    return text.getvalue()


def parse_arguments(argv):
    """``speechbrain.parse_arguments``, with ``--optimizer_step_limit`` read as an integer
    and no value after a flag.

    SpeechBrain 1.1.2 gives no type to run options whose default is None, so the limit
    would arrive as a string and the first comparison with the update count would fail.
    """
    check_flags_have_no_value(argv)
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    limit = run_opts["optimizer_step_limit"]
    if isinstance(limit, str):
        try:
            run_opts = dataclasses.replace(run_opts, optimizer_step_limit=int(limit))
        except ValueError:
            raise OptionError(
                f"--optimizer_step_limit must be a whole number of updates, got {limit!r}"
            ) from None
    return hparams_file, run_opts, overrides


def run_option(hparams, run_opts, name, default):
    """A run option as the Brain will see it: the command line, else the yaml, else default."""
    if name in getattr(run_opts, "overridden_args", ()):
        return run_opts[name]
    return hparams.get(name, default)


def standard_identity(hparams, run_opts):
    """What every run's identity holds besides its yaml keys."""
    extra = {
        "encoder_fingerprint": encoder_fingerprint(hparams["upstream_source"]),
        "grad_accumulation_factor": int(run_option(hparams, run_opts,
                                                   "grad_accumulation_factor", 1)),
        "precision": run_option(hparams, run_opts, "precision", "fp32"),
        # A run option too: --max_grad_norm on the command line beats the yaml's value.
        "max_grad_norm": float(run_option(hparams, run_opts, "max_grad_norm", 5.0)),
        "world_size": world_size(),
    }
    if "data_folder" in hparams:
        extra["data_folder"] = hparams["data_folder"]
    return extra


def world_size():
    if sb.utils.distributed.is_distributed_initialized():
        import torch.distributed

        return torch.distributed.get_world_size()
    return 1


def load_recipe_hparams(argv, identity_extras=None, derived_overrides=None):
    """The start of every recipe: command line, DDP group, run identity, then the yaml.

    When the yaml lists ``run_identity_keys``, the run folder is claimed for those
    settings (plus the encoder's fingerprint, the data folder and the run options that
    change the numbers) before anything is written there; ``hparams["run_identity"]``
    holds the record for results files.

    Arguments
    ---------
    argv : list of str
        The command line after the script name.
    identity_extras : callable, optional
        ``identity_extras(hparams, run_opts) -> dict`` of further settings computed by the
        recipe.
    derived_overrides : callable, optional
        ``run_overrides``'s ``derived``: values computed from the yaml and the command line
        before the yaml is loaded.

    Returns
    -------
    ``(hparams, hparams_file, run_opts, overrides)``; ``overrides`` holds the resolved
    values, for ``create_experiment_directory``.
    """
    hparams_file, run_opts, overrides = parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    overrides = run_overrides(hparams_file, overrides, derived_overrides)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams.get("data_folder"):
        # Absolute, by the embedded rule's reading (working directory, then repository),
        # so that the prepare step, the profile and the identity agree wherever it runs.
        hparams["data_folder"] = str(repo_path(hparams["data_folder"]))
    if "run_profile" in hparams:
        chosen, reason = choose_profile("auto", hparams["upstream_source"],
                                        hparams.get("data_folder"))
        hparams["profile_reason"] = (reason if chosen == hparams["run_profile"]
                                  else "requested with --run_profile")
    keys = hparams.get("run_identity_keys")
    if keys:
        extra = standard_identity(hparams, run_opts)
        if identity_extras is not None:
            extra.update(identity_extras(hparams, run_opts))
        hparams["run_identity"] = run_identity(hparams, keys, extra)
        run_on_main(claim_run_folder, args=[hparams["output_folder"], hparams["run_identity"]])
    return hparams, hparams_file, run_opts, overrides


def start_experiment(hparams, hparams_file, overrides):
    """``create_experiment_directory``, then the profile in the log, where it can be read.

    SpeechBrain archives the file of its caller in the run folder; the caller here is this
    module, so the recipe's own script (``__main__``) is archived in its place.
    """
    folder = Path(hparams["output_folder"])
    sb.create_experiment_directory(
        experiment_directory=str(folder),
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    script = getattr(sys.modules["__main__"], "__file__", None)
    if if_main_process() and script and Path(script).name != Path(__file__).name:
        (folder / Path(__file__).name).unlink(missing_ok=True)
        shutil.copy(script, folder)
    if "run_profile" in hparams:
        changes = ", ".join(f"{k}={v}" for k, v in (hparams.get("embedded_profile") or {}).items())
        logger.info("Profile: %s (%s)%s", hparams["run_profile"], hparams.get("profile_reason"),
                    f"; it changes {changes} unless given"
                    if hparams["run_profile"] == "embedded" and changes else "")


@contextlib.contextmanager
def user_errors():
    """A :class:`UserError` ends the recipe with its message on one line and status 2.

    Example
    -------
    >>> with user_errors():
    ...     raise OptionError("--fraction must be in (0, 1], got 0")
    Traceback (most recent call last):
     ...
    SystemExit: 2
    """
    try:
        yield
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
