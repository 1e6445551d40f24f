"""The downstream core on toy data: best checkpoint, accumulation, trainable upstream."""

import json

import pytest
import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.train_logger import FileTrainLogger
from torch import nn

from rewire_lobes.downstream.core import DownstreamBrain
from rewire_lobes.downstream.results import results_record
from rewire_lobes.downstream.schedule import EvalRounds
from rewire_lobes.upstream.encoder import SSLUpstream


class ToyBrain(DownstreamBrain):
    """Regresses a constant; the dev score is scripted, the test score is the weight."""

    dev_script = ()
    batches = 0

    def compute_forward(self, batch, stage):
        ToyBrain.batches += stage == sb.Stage.TRAIN
        x = batch.x.to(self.device).float()[:, None]
        if self.trains_upstream:
            wavs = batch.wav.data.to(self.device)
            hidden, frame_lens = self.modules.upstream(wavs, batch.wav.lengths)
            x = x + hidden.mean(dim=(0, 2, 3))[:, None]
        return self.modules.head(x)

    def compute_objectives(self, predictions, batch, stage):
        return ((predictions - 3.0) ** 2).mean()

    def reset_scores(self, stage):
        pass

    def summarize_scores(self, stage):
        weight = float(self.modules.head.weight.item())
        if stage == sb.Stage.VALID:
            self.weights_at[self.optimizer_step] = weight
            return {"accuracy": self.dev_script[len(self.weights_at) - 1]}
        return {"accuracy": weight}


def toy_dataset(n=8):
    data = {f"u{i}": {"x": float(i % 4) / 4} for i in range(n)}
    dataset = DynamicItemDataset(data)

    @sb.utils.data_pipeline.takes("x")
    @sb.utils.data_pipeline.provides("wav")
    def wav(x):
        return torch.full((1600,), x) + torch.sin(torch.arange(1600) / 7.0)

    dataset.add_dynamic_item(wav)
    dataset.set_output_keys(["id", "x", "wav"])
    return dataset


def make_brain(tmp_path, encoder, max_steps=8, eval_every=2, upstream=None, **hparams):
    upstream = upstream or SSLUpstream(encoder, freeze=True)
    run_opts = {"noprogressbar": True, **hparams.pop("run_opts", {})}
    head = nn.Linear(1, 1)
    counter = EvalRounds(max_steps, eval_every)
    checkpointer = Checkpointer(tmp_path / "save", {"head": head, "counter": counter})
    settings = {
        "task": "KS", "strategy": "baseline", "run_profile": "paper", "fraction": 1.0,
        "seed": 3, "max_steps": max_steps, "eval_every_steps": eval_every,
        "metric": "accuracy", "dev_metric": "accuracy", "upstream": upstream,
        "results_file": tmp_path / "results.json", "balance_column": None,
        "train_logger": FileTrainLogger(tmp_path / "log.txt"), "epoch_counter": counter,
        **hparams,
    }
    brain = ToyBrain(modules={"head": head, "upstream": upstream},
                     opt_class=lambda params: torch.optim.SGD(params, lr=0.05),
                     hparams=settings, run_opts=run_opts,
                     checkpointer=checkpointer)
    brain.weights_at = {}
    return brain


def fit_and_test(brain):
    data = toy_dataset()
    loader = {"batch_size": 2}
    brain.fit(brain.hparams.epoch_counter, data, data, train_loader_kwargs=loader,
              valid_loader_kwargs=loader)
    brain.evaluate(data, max_key="accuracy", test_loader_kwargs=loader)
    return json.loads(brain.hparams.results_file.read_text())


def test_test_score_comes_from_the_best_checkpoint_not_the_last(tiny_encoder, tmp_path):
    ToyBrain.dev_script = (10.0, 90.0, 30.0, 20.0)  # an early dev peak, at update 4
    brain = make_brain(tmp_path, tiny_encoder())
    results = fit_and_test(brain)
    assert results["best_step"] == 4 and results["best_dev"] == 90.0
    assert [step for step, _ in results["dev_curve"]] == [2, 4, 6, 8]
    assert results["test"] == pytest.approx(brain.weights_at[4], abs=1e-7)
    assert results["test"] != pytest.approx(brain.weights_at[8], abs=1e-4)
    assert results["steps"] == 8  # the whole budget is reported, not the best checkpoint's
    assert results["best_step_resolution"] == 2
    assert (results["unit"], results["direction"]) == ("%", "max")


def test_grad_accumulation_keeps_the_budget_in_updates(tiny_encoder, tmp_path):
    ToyBrain.dev_script = (1.0, 2.0, 3.0)
    ToyBrain.batches = 0
    brain = make_brain(tmp_path, tiny_encoder(), max_steps=6, eval_every=2,
                       run_opts={"grad_accumulation_factor": 3})
    results = fit_and_test(brain)
    assert [step for step, _ in results["dev_curve"]] == [2, 4, 6]
    assert results["steps"] == 6
    assert ToyBrain.batches == 18  # three batches per update


def test_trainable_upstream_has_its_own_lr_and_is_checkpointed(tiny_encoder, tmp_path):
    ToyBrain.dev_script = (1.0, 2.0)
    upstream = SSLUpstream(tiny_encoder(), freeze=False, freeze_feature_encoder=True)
    cnn_before = [p.detach().clone() for p in upstream.model.feature_extractor.parameters()]
    layer_before = upstream.model.encoder.layers[0].feed_forward.output_dense.weight.detach().clone()
    brain = make_brain(tmp_path, None, max_steps=4, upstream=upstream, upstream_lr=0.01)
    results = fit_and_test(brain)
    lrs = sorted(group["lr"] for group in brain.optimizer.param_groups)
    assert lrs == [0.01, 0.05]
    assert "upstream" in brain.checkpointer.recoverables
    assert results["upstream_mode"] == "trainable"
    assert all(torch.equal(a, b) for a, b in
               zip(cnn_before, upstream.model.feature_extractor.parameters()))
    layer_after = upstream.model.encoder.layers[0].feed_forward.output_dense.weight
    assert not torch.equal(layer_before, layer_after)


def test_trainable_upstream_needs_its_lr(tiny_encoder, tmp_path):
    upstream = SSLUpstream(tiny_encoder(), freeze=False)
    with pytest.raises(ValueError, match="upstream_lr"):
        make_brain(tmp_path, None, upstream=upstream)


@pytest.mark.parametrize("metric, unit, direction", [
    ("accuracy", "%", "max"), ("wer", "%", "min"), ("der", "%", "min"), ("mtwv", "", "max"),
])
def test_unit_and_direction_come_from_the_metric(metric, unit, direction):
    record = results_record(
        task="QbE", encoder={}, metric=metric, dev_metric=metric, test_scores={metric: 0.5},
        dev_curve=[], best_step=None, best_dev=None, steps=0, max_steps=0, eval_every_steps=1,
        fraction=1.0, seed=0, strategy="baseline", profile="paper")
    assert (record["unit"], record["direction"]) == (unit, direction)
    with pytest.raises(ValueError, match="unknown metric"):
        results_record(
            task="QbE", encoder={}, metric="mtwv_percent", dev_metric="mtwv",
            test_scores={"mtwv_percent": 1}, dev_curve=[], best_step=None, best_dev=None,
            steps=0, max_steps=0, eval_every_steps=1, fraction=1.0, seed=0,
            strategy="baseline", profile="paper")
