"""On-disk cache of frozen-upstream features for utterance-level heads.

The SUPERB utterance head is ``Linear → mean pool → Linear`` on top of the weighted sum
of layers. The weighted sum and the projector are linear, so both commute with mean
pooling over the valid frames:

    classifier(mean_t(P(sum_l w_l h_l[t]))) == classifier(P(sum_l w_l mean_t(h_l[t])))

The frozen encoder therefore needs to run only once per utterance: we store the
per-layer mean-pooled vectors ``[L+1, D]`` and train the featurizer and head on them.
With ``layer_norm`` (s3prl's ``--upstream_feature_normalize``, a per-frame layer norm of
each state before the sum), the cache stores the means of the *normalised* frames, which
keeps the identity exact.

A cache file is keyed by the encoder's content hash, the manifest's fingerprint (ids,
paths, crop offsets, file sizes and times, audio pipeline) and the layer-norm flag, so a
different encoder or a changed file never reads stale vectors. Files are written
atomically.

Exactness under padding: ``SSLUpstream`` gives an utterance the same features alone or
in a padded batch (its default ``exact_padding``; see its docstring), so extraction batches
utterances of any lengths, sorted by length to keep padding, and so work, small. An
upstream built with ``exact_padding=False`` whose features do depend on padding (a
group-norm front-end, data2vec-audio) is batched only over utterances of identical length
and runs the rest one by one.
"""

import hashlib
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rewire_lobes.io_utils import atomic_path
from rewire_lobes.upstream.pooling import masked_mean

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1


def pool_states(hidden, frame_lens, layer_norm=False):
    """Per-layer mean over the valid frames: ``[L+1, B, T, D]`` → ``[B, L+1, D]``."""
    if layer_norm:
        hidden = F.layer_norm(hidden, hidden.shape[-1:])
    return masked_mean(hidden, frame_lens).transpose(0, 1)


def manifest_fingerprint(dataset, pipeline_tag="", columns=("wav", "start", "stop")):
    """sha256 of what decides the cached vectors of a ``DynamicItemDataset``.

    Covers each id, the given columns, and the size and modification time of its audio
    file (so a regenerated or replaced file invalidates the cache), plus
    ``pipeline_tag`` (e.g. the gain applied when reading).
    """
    digest = hashlib.sha256(f"format={CACHE_FORMAT};{pipeline_tag}".encode())
    for data_id in dataset.data_ids:
        row = dataset.data[data_id]
        digest.update(data_id.encode())
        for column in columns:
            digest.update(f"\0{row.get(column, '')}".encode())
        try:
            stat = os.stat(row["wav"])
            digest.update(f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"\0missing")
        digest.update(b"\n")
    return digest.hexdigest()


class PooledFeatures:
    """The cached vectors of one manifest: ``features[id] -> [L+1, D]``."""

    def __init__(self, ids, vectors):
        self.index = {data_id: i for i, data_id in enumerate(ids)}
        self.vectors = vectors

    def __getitem__(self, data_id):
        return self.vectors[self.index[data_id]]

    def __len__(self):
        return len(self.index)


