"""``RewireBrain``: contrastive rewiring of an SSL encoder (Yang et al., 2022) as an sb.Brain.

One training batch holds ``B`` utterances; each yields an anchor view and a positive view
(:class:`rewire_lobes.rewiring.contrastive.PairMaker`). All ``2B`` views go through the encoder in
one padded forward pass, or in similar-length chunks of ``forward_chunk_size`` views (one
at a time on a CPU, where that is faster), or, with ``grad_cache: True``, in chunks whose
gradients are exactly those of the whole batch. Each view becomes the mean over valid frames of the
uniform average of all hidden states, and InfoNCE (τ = 0.04) pulls pairs together, with
the views of every DDP rank as negatives.

Training is counted in optimizer updates (``max_steps`` → ``optimizer_step_limit``); a
checkpoint is written every ``ckpt_interval_steps`` updates and when the limit is reached,
so a killed run resumes where it stopped, and a rerun with a larger ``max_steps``
continues the same run; a smaller one is refused (:meth:`RewireBrain.on_fit_start`) rather
than exporting the longer run it would resume. ``export`` writes the rewired encoder
directory.
"""

import json
import logging
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.checkpoints import (
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import if_main_process

from rewire_lobes.errors import OptionError
from rewire_lobes.plotting import pyplot, running_mean, save_png
from rewire_lobes.rewiring.contrastive import (
    encode_views,
    global_info_nce,
    grad_cache_backward,
    pool_utterances,
)
from rewire_lobes.runs.identity import RunFolderError
from rewire_lobes.runs.loader_wait import TimedLoader
from rewire_lobes.runs.random_state import RandomState
from rewire_lobes.upstream.encoder import trainable_parameters
from rewire_lobes.upstream.export import export_with_record

logger = logging.getLogger(__name__)

EXPORT_RECORD = "rewiring.json"
POOL_LAYERS = ("all", "last")  # pool_utterances' choices, checked before any data is read


@register_checkpoint_hooks
class LossHistory:
    """The per-update loss curve ``[[update, loss], ...]``, saved with every checkpoint."""

    def __init__(self):
        self.curve = []

    def append(self, step, loss):
        self.curve.append([int(step), float(loss)])

    def mean_since(self, step):
        values = [loss for s, loss in self.curve if s > step]
        return sum(values) / len(values) if values else float("nan")

    @mark_as_saver
    def _save(self, path):
        Path(path).write_text(json.dumps(self.curve), encoding="utf-8")

    @mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        self.curve = json.loads(Path(path).read_text(encoding="utf-8"))


class RewireBrain(sb.Brain):
    """Contrastive rewiring. ``modules`` must hold ``encoder`` (an ``SSLUpstream``).

    Hyperparameters read: ``pair_maker``, ``temperature``, ``symmetric_loss``,
    ``pool_layers``, ``grad_cache``, ``grad_cache_chunk_size``, ``loss_history``,
    ``train_logger``, ``log_interval``, ``strategy``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Kept unwrapped: after on_fit_start, self.modules.encoder may be a DDP wrapper.
        self.upstream = self.modules["encoder"]
        self.source_hash = self.upstream.content_hash()
        # Before on_fit_start wraps the encoder in DDP, which registers what is trainable.
        self.trainable = trainable_parameters(self.upstream)
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("encoder", self.upstream)
            self.random_state = RandomState()
            self.checkpointer.add_recoverable("random_state", self.random_state)
        if self.grad_accumulation_factor != 1:
            raise OptionError(
                f"--grad_accumulation_factor must be 1, got {self.grad_accumulation_factor}: "
                "accumulating InfoNCE over small batches is not InfoNCE over a large one. "
                "Pass a larger --batch_size with --grad_cache True instead."
            )
        pool_layers = getattr(self.hparams, "pool_layers", "all")
        if pool_layers not in POOL_LAYERS:
            raise OptionError(
                f"--pool_layers must be {' or '.join(POOL_LAYERS)}, got {pool_layers!r}"
            )
        self._epoch_start_step = 0
        self._last_saved_step = None
        self.train_loader_wait = None

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage != sb.Stage.TRAIN:
            return loader
        # How long the loop waits for audio: recorded per epoch and in rewiring.json.
        self.train_loader_wait = TimedLoader(loader)
        return self.train_loader_wait

    # ------------------------------------------------------------------ optimisation

    def init_optimizers(self):
        params = self.trainable
        if not params:
            raise ValueError("the encoder has no trainable parameter (was it loaded frozen?)")
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"optimizer": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)
        logger.info(
            "Rewiring %.2fM of the encoder's %.2fM parameters",
            sum(p.numel() for p in params) / 1e6,
            sum(p.numel() for p in self.upstream.parameters()) / 1e6,
        )

    def view_groups(self, batch):
        """The batch's padded views: anchors, positives and, when drawn, hard negatives."""
        groups = [batch.anchor, batch.positive]
        if self.hparams.pair_maker.hard_negatives:
            groups.append(batch.negative)
        return groups

    def batch_views(self, batch):
        """The views of a batch as 1-D tensors on the device: anchors, then positives (then
        hard negatives)."""
        views = []
        for padded in self.view_groups(batch):
            data = padded.data.to(self.device, non_blocking=True)
            lengths = torch.round(padded.lengths * data.shape[1]).long().tolist()
            views.extend(data[row, :length] for row, length in enumerate(lengths))
        return views

    def encode(self, wavs, rel_lens):
        """Utterance vectors ``[n, D]`` (float32) of padded waveforms."""
        hidden, frame_lens = self.modules.encoder(wavs, rel_lens.to(wavs.device))
        return pool_utterances(hidden, frame_lens, self.hparams.pool_layers)

    def compute_forward(self, batch, stage):
        embeddings = encode_views(self.encode, self.batch_views(batch),
                                  getattr(self.hparams, "forward_chunk_size", None))
        return embeddings.chunk(len(self.view_groups(batch)))

    def loss(self, anchors, positives, negatives=None):
        return global_info_nce(
            anchors, positives, self.hparams.temperature, self.hparams.symmetric_loss,
            negatives,
        )

    def compute_objectives(self, predictions, batch, stage):
        return self.loss(*predictions)

    def fit_batch(self, batch):
        if not self.hparams.grad_cache:
            return super().fit_batch(batch)
        self.on_fit_batch_start(batch, True)

        def encode(wavs, rel_lens):
            with self.training_ctx:
                return self.encode(wavs, rel_lens)

        loss = grad_cache_backward(
            encode,
            self.batch_views(batch),
            self.loss,
            self.hparams.grad_cache_chunk_size,
            self.device,
            sync_context=lambda sync: self.no_sync(not sync),
            scale=self.scaler.scale,
            num_groups=len(self.view_groups(batch)),
        )
        self.check_loss_isfinite(loss)
        self.optimizers_step()
        self.on_fit_batch_end(batch, None, loss, True)
        return loss.detach().cpu()

    # ------------------------------------------------------------------ bookkeeping

    def on_fit_start(self):
        super().on_fit_start()
        limit = self.optimizer_step_limit
        if limit is not None and self.optimizer_step > limit:
            # Recovered from the checkpoint: training would stop at once and export the
            # longer run as if it had `limit` updates.
            raise RunFolderError(
                f"{self.checkpointer.checkpoints_dir} holds a run of {self.optimizer_step} updates, more than --max_steps "
                f"{limit}: pass --max_steps {self.optimizer_step} or more to continue that run, "
                f"or another --output_folder (or --output_root) for a run of {limit} updates"
            )
        if self.optimizer_step:
            logger.info("Resuming from update %d", self.optimizer_step)

    def on_fit_batch_start(self, batch, should_step):
        if self.checkpointer is not None:
            self.random_state.apply_recovered(end_of_epoch=False)

    def on_stage_start(self, stage, epoch=None):
        if stage == sb.Stage.TRAIN:
            if self.checkpointer is not None:
                self.random_state.apply_recovered(end_of_epoch=True)
            # Masks, halves and Mixed choices are redrawn every epoch (data pipeline).
            self.hparams.pair_maker.epoch = epoch
            self._epoch_start_step = self.optimizer_step

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        if not should_step:
            return
        step = self.optimizer_step
        self.hparams.loss_history.append(step, loss.item())
        if step % self.hparams.log_interval == 0:
            self.hparams.train_logger.log_stats(
                stats_meta={"update": step, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.hparams.loss_history.mean_since(
                    step - self.hparams.log_interval)},
            )
        if self._optimizer_step_limit_exceeded:
            # Saved here, before the loader fetches another batch, so that a rerun with a
            # larger max_steps resumes at exactly the next batch.
            self._save_intra_epoch_ckpt()
            self._last_saved_step = step

    def on_stage_end(self, stage, stage_loss, epoch=None):
        if stage != sb.Stage.TRAIN:
            return
        updates = self.optimizer_step - self._epoch_start_step
        wait = self.train_loader_wait
        if wait is not None:
            wait.book_busy()
        if updates > 0:
            stats = {"loss": self.hparams.loss_history.mean_since(self._epoch_start_step)}
            if wait is not None:
                stats["data_wait_share"] = round(wait.wait_share(), 4)
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "updates": self.optimizer_step},
                train_stats=stats,
            )
        if not self._optimizer_step_limit_exceeded and self._last_saved_step != self.optimizer_step:
            self.checkpointer.save_and_keep_only(
                meta={"updates": self.optimizer_step}, end_of_epoch=True, num_to_keep=1
            )
            self._last_saved_step = self.optimizer_step

    # ------------------------------------------------------------------ outputs

    def export(self, directory, record, extra_files=None):
        """Writes the rewired encoder (HF layout + ``rewiring.json``) on the main process.

        ``record`` (a dict) is completed with the strategy, update count, loss curve and
        the source and rewired encoders' content hashes. ``extra_files`` maps a file name
        in the export to the file to copy there (e.g. the subset's ID list).
        """
        if not if_main_process():
            return None
        directory = Path(directory)
        record = dict(record)
        record.update({
            "strategy": self.hparams.strategy,
            "updates": self.optimizer_step,
            "source_content_hash": self.source_hash,
            "content_hash": self.upstream.content_hash(),
            "loss_curve": self.hparams.loss_history.curve,
        })
        wait = self.train_loader_wait
        if wait is not None:
            # The loader's settings, and the wait of this process's updates only (a resumed
            # run's earlier ones are not in it).
            record["data_loading"] = {"num_workers": wait.num_workers,
                                      "pin_memory": wait.pin_memory, **wait.summary()}
        export_with_record(self.upstream, directory, EXPORT_RECORD, record, extra_files)
        logger.info("Rewired encoder written to %s (%d updates)", directory, self.optimizer_step)
        return directory

    def plot_loss(self, path):
        """Loss per update and its running mean, as a PNG (main process)."""
        if not if_main_process() or not self.hparams.loss_history.curve:
            return
        steps, losses = zip(*self.hparams.loss_history.curve)
        window = max(2, len(losses) // 10) if len(losses) >= 4 else 1
        running = running_mean(losses, window)
        fig, axis = pyplot().subplots(figsize=(6, 3.5))
        axis.plot(steps, losses, lw=0.6, alpha=0.5, label="loss per update")
        axis.plot(steps, running, lw=1.5, label=f"running mean ({window})")
        axis.set_xlabel("update")
        axis.set_ylabel("InfoNCE loss")
        axis.set_title(f"Rewiring: {self.hparams.strategy}")
        axis.legend()
        save_png(fig, path, dpi=120)
