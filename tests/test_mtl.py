"""Multi-task fine-tuning: the joint forward, the loss weightings, the task set, and the
recipe end to end (gradients, the fixed CNN, export, resume after a kill, bad input)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recipe_runs import assert_only_whole_checkpoints, kill_during_second_checkpoint, printed
from rewire_lobes.errors import OptionError
from rewire_lobes.multitask.shared import TaskUpstream, joint_signals, task_rows
from rewire_lobes.multitask.tasks import check_tasks, tasks_label
from rewire_lobes.multitask.weighting import TaskWeighting, pcgrad
from rewire_lobes.runs.provenance import read_provenance, resolve_strategy

REPO = Path(__file__).resolve().parents[1]
SHORT = ["--max_steps", "4", "--eval_every_steps", "2", "--warmup_steps", "2",
         "--batch_size", "2"]
FRACTIONS = ["--fractions", "{KS: 0.05, IC: 0.05}"]


# ---------------------------------------------------------------------- one forward
def test_joint_forward_gives_each_task_its_own_rows(tiny_encoder):
    from rewire_lobes.upstream.encoder import SSLUpstream

    upstream = SSLUpstream(tiny_encoder(), freeze=False).eval()
    torch.manual_seed(0)
    short = (torch.randn(2, 4000), torch.tensor([1.0, 0.6]))
    long = (torch.randn(3, 9000), torch.tensor([0.5, 1.0, 0.8]))
    wavs, lens, spans = joint_signals([short, long])
    assert wavs.shape == (5, 9000) and spans == [(0, 2), (2, 5)]
    with torch.no_grad():
        hidden, frames = upstream(wavs, lens)
        for (task_wavs, task_lens), span in zip([short, long], spans):
            alone, alone_frames = upstream(task_wavs, task_lens)
            rows, row_frames = task_rows(hidden, frames, span)
            assert torch.equal(row_frames, alone_frames)
            assert rows.shape == alone.shape
            torch.testing.assert_close(rows, alone, atol=2e-5, rtol=1e-4)


def test_task_view_serves_what_it_was_given_once(tiny_encoder):
    from rewire_lobes.upstream.encoder import SSLUpstream

    upstream = SSLUpstream(tiny_encoder(), freeze=False).eval()
    view = TaskUpstream(upstream)
    assert view.num_states == upstream.num_states and view.freeze is False
    assert list(view.parameters()) == []  # the Brain owns the encoder, once
    given = (torch.zeros(upstream.num_states, 2, 3, upstream.hidden_size), torch.tensor([3, 2]))
    view.provide(*given)
    assert view(torch.zeros(2, 1000), torch.ones(2))[0] is given[0]
    with torch.no_grad():  # nothing pending: the encoder runs
        hidden, _ = view(torch.randn(2, 1000), torch.ones(2))
    assert hidden.shape[1] == 2 and hidden.abs().sum() > 0
    view.provide(*given)
    with pytest.raises(RuntimeError, match="mixed up"):
        view(torch.zeros(3, 1000), torch.ones(3))


# ---------------------------------------------------------------------- weightings
def test_sum_and_uncertainty_weighting():
    losses = {"KS": torch.tensor(2.0), "IC": torch.tensor(3.0)}
    assert TaskWeighting(["KS", "IC"])(losses).item() == 5.0
    weighting = TaskWeighting(["KS", "IC"], "uncertainty")
    with torch.no_grad():
        weighting.log_sigma.copy_(torch.tensor([0.5, -0.25]))
    expected = 2.0 * torch.exp(torch.tensor(-1.0)) + 0.5 + 3.0 * torch.exp(torch.tensor(0.5)) - 0.25
    torch.testing.assert_close(weighting(losses), expected)
    objective = weighting(losses)
    objective.backward()
    assert weighting.log_sigma.grad.abs().min() > 0  # the weights learn
    assert weighting.weights()["KS"] == pytest.approx(float(torch.exp(torch.tensor(-1.0))))
    with pytest.raises(OptionError, match="--weighting"):
        TaskWeighting(["KS"], "softmax")


def test_pcgrad_projects_only_conflicting_gradients():
    agreeing = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0]])
    torch.testing.assert_close(pcgrad(agreeing), agreeing.sum(0))
    g1, g2 = torch.tensor([2.0, 1.0]), torch.tensor([-1.0, 0.5])
    combined = pcgrad(torch.stack([g1, g2]))
    p1 = g1 - torch.dot(g1, g2) / torch.dot(g2, g2) * g2
    p2 = g2 - torch.dot(g2, g1) / torch.dot(g1, g1) * g1
    torch.testing.assert_close(combined, p1 + p2)
    assert torch.dot(p1, g2).abs() < 1e-6 and torch.dot(p2, g1).abs() < 1e-6


# ---------------------------------------------------------------------- the task set
def test_task_set_is_checked():
    assert check_tasks(["KS", "IC"]) == ["KS", "IC"] and tasks_label(["KS", "IC"]) == "IC+KS"
    for bad, message in ([], "at least one"), (["KS", "KS"], "more than once"), \
            (["QbE"], "trains no head"), (["ER"], "not a task"):
        with pytest.raises(OptionError, match=message):
            check_tasks(bad)


# ---------------------------------------------------------------------- the recipe
def mtl_command(encoder, output_root, *extra):
    return [sys.executable, "recipes/MTL/train.py", "hparams/mtl.yaml",
            "--upstream_source", str(encoder), "--output_root", str(output_root),
            "--run_profile", "paper", "--lr", "0.001", "--upstream_lr", "0.0005",
            "--noprogressbar", *SHORT, *([] if "--fractions" in extra else FRACTIONS), *extra]


def run_mtl(encoder, output_root, *extra, check=True):
    done = subprocess.run(mtl_command(encoder, output_root, *extra), cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert done.returncode == 0, printed(done)[-4000:]
    return done


def run_folder(output_root):
    (folder,) = Path(output_root).glob("MTL/*/*/IC+KS_seed1986")
    return folder


def outcome(folder):
    """What a run reports: each task's results and the exported encoder's record."""
    tasks = {}
    for task in ("KS", "IC"):
        record = json.loads((folder / task / "results.json").read_text())
        tasks[task] = (record["dev_curve"], record["test"], record["best_step"], record["steps"])
    mtl = json.loads((folder / "upstream" / "mtl.json").read_text())
    return tasks, mtl["content_hash"], mtl["selection"]


@pytest.fixture(scope="module")
def rewired_encoder(tiny_encoder, tmp_path_factory):
    """The tiny encoder dressed as the export of a Twin rewiring run (with its subset)."""
    folder = tmp_path_factory.mktemp("rewired") / "upstream"
    shutil.copytree(tiny_encoder(), folder)
    (folder / "rewiring_subset.txt").write_text("utt-1\nutt-2\n")
    from rewire_lobes.data.librispeech import subset_digest

    (folder / "rewiring.json").write_text(json.dumps({
        "strategy": "twin", "source_content_hash": "f" * 64, "content_hash": "e" * 64,
        "data": {"subset_file": "rewiring_subset.txt",
                 "subset_sha256": subset_digest(folder / "rewiring_subset.txt")},
    }))
    return folder


def load_recipe():
    spec = importlib.util.spec_from_file_location("mtl_recipe", REPO / "recipes/MTL/train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_in_process(mini_corpus, rewired_encoder, tmp_path, monkeypatch):
    """The objective is the sum of the task losses; every head, featurizer and the encoder's
    transformer get gradients while the CNN gets none and does not move; the exported
    encoder of a rewired source is "twin+mtl", in the source's family, with its subset."""
    from rewire_lobes.multitask.brain import MultiTaskBrain
    from rewire_lobes.upstream.encoder import SSLUpstream

    seen = {"objectives": [], "grads": []}
    original_objectives = MultiTaskBrain.compute_objectives
    original_step = MultiTaskBrain.optimizers_step

    def compute_objectives(self, outputs, batches, stage):
        objective = original_objectives(self, outputs, batches, stage)
        seen["objectives"].append((float(objective.detach()),
                                   sum(float(v.detach()) for v in self.task_losses.values())))
        return objective

    def optimizers_step(self):
        seen["grads"].append({name: (param.grad is not None and bool(param.grad.abs().sum() > 0))
                              for name, param in self.modules.named_parameters()})
        seen["cnn"] = {name: param.detach().clone() for name, param in
                       self.hparams.upstream.model.feature_extractor.named_parameters()}
        original_step(self)

    monkeypatch.setattr(MultiTaskBrain, "compute_objectives", compute_objectives)
    monkeypatch.setattr(MultiTaskBrain, "optimizers_step", optimizers_step)
    monkeypatch.chdir(REPO)
    argv = mtl_command(rewired_encoder, tmp_path)[2:]
    load_recipe().main(argv)

    assert len(seen["objectives"]) == 4
    for objective, task_sum in seen["objectives"]:
        assert objective == pytest.approx(task_sum, rel=1e-6)
    for grads in seen["grads"]:
        for part in ("KS_head", "IC_head", "KS_featurizer", "IC_featurizer"):
            assert any(v for k, v in grads.items() if k.startswith(part)), part
        encoder = {k: v for k, v in grads.items() if k.startswith("upstream.")}
        assert any(v for k, v in encoder.items() if ".encoder.layers." in k)
        assert not any(v for k, v in encoder.items() if ".feature_extractor." in k)

    folder = run_folder(tmp_path)
    assert folder.parent.name == "twin"
    exported = folder / "upstream"
    record = json.loads((exported / "mtl.json").read_text())
    assert record["strategy"] == "twin+mtl" and record["tasks"] == ["KS", "IC"]
    assert record["source_content_hash"] == "f" * 64  # the family's root
    assert record["parent"] == str(rewired_encoder) and record["embedded_encoder"] is False
    assert record["updates"] == 4 and record["selection"]["rule"] == "mean_normalised"
    assert (exported / "rewiring_subset.txt").read_text() == "utt-1\nutt-2\n"
    assert resolve_strategy(None, exported) == "twin+mtl"
    assert read_provenance(exported)["tasks"] == ["KS", "IC"]
    tuned = SSLUpstream(str(exported))
    for name, param in tuned.model.feature_extractor.named_parameters():
        torch.testing.assert_close(param, seen["cnn"][name], rtol=0, atol=0)
    source = SSLUpstream(str(rewired_encoder))
    assert tuned.content_hash() == record["content_hash"] != source.content_hash()
    for task in ("KS", "IC"):
        results = json.loads((folder / task / "results.json").read_text())
        assert results["upstream_mode"] == "trainable" and results["task"] == task
        assert results["multitask"]["tasks"] == ["KS", "IC"]
        assert results["strategy"] == "twin+mtl"  # the report files it with the export
        assert results["provenance"]["content_hash"] == record["content_hash"]
        assert results["best_step"] == record["task_best"][task]["step"]
        # Tested with the weights of the task's own best checkpoint.
        assert results["encoder"]["content_hash"] == checkpoint_hash(
            folder, results["best_step"], rewired_encoder)
    # The report files the run's own scores as the tuned encoder's fine-tuned rows.
    import csv

    from rewire_lobes.analysis.report import write_report

    write_report(folder, tmp_path / "report")
    with open(tmp_path / "report" / "table2.csv") as fin:
        rows = list(csv.DictReader(fin))
    assert {(r["task"], r["strategy"], r["upstream_mode"], r["encoder_content_hash"])
            for r in rows} == {(task, "twin+mtl", "trainable", record["content_hash"])
                               for task in ("KS", "IC")}