class FeatureCache:
    """Pooled per-layer features of a frozen upstream, one file per manifest.

    Arguments
    ---------
    folder : str
        Cache root; files go to ``<folder>/<encoder hash[:16]>/<manifest hash[:16]>[-ln].pt``.
    upstream : SSLUpstream
        The frozen encoder (on the device extraction should use).
    layer_norm : bool
        Store means of per-frame layer-normalised states (see the module docstring).
    batch_size : int
        Utterances per extraction batch.
    encoder_hash : str, optional
        ``upstream.content_hash()`` when the caller has it already (hashing a Large
        encoder takes seconds).
    """

    def __init__(self, folder, upstream, layer_norm=False, batch_size=16, encoder_hash=None):
        self.folder = Path(folder)
        self.upstream = upstream
        self.layer_norm = layer_norm
        self.batch_size = batch_size
        # Weights and input treatment (do_normalize, padding): another of either is a miss.
        self.encoder_hash = upstream.features_hash(encoder_hash)

    def path_for(self, manifest_hash):
        suffix = "-ln" if self.layer_norm else ""
        return self.folder / self.encoder_hash[:16] / f"{manifest_hash[:16]}{suffix}.pt"

    def load(self, dataset, pipeline_tag="", progressbar=True):
        """The cached features of ``dataset``, extracting them first if needed.

        ``dataset`` is a ``DynamicItemDataset`` whose ``sig`` item reads the audio exactly
        as on-the-fly training does (crop, gain).
        """
        manifest_hash = manifest_fingerprint(dataset, pipeline_tag)
        path = self.path_for(manifest_hash)
        cached = self._read(path, manifest_hash)
        if cached is not None:
            logger.info("Feature cache hit: %s (%d utterances)", path, len(cached))
            return cached
        logger.info("Extracting pooled features of %d utterances to %s",
                    len(dataset), path)
        ids, vectors = self.extract(dataset, progressbar)
        with atomic_path(path) as tmp:
            torch.save(
                {
                    "format": CACHE_FORMAT,
                    "encoder_hash": self.encoder_hash,
                    "manifest_hash": manifest_hash,
                    "layer_norm": self.layer_norm,
                    "ids": ids,
                    "features": vectors,
                },
                tmp,
            )
        return PooledFeatures(ids, vectors)

    def _read(self, path, manifest_hash):
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # a truncated or foreign file: rebuild it
            logger.warning("Unreadable feature cache %s (%s); extracting again", path, err)
            return None
        expected = (CACHE_FORMAT, self.encoder_hash, manifest_hash, self.layer_norm)
        found = tuple(blob.get(k) for k in ("format", "encoder_hash", "manifest_hash",
                                             "layer_norm"))
        if found != expected:
            logger.warning("Feature cache %s belongs to another configuration; extracting again",
                           path)
            return None
        return PooledFeatures(blob["ids"], blob["features"])

    @torch.no_grad()
    def extract(self, dataset, progressbar=True):
        """Runs the frozen upstream over ``dataset``: ``(ids, float32 [N, L+1, D])``."""
        device = next(self.upstream.parameters()).device
        self.upstream.eval()
        padding_invariant = self.upstream.padding_invariant
        order = sorted(dataset.data_ids, key=lambda i: float(dataset.data[i].get("duration", 0)))
        vectors = {}
        batch = []

        def flush():
            ids = [data_id for data_id, _ in batch]
            lengths = torch.tensor([len(sig) for _, sig in batch])
            wavs = torch.zeros(len(batch), int(lengths.max()))
            for row, (_, sig) in enumerate(batch):
                wavs[row, : len(sig)] = sig
            hidden, frame_lens = self.upstream(
                wavs.to(device), (lengths / lengths.max()).to(device)
            )
            pooled = pool_states(hidden, frame_lens, self.layer_norm).float().cpu()
            vectors.update(zip(ids, pooled))
            batch.clear()

        position = {data_id: i for i, data_id in enumerate(dataset.data_ids)}
        with dataset.output_keys_as(["id", "sig"]):
            for data_id in tqdm(order, desc="features", disable=not progressbar,
                                dynamic_ncols=True):
                sig = dataset[position[data_id]]["sig"]
                if batch and (len(batch) >= self.batch_size
                              or (not padding_invariant and len(sig) != len(batch[0][1]))):
                    flush()
                batch.append((data_id, sig))
            if batch:
                flush()
        ids = list(dataset.data_ids)
        return ids, torch.stack([vectors[data_id] for data_id in ids])


def ensure_cached(cache, dataset, tag, progressbar):
    """Builds ``dataset``'s cache (a ``FeatureCache`` or ``FrameCache``) if missing.

    For ``run_on_main``: it returns nothing, so nothing is broadcast; every process then
    loads the cache file.
    """
    cache.load(dataset, tag, progressbar=progressbar)
