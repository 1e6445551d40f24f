"""The grid runner (rewire_lobes.grid, utils/run_grid.py), on toy cells (tests/grid_toys.py)
and once on a real tiny grid of the embedded default (slow)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grid_toys import events, toy_encoder, toy_grid

from rewire_lobes.errors import OptionError
from rewire_lobes.grid.launchers import LocalLauncher, SubmititLauncher
from rewire_lobes.grid.runner import ENCODER_FAILED, GridRunner, dry_run

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (ok|FAILED|reused) in \d+\.\d s")


def run_grid(grid, jobs=1, gpus=(), launcher=None):
    """Runs a grid in-process; returns its exit status and printed lines."""
    lines = []
    status = GridRunner(grid, launcher or LocalLauncher(), jobs=jobs, gpus=gpus,
                        out=lines.append).run()
    return status, lines


def statuses(lines):
    """``{cell name: status}`` from the progress lines."""
    found = {}
    for line in lines:
        match = re.match(r"^\[\d+/\d+\] (\S+): (.+?)(?: in [\d.]+ s)?(?: \(ETA .*\))?$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def summary(output_root):
    return json.loads((Path(output_root) / "grid" / "summary.json").read_text())


@pytest.fixture
def toys(tmp_path):
    """``make(**grid settings) -> grid`` of toy cells into ``tmp_path / "out"``."""
    def make(extra=(), **settings):
        return toy_grid(tmp_path / "toys", tmp_path / "out", extra=extra, **settings)

    make.output_root = tmp_path / "out"
    return make


# ---------------------------------------------------------------------------- cells
def test_cells_of_a_grid(toys):
    grid = toys(tasks=["KS", "IC", "QbE"], strategies=["baseline", "twin", "mixed"],
                fractions=["0.01", "0.1"], seeds=["1986", "1987"],
                lrs={"KS": "0.001,0.01"})
    runner = GridRunner(grid, LocalLauncher())
    runner.plan()
    cells = [entry.cell for entry in runner.progress.entries]
    rewiring = [c for c in cells if c.kind == "rewire"]
    assert sorted(c.strategy for c in rewiring) == ["mixed", "twin"]
    for strategy in grid.strategies:
        mine = [c for c in cells if c.kind == "downstream" and c.strategy == strategy]
        ks = [c for c in mine if c.task == "KS"]
        assert len(ks) == 2 * 2 * 2  # fractions x seeds x lrs
        assert len([c for c in mine if c.task == "IC"]) == 2 * 2
        qbe = [c for c in mine if c.task == "QbE"]
        assert len(qbe) == 1
        assert "--fraction" not in qbe[0].args and "--seed" not in qbe[0].args
        assert qbe[0].name.endswith(f"/{strategy}")
        assert {c.name.rsplit("_lr", 1)[1] for c in ks} == {"0.001", "0.01"}
        assert all(c.args[c.args.index("--lr") + 1] == c.lr for c in ks)
        analysis = [c for c in cells if c.kind == "analysis" and c.strategy == strategy]
        assert sorted(c.task for c in analysis) == ["IC", "KS"]  # QbE has none
        # A rewired encoder's cells wait for it; the baseline's are ready.
        assert all(c.placeholder == (strategy != "baseline") for c in mine)
    folders = [c.args[c.args.index("--output_folder") + 1] for c in cells if c.kind != "analysis"]
    assert len(set(folders)) == len(folders)


def test_a_task_can_have_its_own_fractions_and_seeds(toys):
    grid = toys(tasks=["KS", "IC", "QbE"], strategies=["baseline"],
                fractions=["0.01", "KS=0.5,1"], seeds=["1986", "KS=1,2,3"])
    runner = GridRunner(grid, LocalLauncher())
    runner.plan()
    runs = {(c.task, c.args[c.args.index("--fraction") + 1], c.args[c.args.index("--seed") + 1])
            for c in (e.cell for e in runner.progress.entries)
            if c.kind == "downstream" and c.task != "QbE"}
    assert runs == {("KS", f, s) for f in ("0.5", "1") for s in ("1", "2", "3")} | {
        ("IC", "0.01", "1986")}
    with pytest.raises(OptionError, match="SF is not in --tasks"):
        toys(tasks=["KS"], strategies=["baseline"], fractions=["SF=0.1"], seeds=["1986"])
    with pytest.raises(OptionError, match="no value for IC"):
        toys(tasks=["KS", "IC"], strategies=["baseline"], fractions=["KS=0.1"], seeds=["1986"])
    with pytest.raises(OptionError, match="not a whole number"):
        toys(tasks=["KS"], strategies=["baseline"], fractions=["0.1"], seeds=["KS=1,x"])


def test_analysis_only_for_the_chosen_tasks(toys):
    def analysed(**settings):
        runner = GridRunner(toys(tasks=["KS", "IC", "QbE"], strategies=["baseline"],
                                 fractions=["0.1"], seeds=["1986"], **settings), LocalLauncher())
        runner.plan()
        return sorted(e.cell.task for e in runner.progress.entries if e.cell.kind == "analysis")

    assert analysed() == ["IC", "KS"]
    assert analysed(analysis=["KS"]) == ["KS"]
    assert analysed(analysis=False) == []
    with pytest.raises(OptionError, match="--analysis_tasks QbE"):
        analysed(analysis=["QbE"])


def test_dry_run_prints_every_cell_and_runs_nothing(toys, capsys):
    grid = toys(tasks=["KS", "QbE"], strategies=["baseline", "mixed"])
    dry_run(grid)
    printed = capsys.readouterr().out
    assert printed.count("toy_recipe.py") == 1 + 2 * 2  # rewiring + 2 encoders x 2 tasks
    assert "<rewired-mixed>" in printed
    assert not events(toys.output_root)
    assert not (toys.output_root / "grid" / "summary.json").exists()


def test_pass_through_reaches_only_the_yamls_that_have_the_key(toys):
    grid = toys(tasks=["KS", "IC"], strategies=["baseline", "mixed"],
                extra=["--max_steps", "20", "--IC.lr", "0.5", "--rewire.max_steps", "50"])
    ks, = grid.downstream_cells("baseline", "KS", "enc")
    ic, = grid.downstream_cells("baseline", "IC", "enc")
    rewire = grid.rewiring_cell("mixed")
    assert ks.args[-2:] == ("--max_steps", "20")  # the toy IC yaml has no max_steps
    assert "--max_steps" not in ic.args and ic.args[-2:] == ("--lr", "0.5")
    assert rewire.args[-2:] == ("--max_steps", "50")  # the scoped value beats the plain one
    # The folder names the pass-through pairs that reach the run.
    plain, = toys(tasks=["KS"]).downstream_cells("baseline", "KS", "enc")
    assert plain.name.endswith("fraction0.1_seed1986")
    assert ks.name.startswith(plain.name + "_") and ks.name != plain.name
    other, = toys(tasks=["KS"], extra=["--max_steps", "30"]).downstream_cells(
        "baseline", "KS", "enc")
    assert other.name != ks.name


@pytest.mark.parametrize("extra, expected", [
    (["--max_step", "20"], "did you mean --max_steps"),
    (["--IC.max_steps", "20"], "max_steps is not an option of"),
    (["--ASR.lr", "0.1"], "no ASR run"),
    (["--rewire.max_steps", "5"], "no rewire run"),  # a grid of baselines rewires nothing
    (["--seed", "3"], "--seeds"),
    (["--max_steps"], "needs a value"),
    (["stray"], "expected a --key value pair"),
])
def test_a_pass_through_key_that_reaches_no_run_is_an_error(toys, extra, expected):
    with pytest.raises(OptionError, match=re.escape(expected)):
        toys(tasks=["KS", "IC"], extra=extra)


def test_run_grid_refuses_an_unknown_key_before_running_anything(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("run_grid", REPO / "utils" / "run_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as stopped:
        module.main(["--tasks", "KS", "--strategies", "baseline", "--output_root",
                     str(tmp_path), "--no_such_key", "1"])
    assert stopped.value.code == 2
    assert "error: --no_such_key is not an option of any recipe" in capsys.readouterr().err
    assert not (tmp_path / "grid").exists()


def test_given_encoder_must_be_rewired_with_its_strategy(toys, tmp_path):
    encoder = Path(toy_encoder(tmp_path / "rewired"))
    with pytest.raises(OptionError, match="rewiring.json is missing"):
        toys(strategies=["baseline", "mixed"], encoders={"mixed": str(encoder)})
    (encoder / "rewiring.json").write_text(json.dumps({"strategy": "twin"}))
    with pytest.raises(OptionError, match="made by 'twin', not 'mixed'"):
        toys(strategies=["baseline", "mixed"], encoders={"mixed": str(encoder)})
    grid = toys(strategies=["baseline", "twin"], encoders={"twin": str(encoder)})
    assert grid.rewired_here() == []
    cell, = grid.downstream_cells("twin", "KS", "enc")
    assert cell.args[cell.args.index("--upstream_source") + 1] == str(encoder.resolve())


def test_a_fine_tuned_encoder_is_one_more_strategy(toys, tmp_path):
    """A multi-task encoder (mtl.json) joins the grid with --encoder mtl=DIR; a strategy the
    grid cannot make itself needs one."""
    with pytest.raises(OptionError, match="needs its encoder: --encoder mtl=DIR"):
        toys(strategies=["baseline", "mtl"])
    encoder = Path(toy_encoder(tmp_path / "tuned"))
    (encoder / "mtl.json").write_text(json.dumps({"strategy": "mtl", "tasks": ["KS", "IC"]}))
    grid = toys(strategies=["baseline", "mtl"], encoders={"mtl": str(encoder)})
    assert grid.rewired_here() == []
    cell, = grid.downstream_cells("mtl", "KS", "enc")
    assert cell.args[cell.args.index("--upstream_source") + 1] == str(encoder.resolve())


# ---------------------------------------------------------------------------- running
def test_finished_cells_are_reused_and_changed_ones_run(toys):
    grid = toys(tasks=["KS", "IC"], fractions=["0.1", "1"])
    status, lines = run_grid(grid)
    assert status == 0
    first = statuses(lines)
    assert len(first) == 2 * 2 + 2 and set(first.values()) == {"ok"}  # + 2 analysis cells
    assert all(PROGRESS.match(line) for line in lines if line.startswith("["))
    ran = len(events(toys.output_root))

    status, lines = run_grid(toys(tasks=["KS", "IC"], fractions=["0.1", "1"]))
    assert status == 0 and set(statuses(lines).values()) == {"reused"}
    assert len(events(toys.output_root)) == ran  # nothing ran

    # Other settings for KS: its runs run again; IC's are reused, and so are the analyses
    # (the same encoder on the same manifest, with the same label columns and gain).
    status, lines = run_grid(toys(tasks=["KS", "IC"], fractions=["0.1", "1"],
                                  extra=["--KS.max_steps", "7"]))
    again = statuses(lines)
    assert sorted(n for n, s in again.items() if s == "ok") == sorted(
        n for n in again if n.startswith("KS/") and not n.endswith("/representations"))
    assert len([s for s in again.values() if s == "ok"]) == 2

    # A deleted output: only that cell runs again.
    gone = next(e for e in summary(toys.output_root)["cells"] if e["task"] == "IC"
                and e["kind"] == "downstream")
    Path(gone["output"]).unlink()
    status, lines = run_grid(toys(tasks=["KS", "IC"], fractions=["0.1", "1"],
                                  extra=["--KS.max_steps", "7"]))
    assert status == 0
    assert [n for n, s in statuses(lines).items() if s == "ok"] == [gone["name"]]
    assert Path(gone["output"]).is_file()


def test_a_changed_output_is_not_reused(toys):
    assert run_grid(toys())[0] == 0
    output = Path(summary(toys.output_root)["cells"][0]["output"])
    output.write_text("{}")
    status, lines = run_grid(toys())
    assert status == 0 and statuses(lines)[summary(toys.output_root)["cells"][0]["name"]] == "ok"


def test_a_failing_cell_stops_nothing_and_is_listed_with_its_log(toys):
    grid = toys(tasks=["KS", "IC"], fractions=["0.1", "1"], extra=["--KS.fail", "1"])
    status, lines = run_grid(grid)
    assert status == 1
    found = statuses(lines)
    failed = [name for name, s in found.items() if s == "FAILED"]
    assert sorted(failed) == sorted(n for n in found if n.startswith("KS/") and
                                    not n.endswith("/representations"))
    assert len(failed) == 2
    assert all(s == "ok" for n, s in found.items() if n.startswith("IC/"))
    assert found[next(n for n in found if n.startswith("KS/") and
                      n.endswith("representations"))] == "skipped: no KS run succeeded"
    text = "\n".join(lines)
    for entry in summary(toys.output_root)["cells"]:
        if entry["status"] == "FAILED":
            assert f"FAILED {entry['name']} (exit status 3); log: {entry['log']}" in text
            assert "toy failure: told to fail" in Path(entry["log"]).read_text()
    assert text.count("    toy failure: told to fail") == 2  # each log's last lines


def test_a_cell_that_cannot_be_made_fails_alone(toys):
    """An analysis whose results.json names no manifest folder (an older recipe's) fails
    with that reason; the runner goes on with the other cells and lists it."""
    status, lines = run_grid(toys(tasks=["KS", "IC"], extra=["--KS.old_record", "1"]))
    assert status == 1
    found = statuses(lines)
    analysis = next(n for n in found if n.startswith("KS/") and n.endswith("/representations"))
    assert found[analysis] == "FAILED"
    assert all(s == "ok" for n, s in found.items() if n != analysis) and len(found) == 4
    assert re.search(rf"FAILED {re.escape(analysis)} \(.*names no manifest_folder",
                     "\n".join(lines))


def test_analysis_cells_take_the_runs_label_columns_and_gain(toys):
    grid = toys(tasks=["KS", "IC"])
    assert run_grid(grid)[0] == 0
    analyses = {Path(e["folder"]).parts[-2]: e["args"] for e in events(toys.output_root)
                if e["folder"].startswith(str(toys.output_root / "analysis"))}
    ks, ic = analyses["KS"], analyses["IC"]
    assert ks[ks.index("--label_columns") + 1:ks.index("--label_columns") + 2] == ["label"]
    assert ks[ks.index("--gain_db") + 1] == "-3.0"
    assert ic[ic.index("--label_columns") + 1:ic.index("--label_columns") + 3] == [
        "action", "object"]
    # The toy IC records no gain: the analysis keeps its task's default, not 0 dB.
    assert "--gain_db" not in ic


def test_an_interrupted_grid_is_not_marked_finished(toys):
    class Interrupted(LocalLauncher):
        def start(self, *args):
            handle = super().start(*args)
            handle.poll = lambda: (_ for _ in ()).throw(KeyboardInterrupt)  # Ctrl-C
            return handle

    with pytest.raises(KeyboardInterrupt):
        run_grid(toys(extra=["--sleep", "5"], analysis=False), launcher=Interrupted())
    written = summary(toys.output_root)
    assert written["finished"] is False
    assert [cell["status"] for cell in written["cells"]] == ["pending"]


def test_dependents_of_a_failed_rewiring_are_skipped(toys):
    grid = toys(tasks=["KS"], strategies=["baseline", "twin", "mixed"],
                extra=["--rewire.fail", "1"])
    status, lines = run_grid(grid)
    assert status == 1
    found = statuses(lines)
    assert [s for n, s in found.items() if n.startswith("rewire/")] == ["FAILED", "FAILED"]
    rewired = [n for n in found if "<" in n]
    assert len(rewired) == 2 * 2  # each rewired encoder's KS cell and its analysis
    assert all(found[n] == ENCODER_FAILED for n in rewired)
    assert all(s == "ok" for n, s in found.items() if "/baseline" in n)
    ran = {Path(e["folder"]).name for e in events(toys.output_root)}
    assert not any(name.startswith("seed_") for name in ran)


def test_baseline_asr_leaves_out_what_the_encoders_were_rewired_on(toys):
    grid = toys(tasks=["ASR", "KS"], strategies=["baseline", "twin", "mixed"])
    assert run_grid(grid)[0] == 0
    runs = {e["folder"]: e["args"] for e in events(toys.output_root)}
    asr = {folder: args for folder, args in runs.items() if "/ASR/" in folder}
    baseline = [args for folder, args in asr.items() if "/baseline/" in folder]
    assert len(baseline) == 1
    listed = Path(baseline[0][baseline[0].index("--exclude_utterances") + 1]).read_text()
    assert listed.split() == ["mixed-utt", "shared-utt", "twin-utt"]  # both toy subsets
    # The rewired encoders' own ASR runs keep the recipe's default (auto); KS has none.
    assert all("--exclude_utterances" not in args for folder, args in runs.items()
               if "/baseline/" not in folder or "/ASR/" not in folder)


def test_parallel_jobs_overlap_and_get_their_threads_and_gpus(toys, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    grid = toys(tasks=["KS"], seeds=["1", "2"], extra=["--sleep", "0.5"], analysis=False)
    assert run_grid(grid, gpus=["3", "5"])[0] == 0
    first, second = sorted(events(toys.output_root), key=lambda e: e["start"])
    assert second["start"] < first["end"]  # the second started before the first ended
    assert {first["CUDA_VISIBLE_DEVICES"], second["CUDA_VISIBLE_DEVICES"]} == {"3", "5"}
    assert first["OMP_NUM_THREADS"] == str(max(1, os.cpu_count() // 2))


def test_the_runner_killed_mid_grid_resumes(toys, tmp_path):
    """SIGKILL the runner while toy cells sleep: its running cell dies with it, and the
    rerun reuses the cells that finished and runs the others to the end."""
    settings = {"output_root": str(toys.output_root), "seeds": ["1", "2", "3", "4"],
                "extra": ["--sleep", "0.4"], "analysis": False}
    command = [sys.executable, str(REPO / "tests" / "grid_toys.py"), str(tmp_path / "toys"),
               json.dumps(settings)]
    done = toys.output_root / "grid" / "done"
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (done.is_dir() and len(list(done.iterdir())) >= 2):
            assert runner.poll() is None and time.time() < deadline
            time.sleep(0.02)
        runner.kill()  # SIGKILL: no handler runs
    finally:
        runner.wait()
    finished = len(list(done.iterdir()))
    assert finished < 4
    recorded = len(events(toys.output_root))
    time.sleep(0.8)  # a cell left running would finish (and record its event) by now
    assert len(events(toys.output_root)) == recorded

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    found = statuses(rerun.stdout.splitlines())
    assert list(found.values()).count("reused") == finished
    assert list(found.values()).count("ok") == 4 - finished
    assert all(Path(e["output"]).is_file() for e in summary(toys.output_root)["cells"])


def test_submitit_local_launcher_runs_a_cell(toys):
    launcher = SubmititLauncher(toys.output_root / "grid" / "submitit", "local", timeout_min=5)
    status, lines = run_grid(toys(analysis=False), launcher=launcher)
    assert status == 0 and list(statuses(lines).values()) == ["ok"]
    entry, = summary(toys.output_root)["cells"]
    assert Path(entry["output"]).is_file()
    assert "toy KS in" in Path(entry["log"]).read_text()


# ---------------------------------------------------------------------------- real recipes
@pytest.fixture(scope="module")
def real_grid(tmp_path_factory):
    """``run() -> (status, printed)`` of the tiny real grid: the embedded KS baseline, 20
    updates, then its representation analysis."""
    output_root = tmp_path_factory.mktemp("grid")

    def run():
        done = subprocess.run(
            [sys.executable, "utils/run_grid.py", "--tasks", "KS", "--strategies", "baseline",
             "--fractions", "0.1", "--seeds", "1986", "--output_root", str(output_root),
             "--max_steps", "20", "--eval_every_steps", "10"],
            cwd=REPO, capture_output=True, text=True, timeout=1200,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        return done.returncode, done.stdout + done.stderr

    run.output_root = output_root
    return run


@pytest.mark.slow
def test_a_real_tiny_grid_runs_then_reuses(real_grid):
    status, printed = real_grid()
    assert status == 0, printed[-3000:]
    cells = summary(real_grid.output_root)["cells"]
    assert [entry["kind"] for entry in cells] == ["downstream", "analysis"]
    results = json.loads(Path(cells[0]["output"]).read_text())
    assert results["task"] == "KS" and results["steps"] == 20
    assert results["fraction"] == 0.1 and results["strategy"] == "baseline"
    analysis = json.loads(Path(cells[1]["output"]).read_text())
    assert analysis["task"] == "KS"
    written = {entry["output"]: Path(entry["output"]).stat().st_mtime_ns for entry in cells}

    status, printed = real_grid()
    assert status == 0, printed[-3000:]
    for number, entry in enumerate(cells, 1):
        assert f"[{number}/2] {entry['name']}: reused" in printed
    assert {out: Path(out).stat().st_mtime_ns for out in written} == written