def checkpoint_hash(folder, step, encoder):
    """The content hash of the encoder in the checkpoint of ``step`` in ``<folder>/save``."""
    import yaml

    from rewire_lobes.upstream.encoder import SSLUpstream

    for meta in (folder / "save").glob("CKPT+*/CKPT.yaml"):
        if yaml.safe_load(meta.read_text())["step"] == step:
            upstream = SSLUpstream(str(encoder), freeze=False)
            upstream.load_state_dict(torch.load(meta.parent / "upstream.ckpt"))
            return upstream.content_hash()
    raise AssertionError(f"no checkpoint of step {step}")


def test_pcgrad_last_and_one_forward_per_task(mini_corpus, tiny_encoder, tmp_path):
    run_mtl(tiny_encoder(), tmp_path, "--weighting", "pcgrad", "--shared_forward", "False",
            "--selection", "last")
    folder = run_folder(tmp_path)
    record = json.loads((folder / "upstream" / "mtl.json").read_text())
    assert record["selection"]["step"] == 4 == record["updates"]
    assert record["content_hash"] == checkpoint_hash(folder, 4, tiny_encoder())
    log = (folder / "train_log.txt").read_text()
    assert log.count("round:") == 2 and "KS_loss" in log


def test_resume_after_kill_matches_uninterrupted(mini_corpus, tiny_encoder, tmp_path):
    """Killed while writing its second checkpoint, the rerun resumes to the uninterrupted
    run's numbers and encoder; another setting in that folder is refused."""
    run_mtl(tiny_encoder(), tmp_path / "whole")
    whole = run_folder(tmp_path / "whole")
    killed_root = tmp_path / "killed"
    killed = killed_root / whole.relative_to(tmp_path / "whole")
    rc = kill_during_second_checkpoint(mtl_command(tiny_encoder(), killed_root),
                                       killed / "save", tmp_path / "killed.log")
    assert rc != 0
    assert not (killed / "upstream").exists()
    assert_only_whole_checkpoints(killed, whole)
    run_mtl(tiny_encoder(), killed_root)
    assert outcome(killed) == outcome(whole)
    refused = run_mtl(tiny_encoder(), killed_root, "--weighting", "uncertainty", check=False)
    # A new setting is a new identity: the same folder name is refused, not resumed.
    assert refused.returncode == 2 and "weighting" in printed(refused)


