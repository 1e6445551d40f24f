"""Toy cells for the grid runner's tests: tiny scripts in place of the recipes.

``toy_programs(folder)`` writes a toy recipe, a toy analysis script and toy yamls into
``folder`` and returns the ``Programs`` that run them. The toy recipe behaves as its yaml
and command line say (``sleep``, ``fail``, ``old_record``: a results.json without
``manifest_folder``), records when it ran in ``<output_root>/events`` and writes what a
real run writes last: ``results.json`` (with ``manifest_folder`` and ``settings``) or,
for a rewiring yaml, ``upstream/rewiring.json`` beside a toy encoder.

Run as a script, it is a grid runner on toy cells (the kill test's subprocess)::

    python tests/grid_toys.py <toy folder> '<json of toy_grid keyword arguments>' [jobs]
"""

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rewire_lobes.grid.cells import Program, Programs, make_grid  # noqa: E402
from rewire_lobes.grid.options import parse_pass_through  # noqa: E402

TOY_RECIPE = r'''
import json, os, sys, time
from pathlib import Path

yaml_file, tokens = sys.argv[1], sys.argv[2:]
settings = json.loads(Path(yaml_file).read_text())  # toy yamls are JSON, a subset of YAML
args = dict(zip(tokens[0::2], tokens[1::2]))
settings.update({key[2:]: value for key, value in args.items()})
root, folder = Path(settings["output_root"]), Path(settings["output_folder"])
start = time.time()
print("toy", settings.get("task") or settings["strategy"], "in", folder, flush=True)
time.sleep(float(settings.get("sleep", 0)))
if str(settings.get("fail", "0")) == "1":
    print("toy failure: told to fail", flush=True)
    sys.exit(3)
environment = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
with open(root / "events", "a") as out:  # one short line per write: appends do not mix
    out.write(json.dumps({"folder": str(folder), "start": start, "end": time.time(),
                          "args": tokens, **environment}) + "\n")
folder.mkdir(parents=True, exist_ok=True)
if "task" in settings:
    manifest = root / "manifests" / settings["task"]
    manifest.mkdir(parents=True, exist_ok=True)
    record = {"task": settings["task"], "manifest_folder": str(manifest),
              "settings": {k: settings[k] for k in ("label_columns", "gain_db") if k in settings}}
    if str(settings.get("old_record", "0")) == "1":  # as an older recipe wrote it
        del record["manifest_folder"]
    (folder / "results.json").write_text(json.dumps(record))
else:
    encoder = folder / "upstream"
    encoder.mkdir(exist_ok=True)
    (encoder / "config.json").write_text(json.dumps({"rewired": tokens}))
    (encoder / "rewiring_subset.txt").write_text(f"{settings['strategy']}-utt\nshared-utt\n")
    import hashlib
    digest = hashlib.sha256((encoder / "rewiring_subset.txt").read_bytes()).hexdigest()
    (encoder / "rewiring.json").write_text(json.dumps({
        "strategy": settings["strategy"],
        "data": {"subset_file": "rewiring_subset.txt", "subset_sha256": digest}}))
'''

TOY_ANALYSIS = r'''
import hashlib, json, sys
from pathlib import Path

tokens = sys.argv[1:]
args, key = {}, None
for token in tokens:
    if token.startswith("--"):
        key = token[2:]
        args[key] = []
    else:
        args[key].append(token)
encoder = hashlib.sha256(args["upstream_source"][0].encode()).hexdigest()[:8]
out = Path(args["output_root"][0]) / "analysis" / args["task"][0] / encoder
out.mkdir(parents=True, exist_ok=True)
(out / "representations.json").write_text(json.dumps({"args": tokens}))
with open(Path(args["output_root"][0]) / "events", "a") as events:
    events.write(json.dumps({"folder": str(out), "args": tokens}) + "\n")
'''

# Top-level keys of each toy yaml (the pass-through filter reads them).
TOY_TASKS = {
    "KS": {"task": "KS", "lr": 0.0001, "max_steps": 100, "label_columns": ["label"],
           "gain_db": -3.0},
    "IC": {"task": "IC", "lr": 0.0001, "label_columns": ["action", "object"]},
    "ASR": {"task": "ASR", "lr": 0.0001, "exclude_utterances": "auto", "gain_db": 0.0},
    "QbE": {"task": "QbE"},
}
TOY_STRATEGIES = ("twin", "mixed")
COMMON = {"sleep": 0, "fail": 0, "old_record": 0, "output_root": "results",
          "output_folder": "x", "upstream_source": "assets/encoder", "seed": 1986}


def toy_programs(folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy_recipe.py").write_text(TOY_RECIPE)
    (folder / "toy_analysis.py").write_text(TOY_ANALYSIS)
    tasks, rewiring = {}, {}
    for task, keys in TOY_TASKS.items():
        extra = {} if task == "QbE" else {"fraction": 0.01}
        (folder / f"{task}.yaml").write_text(json.dumps({**COMMON, **extra, **keys}))
        tasks[task] = Program(str(folder / "toy_recipe.py"), str(folder / f"{task}.yaml"))
    for strategy in TOY_STRATEGIES:
        (folder / f"{strategy}.yaml").write_text(json.dumps(
            {**COMMON, "strategy": strategy, "max_steps": 20}))
        rewiring[strategy] = Program(str(folder / "toy_recipe.py"),
                                     str(folder / f"{strategy}.yaml"))
    return Programs(
        tasks=tasks, rewiring=rewiring, analysis=Program(str(folder / "toy_analysis.py")),
        analysis_output=toy_analysis_output,
        python=sys.executable, root=folder,
    )


def toy_analysis_output(output_root, task, encoder):
    digest = hashlib.sha256(str(encoder).encode()).hexdigest()[:8]
    return Path(output_root) / "analysis" / task / digest / "representations.json"


def toy_encoder(folder):
    """A baseline 'encoder': a directory with a config.json (fingerprinted like a real one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"toy": folder.name}))
    return str(folder)


def toy_grid(folder, output_root, extra=(), **kwargs):
    """A checked grid of toy cells; ``extra`` holds pass-through tokens."""
    settings = {"tasks": ["KS"], "strategies": ["baseline"], "fractions": ["0.1"],
                "seeds": ["1986"], "upstream_source": toy_encoder(Path(folder) / "encoder")}
    settings.update(kwargs)
    return make_grid(output_root=output_root, programs=toy_programs(folder),
                     options=parse_pass_through(list(extra), [*TOY_TASKS, "rewire"]),
                     **settings)


def events(output_root):
    path = Path(output_root) / "events"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


if __name__ == "__main__":
    from rewire_lobes.grid.launchers import LocalLauncher
    from rewire_lobes.grid.runner import GridRunner

    toy_folder, settings = sys.argv[1], json.loads(sys.argv[2])
    grid = toy_grid(toy_folder, **settings)
    sys.exit(GridRunner(grid, LocalLauncher(), jobs=int(sys.argv[3]) if len(sys.argv) > 3
                        else 1).run())
