"""Run identity: a run folder belongs to one configuration, and says so.

SpeechBrain resumes silently from whatever checkpoint its folder holds (pitfall C.14).
Each recipe therefore records the settings that define its run in
``<output_folder>/run_identity.json`` before anything else is written there, and refuses
a folder whose record differs, naming the settings that differ. A rerun of the same
configuration resumes; another one never continues an old run.
"""

import json
from pathlib import Path

from rewire_lobes.errors import UserError
from rewire_lobes.io_utils import write_json_atomic

IDENTITY_FILE = "run_identity.json"


class RunFolderError(UserError, RuntimeError):
    """The output folder holds a run with other settings."""


def json_value(value):
    """``value`` as it reads back from JSON (tuples become lists, paths strings ...)."""
    return json.loads(json.dumps(value, default=str))


def run_identity(hparams, keys, extra=None):
    """``{key: hparams[key]}`` for ``keys``, plus ``extra``, as JSON values."""
    missing = [key for key in keys if key not in hparams]
    if missing:
        raise KeyError(f"run identity keys {missing} are not in the yaml")
    identity = {key: hparams[key] for key in keys}
    identity.update(extra or {})
    return json_value(identity)


def differences(previous, identity):
    """``["key: old -> new", ...]`` for every setting that differs."""
    keys = sorted(set(previous) | set(identity))
    return [
        f"{key}: {previous.get(key, '(unset)')!r} -> {identity.get(key, '(unset)')!r}"
        for key in keys if previous.get(key) != identity.get(key)
    ]


def claim_run_folder(folder, identity):
    """Records ``identity`` in ``folder``; raises :class:`RunFolderError` if it holds another.

    A folder that holds files but no identity record is refused too: whatever run made it
    cannot be checked.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> claim_run_folder(folder, {"lr": 0.001})
    >>> claim_run_folder(folder, {"lr": 0.001})  # the same run: resumes
    >>> try:
    ...     claim_run_folder(folder, {"lr": 0.5})
    ... except RunFolderError as err:
    ...     print("lr: 0.001 -> 0.5" in str(err))
    True
    """
    path = Path(folder) / IDENTITY_FILE
    identity = json_value(identity)
    if path.exists():
        changed = differences(json.loads(path.read_text(encoding="utf-8")), identity)
        if changed:
            raise RunFolderError(
                f"{folder} holds a run with other settings ({'; '.join(changed)}); it would "
                "be silently continued. Pass another --output_folder, or delete the folder."
            )
        return
    # Empty folders do not count: loading the yaml already creates the checkpoint folder.
    if path.parent.is_dir() and any(item.is_file() for item in path.parent.rglob("*")):
        raise RunFolderError(
            f"{folder} already holds files but no {IDENTITY_FILE} (a run made before run "
            "identities were recorded, or another program's files): its settings cannot be "
            "checked, so it is not continued. Pass another --output_folder, or delete the "
            "folder."
        )
    write_json_atomic(path, identity)
