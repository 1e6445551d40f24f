"""Multi-task fine-tuning: one shared trainable encoder, every task's head, one loop.

As s3prl's multi-task branch: every update draws one batch of every task (each task's
own sampler, so KS keeps its class-balanced draws and ASR its length buckets), runs the
encoder once on all of them (``rewire_lobes.multitask.shared``), gives each task's head
its rows through the task's own weighted layer sum, and combines the task losses
(``rewire_lobes.multitask.weighting``). AdamW with a linear warm-up, the encoder in its
own parameter group at ``upstream_lr`` (CNN fixed, layerdrop 0: ``SSLUpstream``), the
gradient of all parameters clipped together.

Every ``eval_every_steps`` updates each task is evaluated on its dev set by its own
metric; a checkpoint keeps the latest state, the best of each task and the best by the
``selection`` rule, which picks the encoder that is exported (the seed paper names
checkpoint selection for a multi-task model as an open problem, so the rule is an option
and is recorded). At the end the selected encoder is written to
``<output_folder>/upstream/`` with ``mtl.json``, then each task is tested at its own best
checkpoint by its recipe (``<output_folder>/<TASK>/results.json``, ``upstream_mode:
trainable``, the export's strategy and record as provenance).
"""

import logging
import time
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from tqdm import tqdm

from rewire_lobes.downstream.core import dev_importance
from rewire_lobes.downstream.schedule import RunHistory
from rewire_lobes.errors import OptionError
from rewire_lobes.multitask.shared import joint_signals, task_rows
from rewire_lobes.multitask.tasks import check_selection, normalised
from rewire_lobes.multitask.weighting import pcgrad
from rewire_lobes.runs.defaults import is_embedded_encoder
from rewire_lobes.runs.optim import clipped_step
from rewire_lobes.runs.provenance import BASELINE, MTL_RECORD_FILE, read_provenance
from rewire_lobes.runs.random_state import RandomState
from rewire_lobes.upstream.encoder import trainable_parameters
from rewire_lobes.upstream.export import export_with_record

logger = logging.getLogger(__name__)

class TaskRounds:
    """Yields ``{task: batch}``: one batch of every task's training loader at a time."""

    def __init__(self, loaders):
        self.loaders = loaders

    def __len__(self):
        return min(len(loader) for loader in self.loaders.values())

    def __iter__(self):
        names = list(self.loaders)
        for batches in zip(*(self.loaders[name] for name in names)):
            yield dict(zip(names, batches))