def test_probing_the_exported_encoder(mini_corpus, tiny_encoder, tmp_path):
    """A task recipe takes the tuned encoder as one more encoder: its strategy is "mtl"."""
    run_mtl(tiny_encoder(), tmp_path, "--weighting", "uncertainty", "--selection", "KS")
    exported = run_folder(tmp_path) / "upstream"
    record = json.loads((exported / "mtl.json").read_text())
    assert record["selection"]["step"] == record["task_best"]["KS"]["step"]
    assert set(record["weighting"]["weights_at_selection"]) == {"KS", "IC"}
    done = subprocess.run(
        [sys.executable, "recipes/KS/train.py", "hparams/ks.yaml", "--upstream_source",
         str(exported), "--output_root", str(tmp_path / "probe"), "--run_profile", "paper",
         "--max_steps", "2", "--eval_every_steps", "2", "--noprogressbar"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, printed(done)[-3000:]
    (results,) = (tmp_path / "probe").glob("KS/*/mtl/*/results.json")
    results = json.loads(results.read_text())
    assert results["strategy"] == "mtl" and results["upstream_mode"] == "frozen"
    assert results["provenance"]["tasks"] == ["KS", "IC"]


@pytest.mark.parametrize("extra, message", [
    (["--tasks", "[KS, QbE]"], "QbE trains no head"),
    (["--fractions", "{ASR: 0.1}"], "not in --tasks"),
    (["--fractions", "{KS: 1.5}"], "fraction"),
    (["--task_overrides", "{KS: {fraction: 0.5}}"], "set by the multi-task run"),
    (["--task_overrides", "{KS: {batch_sise: 4}}"], "did you mean --batch_size"),
    (["--selection", "SF"], "--selection"),
    (["--weighting", "softmax"], "--weighting"),
    (["--data_folder", "/data"], "--data_folders"),
])
def test_bad_options_are_refused_before_the_run_folder(tiny_encoder, tmp_path, monkeypatch,
                                                       extra, message):
    from rewire_lobes.errors import UserError

    monkeypatch.chdir(REPO)
    with pytest.raises(UserError, match=re.escape(message)):
        load_recipe().main(mtl_command(tiny_encoder(), tmp_path, *extra)[2:])
    assert not (tmp_path / "MTL").exists()


def test_a_task_without_training_data_is_a_clear_error(mini_corpus, tiny_encoder, tmp_path):
    empty = tmp_path / "empty_ks"
    for name in ("speech_commands_v0.01", "speech_commands_test_set_v0.01"):
        (empty / name / "_background_noise_").mkdir(parents=True)
    done = run_mtl(tiny_encoder(), tmp_path / "runs", "--data_folders", f"{{KS: {empty}}}",
                   check=False)
    assert done.returncode == 2, printed(done)[-3000:]
    last = printed(done).strip().splitlines()[-1]
    assert last.startswith("error: KS: ") and "empty" in last, last


def test_sequence_and_diarization_tasks(mini_corpus, tiny_encoder, tmp_path):
    """ASR, SF and SD fine-tune together; each is scored by its own recipe's outputs."""
    done = subprocess.run(
        [sys.executable, "recipes/MTL/train.py", "hparams/mtl.yaml", "--tasks", "[ASR, SF, SD]",
         "--upstream_source", tiny_encoder(), "--output_root", str(tmp_path),
         "--run_profile", "embedded", "--max_steps", "2", "--eval_every_steps", "2",
         "--batch_size", "2", "--fractions", "{ASR: 0.05, SF: 0.05, SD: 0.2}", "--noprogressbar"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, printed(done)[-4000:]
    (folder,) = tmp_path.glob("MTL/*/baseline/ASR+SD+SF_seed1986")
    metrics = {"ASR": "wer", "SF": "slot_type_f1", "SD": "der"}
    for task, metric in metrics.items():
        results = json.loads((folder / task / "results.json").read_text())
        assert results["metric"] == metric and results["strategy"] == "mtl"
        assert results["dev_rescored_matches_best"] is True  # the task's own check
    assert (folder / "ASR" / "test-hyp.ark").is_file() and (folder / "SF" / "test-ref.ark").is_file()
    assert list((folder / "SD").glob("test*hyp*.rttm"))


def test_every_task_steps_with_the_runs_accumulation():
    """SD's yaml accumulates 4 batches per update; in a multi-task run every task draws
    the run's own number, so its rounds stay eval_every_steps updates long."""
    from rewire_lobes.multitask.tasks import task_overrides

    mtl = {"tasks": ["SD", "KS"], "task_overrides": {}, "run_profile": "paper", "data_folders": {},
           "upstream_source": "enc", "encoder_id": "enc-1", "output_root": "r",
           "output_folder": "r/MTL/x", "fractions": {}, "seed": 1, "strategy": "baseline",
           "max_steps": 10, "eval_every_steps": 5, "lr": 1e-3, "batch_size": None}
    import ruamel.yaml

    for factor in (1, 2):
        _, text = task_overrides("SD", mtl, factor)
        assert ruamel.yaml.YAML().load(text)["grad_accumulation_factor"] == factor
    _, text = task_overrides("KS", mtl, 2)
    assert "grad_accumulation_factor" not in ruamel.yaml.YAML().load(text)  # KS reads the run's


def test_ddp_with_torchrun(mini_corpus, tiny_encoder, tmp_path):
    """Two processes (gloo) train and export; a length-bucketed task is refused at once."""
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_port", str(29400 + os.getpid() % 500)]
    command = base + mtl_command(tiny_encoder(), tmp_path)[1:] + ["--distributed_backend", "gloo"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, printed(done)[-4000:]
    folder = run_folder(tmp_path)
    assert json.loads((folder / "run_identity.json").read_text())["world_size"] == 2
    assert (folder / "upstream" / "mtl.json").is_file()
    assert (folder / "train_log.txt").read_text().count("round:") == 2
    refused = subprocess.run(base + mtl_command(tiny_encoder(), tmp_path / "asr")[1:]
                             + ["--tasks", "[KS, ASR]", "--distributed_backend", "gloo"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "ASR trains on length-aware batches" in printed(refused)
    assert not (tmp_path / "asr" / "MTL").exists()
