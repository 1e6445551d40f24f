"""What the recipe tests share: reading a run folder, and killing a run mid-save.

Each recipe test starts its recipe as a subprocess, as a user does; these helpers read
what the run left (results.json, the training log, the checkpoints) and kill a run while
it writes a checkpoint, to check that the rerun resumes to the uninterrupted result.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def printed(done):
    """What a finished run printed (SpeechBrain logs to stdout when it is not a terminal)."""
    return done.stdout + done.stderr


def results_of(folder):
    return json.loads((Path(folder) / "results.json").read_text())


def round_lines(folder):
    return [line for line in (Path(folder) / "train_log.txt").read_text().splitlines()
            if line.startswith("round:")]


def latest_checkpoint(folder):
    """The folder of the checkpoint with the most updates in ``<folder>/save``."""
    import yaml

    checkpoints = {}
    for meta in (Path(folder) / "save").glob("CKPT+*/CKPT.yaml"):
        checkpoints[yaml.safe_load(meta.read_text())["step"]] = meta.parent
    return checkpoints[max(checkpoints)]


def head_weights(folder, modules=("head", "featurizer")):
    """The tensors of the trained ``modules`` at the latest checkpoint."""
    checkpoint = latest_checkpoint(folder)
    weights = {}
    for name in modules:
        state = torch.load(checkpoint / f"{name}.ckpt", map_location="cpu")
        weights.update({f"{name}.{key}": value for key, value in state.items()})
    return weights


def assert_same_training(first, second, atol=0.0):
    a, b = head_weights(first), head_weights(second)
    assert a.keys() == b.keys()
    for key in a:
        if atol == 0.0:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0.0, msg=key)


def checkpoint_folders(save_folder):
    """``{folder: names of its files}`` of the ``CKPT+*`` folders, made or being made."""
    try:
        folders = [entry.path for entry in os.scandir(save_folder)
                   if entry.name.startswith("CKPT+")]
    except FileNotFoundError:
        return {}
    return {Path(folder): set(os.listdir(folder)) for folder in folders}


def kill_during_second_checkpoint(command, save_folder, log, timeout=300):
    """Starts ``command``; SIGKILLs its process group as soon as a second ``CKPT+*``
    folder holds a file, polled tightly: the kill lands while that checkpoint is written
    (after SpeechBrain's own Checkpointer has written CKPT.yaml, which it does first).
    Returns the killed process's exit status."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    try:
        while sum(bool(files) for files in checkpoint_folders(save_folder).values()) < 2:
            assert process.poll() is None, Path(log).read_text()[-3000:]
            assert time.time() < deadline, "no second checkpoint appeared"
            time.sleep(0.0002)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    return process.returncode


def assert_only_whole_checkpoints(folder, reference):
    """What a killed run left in ``<folder>/save`` is either a whole checkpoint (the same
    files as the reference run's) or no checkpoint at all (no ``CKPT.yaml``)."""
    whole = {path.name for path in latest_checkpoint(reference).iterdir()}
    for checkpoint, files in checkpoint_folders(Path(folder) / "save").items():
        if "CKPT.yaml" in files:
            assert files == whole, checkpoint