class MultiTaskBrain(sb.Brain):
    """The shared encoder (``modules.upstream``) and every task's ``<task>_featurizer`` and
    ``<task>_head`` (``modules``), trained on the sum (or weighting) of the task losses.

    ``tasks`` maps a task name to its ``TaskRun`` (``rewire_lobes.multitask.tasks``).
    Hyperparameters read: ``upstream``, ``weighting_module``, ``weighting``, ``selection``,
    ``max_steps``, ``eval_every_steps``, ``warmup_steps``, ``upstream_lr``, ``seed``,
    ``shared_forward`` (False: one encoder forward per task, less padding on one process),
    ``train_logger``, ``export_folder``, ``run_profile``, ``strategy``, ``upstream_source``.
    """

    def __init__(self, *args, tasks, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = tasks
        self.names = list(tasks)
        check_selection(self.hparams.selection, self.names)
        if self.distributed_launch and not self.hparams.shared_forward:
            raise OptionError("--shared_forward False runs the encoder once per task, which DDP "
                              "cannot take before one backward: keep it True with torchrun")
        if self.hparams.weighting == "pcgrad":
            if self.distributed_launch or int(self.grad_accumulation_factor) != 1:
                raise OptionError("--weighting pcgrad runs on one process without gradient "
                                  "accumulation (it needs each task's own gradient)")
            if self.precision == "fp16":
                raise OptionError("--weighting pcgrad needs --precision fp32 or bf16")
        self.history = RunHistory()  # the selection score's curve
        self.task_histories = {name: RunHistory() for name in self.names}
        self.random_state = RandomState()
        self.checkpointer.add_recoverable("history", self.history)
        for name, history in self.task_histories.items():
            self.checkpointer.add_recoverable(f"history_{name}", history)
        self.checkpointer.add_recoverable("random_state", self.random_state)
        self.optimizer_step_limit = int(self.hparams.max_steps)
        # Before DDP wraps it: a parameter without gradient would be refused there.
        self.upstream_parameters = trainable_parameters(self.hparams.upstream)
        # The encoder as it was given, before any recovery: the record's parent.
        self.source_hash = self.hparams.upstream.content_hash()
        self.round_losses = {}
        self._clock = None

    # ------------------------------------------------------------------ optimisation
    def init_optimizers(self):
        """AdamW over the heads, featurizers and loss weights at ``lr`` and the encoder's
        trainable parameters at ``upstream_lr``; both follow the warm-up."""
        encoder = {id(p) for p in self.hparams.upstream.parameters()}
        heads = [p for p in self.modules.parameters() if p.requires_grad and id(p) not in encoder]
        self.optimizer = self.opt_class([
            {"params": heads},
            {"params": self.upstream_parameters, "lr": float(self.hparams.upstream_lr)},
        ])
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.optimizers_dict = {"opt_class": self.optimizer}
        self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def warmup_factor(self, step):
        """Linear warm-up over ``warmup_steps`` updates, then the base learning rates."""
        warmup = int(self.hparams.warmup_steps)
        return 1.0 if warmup <= 0 else min(1.0, (step + 1) / warmup)

    def on_fit_batch_start(self, batch, should_step):
        factor = self.warmup_factor(self.optimizer_step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    def optimizers_step(self):
        clipped_step(self)

    def fit_batch(self, batch):
        if self.hparams.weighting != "pcgrad":
            return super().fit_batch(batch)
        self.on_fit_batch_start(batch, True)
        with self.training_ctx:
            outputs = self.compute_forward(batch, sb.Stage.TRAIN)
            loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
        self.check_loss_isfinite(loss)
        shared = self.upstream_parameters
        flat = []
        for name in self.names:
            grads = torch.autograd.grad(self.task_losses[name], shared, retain_graph=True,
                                        allow_unused=True)
            flat.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                   for p, g in zip(shared, grads)]))
        loss.backward()
        combined = pcgrad(torch.stack(flat).float())
        offset = 0
        for p in shared:
            p.grad = combined[offset: offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
        self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, True)
        return loss.detach().cpu()

    # ------------------------------------------------------------------ data
    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """``{task: dataset}`` → each task's loader, made by the task's own Brain (its
        sampler, batching and collation); training zips them (:class:`TaskRounds`)."""
        if not isinstance(dataset, dict):
            return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        options = "train_dataloader_opts" if stage == sb.Stage.TRAIN else "valid_dataloader_opts"
        loaders = {}
        for name, data in dataset.items():
            task = self.tasks[name]
            loaders[name] = task.brain.make_dataloader(
                data, stage, ckpt_prefix=None, **task.hparams[options])
        return TaskRounds(loaders) if stage == sb.Stage.TRAIN else loaders

    # ------------------------------------------------------------------ model
    def compute_forward(self, batches, stage):
        """Every task's predictions, from one encoder forward on all their batches."""
        batches = {name: batch.to(self.device) for name, batch in batches.items()}  # in place
        if not self.hparams.shared_forward:  # one forward per task (the view runs the encoder)
            return {name: self.tasks[name].brain.compute_forward(batches[name], stage)
                    for name in self.names}
        wavs, wav_lens, spans = joint_signals([batches[name].sig for name in self.names])
        hidden, frame_lens = self.modules.upstream(wavs, wav_lens)
        outputs = {}
        for name, span in zip(self.names, spans):
            task = self.tasks[name]
            task.hparams["upstream"].provide(*task_rows(hidden, frame_lens, span))
            outputs[name] = task.brain.compute_forward(batches[name], stage)
        return outputs

    def compute_objectives(self, outputs, batches, stage):
        self.task_losses = {
            name: self.tasks[name].brain.compute_objectives(outputs[name], batches[name], stage)
            for name in self.names
        }
        for name, loss in self.task_losses.items():  # summed on the device: no sync per step
            total, count = self.round_losses.get(name, (0.0, 0))
            self.round_losses[name] = (total + loss.detach(), count + 1)
        return self.modules.weighting(self.task_losses)

    # ------------------------------------------------------------------ stages
    def on_fit_start(self):
        super().on_fit_start()  # wraps DDP, builds the optimizer, resumes
        # The tasks' Brains call what was (maybe) wrapped for DDP.
        for name, task in self.tasks.items():
            task.brain.modules["featurizer"] = self.modules[f"{name}_featurizer"]
            task.brain.modules["head"] = self.modules[f"{name}_head"]
            task.hparams["upstream"].run_with(self.modules.upstream)
        self._clock = time.time()
        logger.info("Multi-task fine-tuning of %s on %s: %d updates, dev every %d, %s of the "
                    "losses, selection by %s; resuming at update %d", self.hparams.upstream_source,
                    ", ".join(self.names), self.hparams.max_steps, self.hparams.eval_every_steps,
                    self.hparams.weighting, self.hparams.selection, self.optimizer_step)

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            # Before the loaders' iterators are made: making them draws from the generator.
            self.random_state.apply_recovered()
            self.round_losses = {}
            self._round_start = (time.time(), self.optimizer_step)
            for task in self.tasks.values():
                if task.brain.step_sampler is not None:
                    task.brain.step_sampler.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            started, first = self._round_start
            updates = self.optimizer_step - first
            seconds = time.time() - started
            logger.info("round %s: %d updates in %.1f s (%.3f s/update)", epoch, updates,
                        seconds, seconds / max(updates, 1))

    def _fit_valid(self, valid_set, epoch, enable):
        """Each task's dev set, scored by its own Brain's metric."""
        self.modules.eval()
        losses, scores = {}, {}
        with torch.no_grad():
            for name, loader in valid_set.items():
                brain = self.tasks[name].brain
                brain.reset_scores(sb.Stage.VALID)
                total, count = 0.0, 0
                for batch in tqdm(loader, dynamic_ncols=True, disable=not enable,
                                  desc=f"dev {name}"):
                    batch = batch.to(self.device)
                    with self.evaluation_ctx:
                        output = brain.compute_forward(batch, sb.Stage.VALID)
                        loss = brain.compute_objectives(output, batch, sb.Stage.VALID)
                    total, count = total + float(loss), count + 1
                losses[name] = total / max(count, 1)
                scores[name] = brain.summarize_scores(sb.Stage.VALID)
        self._end_of_round(epoch, losses, scores)

    def selection_score(self, scores):
        """The score the ``selection`` rule maximises at one dev evaluation."""
        rule = self.hparams.selection
        if rule == "last":
            return float(self.optimizer_step)
        values = {name: normalised(scores[name][self.tasks[name].dev_metric],
                                   self.tasks[name].direction) for name in self.names}
        if rule in values:
            return values[rule]
        return sum(values.values()) / len(values)

    def _end_of_round(self, epoch, losses, scores):
        step = self.optimizer_step
        meta = {"step": step}
        for name in self.names:
            task = self.tasks[name]
            value = scores[name][task.dev_metric]
            if self.task_histories[name].add(step, value, task.direction, scores[name]):
                logger.info("%s: new best dev %s %.4g at update %d", name, task.dev_metric,
                            value, step)
            meta[f"dev_{name}"] = float(value)
        selection = self.selection_score(scores)
        self.history.add(step, selection, "max", {"selection": selection})
        meta["selection"] = selection
        self._tick()
        train_stats = {"loss": getattr(self, "train_loss", float("nan"))}
        train_stats.update({f"{name}_loss": float(total) / max(count, 1)
                            for name, (total, count) in self.round_losses.items()})
        valid_stats = {"selection": selection}
        for name in self.names:
            valid_stats[f"{name}_loss"] = losses[name]
            valid_stats.update({f"{name}_{key}": value for key, value in scores[name].items()})
        weights = self.weighting_module().weights()
        if self.hparams.weighting == "uncertainty":
            train_stats.update({f"{name}_weight": weight for name, weight in weights.items()})
        self.hparams.train_logger.log_stats(  # on every rank (pitfall C.11)
            stats_meta={"round": epoch, "step": step,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "upstream_lr": self.optimizer.param_groups[1]["lr"]},
            train_stats=train_stats, valid_stats=valid_stats,
        )
        self.checkpointer.save_and_keep_only(
            meta=meta,
            importance_keys=[self._selection_importance,
                             *(self._task_importance(name) for name in self.names)],
            num_to_keep=1,
            keep_recent=True,
        )

    def _tick(self):
        now = time.time()
        if self._clock is not None:
            self.history.seconds += now - self._clock
        self._clock = now

    def weighting_module(self):
        module = self.modules.weighting
        return getattr(module, "module", module)  # DDP-wrapped when it learns weights

    # ------------------------------------------------------------------ checkpoints
    _selection_importance = staticmethod(dev_importance("selection", "max"))

    def _task_importance(self, name):
        return dev_importance(f"dev_{name}", self.tasks[name].direction)

    def recover(self, importance_key):
        """Loads the checkpoint best by ``importance_key``, keeping the run's full histories
        and update count (a checkpoint restores those of its own time)."""
        if not self.history.dev_curve:  # --test_only: fit never ran, the latest has it all
            self.checkpointer.recover_if_possible()
        kept = (self.history.state(), {n: h.state() for n, h in self.task_histories.items()},
                self.optimizer_step)
        self.checkpointer.recover_if_possible(importance_key=importance_key)
        self.history.load_state(kept[0])
        for name, state in kept[1].items():
            self.task_histories[name].load_state(state)
        self.optimizer_step = max(kept[2], self.optimizer_step)

    # ------------------------------------------------------------------ the end
    def test_tasks(self):
        """Each task tested at its own best dev checkpoint by its recipe's scoring
        (``<output_folder>/<TASK>/results.json``), recorded as coming from the exported
        encoder's run (its strategy and ``mtl.json``): call after :meth:`export`."""
        self._tick()
        provenance = read_provenance(self.hparams.export_folder)
        unwrap(self.modules.upstream).eval()
        for name in self.names:
            task = self.tasks[name]
            self.recover(self._task_importance(name))
            brain = task.brain
            brain.modules["featurizer"] = unwrap(self.modules[f"{name}_featurizer"])
            brain.modules["head"] = unwrap(self.modules[f"{name}_head"])
            task.hparams["upstream"].run_with(unwrap(self.modules.upstream))
            brain.history.load_state(self.task_histories[name].state())
            brain.history.seconds = self.history.seconds
            brain.optimizer_step = self.optimizer_step
            brain._encoder_info = None  # the weights of this checkpoint
            brain.encoder_provenance = provenance
            brain.hparams.strategy = provenance["strategy"]
            brain.run_info["multitask"] = self.multitask_info()
            task.family.test(brain, task.datasets, task.hparams)

    def multitask_info(self):
        return {
            "tasks": self.names,
            "fractions": {name: float(self.tasks[name].hparams["fraction"]) for name in self.names},
            "weighting": self.hparams.weighting,
            "selection": self.hparams.selection,
            "updates": self.optimizer_step,
            "encoder_folder": str(self.hparams.export_folder),
        }

    def export(self):
        """Writes the encoder of the selected checkpoint to ``export_folder`` with
        ``mtl.json`` (main process); returns the record."""
        self.recover(self._selection_importance)
        parent = read_provenance(self.hparams.upstream_source)
        parent_strategy = parent["strategy"] if parent else BASELINE
        best = {}
        for name in self.names:
            history = self.task_histories[name]
            best[name] = {"dev_metric": self.tasks[name].dev_metric, "step": history.best_step,
                          "value": history.best_value, "dev_curve": history.dev_curve}
        selected_step = self.history.best_step
        record = {
            "strategy": "mtl" if parent_strategy == BASELINE else f"{parent_strategy}+mtl",
            "tasks": self.names,
            "fractions": self.multitask_info()["fractions"],
            "updates": self.optimizer_step,
            "max_steps": int(self.hparams.max_steps),
            "selection": {
                "rule": self.hparams.selection,
                "step": selected_step,
                "score": self.history.best_value,
                "dev_at_step": {name: value_at(self.task_histories[name].dev_curve,
                                               selected_step) for name in self.names},
                "normalisation": "mean over tasks of the dev score in percent, error rates "
                                 "as 100 minus the rate" if self.hparams.selection
                                 == "mean_normalised" else None,
            },
            "task_best": best,
            "weighting": {"rule": self.hparams.weighting,
                          "weights_at_selection": self.weighting_module().weights()},
            # The family's root encoder (a rewired parent's own source), as rewiring.json's.
            "source": str((parent or {}).get("source") or self.hparams.upstream_source),
            "parent": str(self.hparams.upstream_source),
            "embedded_encoder": is_embedded_encoder(self.hparams.upstream_source),
            "parent_strategy": parent_strategy,
            "parent_content_hash": self.source_hash,
            "parent_record": parent,
            # The family's root, so that the report groups this encoder with its family.
            "source_content_hash": (parent or {}).get("source_content_hash") or self.source_hash,
            "content_hash": unwrap(self.modules.upstream).content_hash(),
            "profile": self.hparams.run_profile,
            "hyperparameters": {key: getattr(self.hparams, key) for key in (
                "lr", "upstream_lr", "warmup_steps", "eval_every_steps", "seed", "weight_decay")},
            "settings": getattr(self.hparams, "run_identity", None),
            "wall_seconds": round(self.history.seconds, 3),
        }
        extra_files = {}
        data = (parent or {}).get("data")
        if data and data.get("subset_file"):
            # The utterances the parent was rewired on: the ASR recipe still leaves them out.
            record["data"] = data
            extra_files[data["subset_file"]] = str(Path(parent["record"]).parent
                                                   / data["subset_file"])
        if if_main_process():
            export_with_record(unwrap(self.modules.upstream), self.hparams.export_folder,
                               MTL_RECORD_FILE, record, extra_files)
            logger.info("Multi-task encoder written to %s (update %s of %d, by %s)",
                        self.hparams.export_folder, selected_step, self.optimizer_step,
                        self.hparams.selection)
        ddp_barrier()  # every process reads the record next
        return record


def unwrap(module):
    """The module inside a DDP wrapper, or the module itself."""
    return getattr(module, "module", module)


def value_at(curve, step):
    """The value of ``[[step, value], ...]`` at ``step`` (None when it was not evaluated)."""
    return next((value for at, value in curve if at == step), None)

