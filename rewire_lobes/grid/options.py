"""The grid's pass-through options: ``--key value`` pairs handed on to the recipes.

Every pair the grid itself does not know goes to each recipe and rewiring run whose yaml
has ``key`` at its top level (``--max_steps 20``: every run whose yaml has ``max_steps``).
A scope narrows it: ``--KS.lr 0.001`` reaches only the KS runs, ``--rewire.max_steps 50``
only the rewiring runs, and a scoped value beats a plain one. SpeechBrain's run options
that take a value (``--device``, ``--precision`` ...) reach every recipe and rewiring run.
A key that no yaml of the grid has is refused before anything runs, as a recipe refuses
it (``rewire_lobes.runs.cli.check_known_keys``).
"""

import dataclasses
import difflib
import hashlib
import json
from functools import lru_cache
from pathlib import Path

from rewire_lobes.errors import OptionError

REWIRE_SCOPE = "rewire"
# Set by the grid for each cell: its own options (--fractions, --seeds ...) say them.
RESERVED = {
    "upstream_source": "--upstream_source (the baseline) or --encoder STRATEGY=DIR",
    "output_root": "--output_root",
    "output_folder": "nothing: the grid names every run folder",
    "fraction": "--fractions",
    "seed": "--seeds (downstream) or --rewire_seed",
    "strategy": "--strategies",
    "encoder_id": "nothing: it is the encoder's fingerprint",
}


@dataclasses.dataclass(frozen=True)
class PassThrough:
    """The pass-through pairs: ``plain`` for every run, ``scoped[scope]`` for one scope.

    Example
    -------
    >>> options = parse_pass_through(["--max_steps", "20", "--KS.lr=0.001"], ["KS", "rewire"])
    >>> options.plain, options.scoped
    ({'max_steps': '20'}, {'KS': {'lr': '0.001'}})
    """

    plain: dict = dataclasses.field(default_factory=dict)
    scoped: dict = dataclasses.field(default_factory=dict)

    def for_run(self, scope, yaml_keys):
        """``{key: value}`` of the pairs that reach a run of ``scope`` whose yaml has
        ``yaml_keys``, sorted by key."""
        chosen = {key: value for key, value in self.plain.items()
                  if key in yaml_keys or key in run_option_names()}
        chosen.update(self.scoped.get(scope, {}))
        return dict(sorted(chosen.items()))


def parse_pass_through(tokens, scopes):
    """``--key value`` / ``--key=value`` / ``--SCOPE.key value`` tokens -> :class:`PassThrough`.

    Arguments
    ---------
    tokens : list of str
        What the grid's own parser left over.
    scopes : iterable of str
        The scope names that may prefix a key (the task names and ``rewire``).
    """
    scopes = set(scopes)
    plain, scoped = {}, {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or token == "--":
            raise OptionError(f"{token!r}: expected a --key value pair")
        name, equals, value = token[2:].partition("=")
        if not equals:
            if not tokens or tokens[0].startswith("--"):
                raise OptionError(f"--{name} needs a value (--{name} VALUE)")
            value = tokens.pop(0)
        scope, dot, key = name.rpartition(".")
        if dot and scope not in scopes:
            raise OptionError(f"--{name}: '{scope}' is not a scope (one of "
                              f"{', '.join(sorted(scopes))})")
        if key in RESERVED:
            raise OptionError(f"--{name}: the grid sets {key} itself; use {RESERVED[key]}")
        target = scoped.setdefault(scope, {}) if dot else plain
        if key in target:
            raise OptionError(f"--{name} is given twice")
        target[key] = value
    return PassThrough(plain, scoped)


def check_pass_through(options, yaml_keys_by_scope):
    """Every pair must reach some run of the grid; raises :class:`OptionError` otherwise.

    Arguments
    ---------
    options : PassThrough
    yaml_keys_by_scope : dict
        ``{scope: (yaml file name, set of its top-level keys)}`` of the grid's runs.
    """
    every = set().union(*(keys for _, keys in yaml_keys_by_scope.values()))
    every |= run_option_names()
    for key in options.plain:
        if key not in every:
            raise OptionError(f"--{key} is not an option of any recipe of this grid "
                              f"({', '.join(name for name, _ in yaml_keys_by_scope.values())})"
                              f"{_hint(key, every)}")
    for scope, pairs in options.scoped.items():
        if scope not in yaml_keys_by_scope:
            raise OptionError(f"--{scope}.{next(iter(pairs))}: this grid has no {scope} run")
        name, keys = yaml_keys_by_scope[scope]
        for key in pairs:
            if key not in keys | run_option_names():
                raise OptionError(f"--{scope}.{key}: {key} is not an option of {name}"
                                  f"{_hint(key, keys)}")


def _hint(key, known):
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean --{close[0]}?)" if close else ""


def options_digest(pairs):
    """The first 8 hex digits of the sha256 of ``{key: value}`` pairs (a folder suffix).

    Example
    -------
    >>> options_digest({"max_steps": "20"}) == options_digest({"max_steps": "20"})
    True
    >>> options_digest({"max_steps": "20"}) == options_digest({"max_steps": "50"})
    False
    """
    text = json.dumps(sorted(pairs.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def as_arguments(pairs):
    """``{key: value}`` -> ``["--key", "value", ...]``."""
    return [item for key, value in pairs.items() for item in (f"--{key}", str(value))]


@lru_cache(maxsize=64)
def yaml_keys(path):
    """The top-level keys of a recipe yaml, read as ``check_known_keys`` reads them."""
    import ruamel.yaml

    with open(path, encoding="utf-8") as fin:
        loaded = ruamel.yaml.YAML().load(fin)
    return frozenset(str(key) for key in (loaded or {}))


@lru_cache(maxsize=1)
def run_option_names():
    """SpeechBrain's run options that take a value (every recipe accepts them).

    Flags (``--debug``, ``--noprogressbar``) are left out: a flag has no value to pair.
    """
    from speechbrain.utils.run_opts import RunOptions

    return frozenset(
        field.name for field in dataclasses.fields(RunOptions)
        if not isinstance(field.default, bool)
        and field.name not in ("param_file", "overridden_args", "tqdm_barcolor")
    )


def yaml_path(root, hparams):
    """``hparams`` as a path: as given when absolute, else under ``root``."""
    path = Path(hparams)
    return path if path.is_absolute() else Path(root) / path
