"""On-disk, memory-mapped per-layer frames of a frozen upstream, for sequence heads.

ASR, SF and SD heads read every frame, so the pooled cache of ``features.py`` does not
serve them. ``FrameCache`` runs the frozen encoder once over the *full* training split
and stores every hidden state of every frame; each ``--fraction`` subset then reads its
utterances by id from that one cache (``FrameFeatures.check_covers``).

On-disk format, in ``<folder>/<encoder hash[:16]>/<manifest hash[:16]>.frames-<fp32|fp16>/``:

* ``frames-<token>.bin``: one flat little-endian array ``[sum_i T_i, L+1, D]`` of the
  stored dtype, each utterance's frames a contiguous block of ``T_i`` rows. Time-major
  ``[T, L+1, D]`` blocks, because SpeechBrain's ``PaddedBatch`` pads the *first* axis of
  each item (and requires the other axes to agree), and because a time window is then a
  contiguous slice. It is read with ``numpy.memmap``: a 100-hour cache is never loaded
  into RAM, only the items asked for are read.
* ``index.json``, written last: format, encoder hash, manifest fingerprint, dtype, shape,
  the data file's name and byte count, and per utterance its id, row offset, frame count
  and audio source (``wav``, ``start``, ``stop``).

Both files are written under temporary names and renamed. An index that is missing,
unreadable, of another configuration, or whose data file is absent or of the wrong size
(truncated) is never read: the cache is extracted again. The data file's name carries a
random token, so an index can only ever describe the data file it was written with.

Before extracting, the bytes needed are computed from the manifest (durations, or the
audio headers for cropped rows) and the CNN frame arithmetic, and checked against
``max_disk_gb`` and the free disk space; a cache that would not fit is refused with the
sizes and what to do instead.

Exactness under padding: as in ``FeatureCache.extract``, utterances of different lengths
share an extraction batch only when padding changes no valid frame
(``SSLUpstream.padding_invariant``); other encoders batch only equal-length utterances. The cached
frames are therefore those of each utterance encoded alone.
"""

import json
import logging
import math
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import speechbrain as sb
import torch
from tqdm import tqdm

from rewire_lobes.data.audio import SAMPLE_RATE, audio_info
from rewire_lobes.downstream.features import manifest_fingerprint
from rewire_lobes.io_utils import atomic_path, write_json_atomic
from rewire_lobes.upstream.encoder import frame_count

logger = logging.getLogger(__name__)

FRAME_CACHE_FORMAT = 1
INDEX_FILE = "index.json"
DATA_PREFIX = "frames-"
STORAGE_DTYPES = {"float32": np.float32, "float16": np.float16}
DTYPE_TAGS = {"float32": "fp32", "float16": "fp16"}
SOURCE_COLUMNS = ("wav", "start", "stop")
BYTES_PER_GB = 1e9
# Room left on the disk beyond the data file: the index and whatever else is writing there.
FREE_SPACE_HEADROOM = 64 * 2**20
# duration * 16000 of an exact duration n / 16000 lands within 1e-9 of n; without this
# slack math.ceil would count a sample too many.
DURATION_SLACK_SAMPLES = 1e-3


class FrameCacheError(RuntimeError):
    """The frame cache cannot serve the request; the message says why and what to do."""


class FrameCacheBudgetError(FrameCacheError, OSError):
    """The cache would exceed its disk budget or the free disk space."""


def cache_bytes(num_frames, num_states, hidden_size, dtype="float32"):
    """Bytes of ``num_frames`` frames of ``num_states`` states of ``hidden_size`` values.

    Example
    -------
    >>> cache_bytes(50, 13, 768, "float16")  # one second of wav2vec2-base
    998400
    """
    return int(num_frames) * int(num_states) * int(hidden_size) * _itemsize(dtype)


def bytes_per_hour(num_states, hidden_size, dtype="float32", frames_per_second=50.0):
    """Disk per hour of audio: the 20 ms frames of the wav2vec 2.0 family by default.

    Example
    -------
    >>> round(bytes_per_hour(25, 1024, "float32") / 1e9, 2)  # wav2vec2-large
    18.43
    """
    return cache_bytes(3600 * frames_per_second, num_states, hidden_size, dtype)


def utterance_samples(row):
    """Samples at 16 kHz that the audio pipeline reads for one manifest row.

    Uncropped rows use the ``duration`` column (rounded up, so the estimate never falls
    short); cropped rows and rows without a duration read the audio header.

    Example
    -------
    >>> utterance_samples({"duration": "1.5", "wav": "unused.wav"})
    24000
    """
    start, stop = _sample_index(row.get("start")), _sample_index(row.get("stop"))
    duration = str(row.get("duration", "")).strip()
    if start is None and stop is None and duration:
        return math.ceil(float(duration) * SAMPLE_RATE - DURATION_SLACK_SAMPLES)
    file_samples, rate, _ = audio_info(row["wav"])
    stop = file_samples if stop is None else min(stop, file_samples)
    return math.ceil(max(stop - (start or 0), 0) * SAMPLE_RATE / rate)


def _sample_index(value):
    text = "" if value is None else str(value).strip()
    return int(text) if text not in ("", "None") else None


def _itemsize(dtype):
    return np.dtype(_storage_dtype(dtype)).itemsize


def _storage_dtype(dtype):
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"frame cache dtype '{dtype}': use one of {sorted(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[dtype]


def _source(row):
    return "\0".join(str(row.get(column, "")) for column in SOURCE_COLUMNS)


class FrameFeatures:
    """The cached frames of one manifest, read memory-mapped, item by item.

    ``features[id]`` is a float32 ``[L+1, T, D]`` tensor, ``features.frames(id)`` the same
    frames time-major ``[T, L+1, D]`` (what ``frame_feature_pipeline`` hands to
    ``PaddedBatch``), ``features.num_frames(id)`` its ``T``. Items are copies: nothing
    written to them reaches the cache.

    Arguments
    ---------
    folder : str
        The cache folder holding ``index.json`` and the data file.
    index : dict
        The parsed, checked ``index.json``.
    """

    def __init__(self, folder, index):
        self.folder = Path(folder)
        self.dtype = index["dtype"]
        self.num_states = int(index["num_states"])
        self.hidden_size = int(index["hidden_size"])
        self.data_path = self.folder / index["data_file"]
        self.total_frames = int(sum(index["num_frames"]))
        self.rows = {
            data_id: (int(offset), int(frames))
            for data_id, offset, frames in zip(index["ids"], index["offsets"],
                                               index["num_frames"])
        }
        self.sources = dict(zip(index["ids"], index["sources"]))
        # Share of the extraction batches' samples that were padding (older caches: None).
        self.padding_share = index.get("padding_share")
        self._memmap = None

    def __getstate__(self):
        # DataLoader workers reopen the map; pickling it would copy the whole file.
        state = dict(self.__dict__)
        state["_memmap"] = None
        return state

    @property
    def ids(self):
        return list(self.rows)

    def __len__(self):
        return len(self.rows)

    def __contains__(self, data_id):
        return data_id in self.rows

    def _array(self):
        if self._memmap is None:
            shape = (self.total_frames, self.num_states, self.hidden_size)
            self._memmap = np.memmap(self.data_path, dtype=_storage_dtype(self.dtype),
                                     mode="r", shape=shape)
        return self._memmap

    def _row(self, data_id):
        try:
            return self.rows[data_id]
        except KeyError:
            raise KeyError(
                f"'{data_id}' is not in the frame cache {self.folder} ({len(self)} utterances); "
                "build the cache from the full training split's dataset, then read subsets "
                "from it"
            ) from None

    def num_frames(self, data_id):
        return self._row(data_id)[1]

    def frames(self, data_id, layer=None):
        """Time-major float32 ``[T, L+1, D]`` frames of ``data_id``; with ``layer``, that
        hidden state alone, ``[T, D]`` (only its values are read from the disk)."""
        offset, frames = self._row(data_id)
        shape = (0, self.hidden_size) if layer is not None else (0, self.num_states,
                                                                  self.hidden_size)
        if frames == 0:
            return torch.zeros(shape)
        block = self._array()[offset: offset + frames]
        if layer is not None:
            block = block[:, layer]
        return torch.from_numpy(np.array(block, dtype=np.float32))

    def __getitem__(self, data_id):
        """Float32 ``[L+1, T, D]`` frames of ``data_id``."""
        return self.frames(data_id).transpose(0, 1).contiguous()

    def check_covers(self, dataset):
        """Raises ``FrameCacheError`` unless every item of ``dataset`` is cached, same audio.

        A ``--fraction`` subset of the training manifest passes; an item the cache does not
        hold, or one whose ``wav``/``start``/``stop`` differ from the cached one, fails.
        """
        missing = [i for i in dataset.data_ids if i not in self.rows]
        changed = [i for i in dataset.data_ids
                   if i in self.rows and self.sources[i] != _source(dataset.data[i])]
        if missing or changed:
            problems = []
            if missing:
                problems.append(f"{len(missing)} ids it does not hold (e.g. {missing[:3]})")
            if changed:
                problems.append(f"{len(changed)} ids with other audio (e.g. {changed[:3]})")
            raise FrameCacheError(
                f"The frame cache {self.folder} was built for another manifest: the dataset "
                f"has {' and '.join(problems)}. Load the cache with the full training split "
                "that this dataset is a subset of."
            )


class FrameCache:
    """Per-layer frames of a frozen upstream, one memory-mapped file per manifest.

    Arguments
    ---------
    folder : str
        Cache root (e.g. ``<output_root>/feature_cache``); see the module docstring.
    upstream : SSLUpstream
        The frozen encoder (on the device extraction should use).
    dtype : str
        ``"float32"`` (exact) or ``"float16"`` (half the disk; relative rounding error at
        most 2**-11 per stored value). Items are float32 either way.
    max_disk_gb : float, optional
        Refuse to build a cache larger than this (GB = 10**9 bytes); ``None``: only the
        free disk space limits it.
    batch_size : int
        Utterances per extraction batch (batches are sorted by length).
    max_batch_seconds : float
        Padded audio per extraction batch, which bounds the memory of ``[L+1, B, T, D]``.
    encoder_hash : str, optional
        ``upstream.content_hash()`` when the caller has it already.

    Example
    -------
    >>> import tempfile
    >>> from rewire_lobes.upstream.encoder import SSLUpstream, save_random_encoder
    >>> upstream = SSLUpstream(save_random_encoder(tempfile.mkdtemp(), size="tiny"))
    >>> cache = FrameCache(tempfile.mkdtemp(), upstream, dtype="float16", max_disk_gb=0.001)
    >>> cache.path_for("ab" * 32).name
    'abababababababab.frames-fp16'
    """

    def __init__(self, folder, upstream, dtype="float32", max_disk_gb=None, batch_size=8,
                 max_batch_seconds=160.0, encoder_hash=None):
        _storage_dtype(dtype)
        self.folder = Path(folder)
        self.upstream = upstream
        self.dtype = dtype
        self.max_disk_gb = max_disk_gb
        self.batch_size = batch_size
        self.max_batch_samples = int(max_batch_seconds * SAMPLE_RATE)
        # Weights and input treatment (do_normalize, padding): another of either is a miss.
        self.encoder_hash = upstream.features_hash(encoder_hash)

    @property
    def num_states(self):
        return self.upstream.num_states

    @property
    def hidden_size(self):
        return self.upstream.hidden_size

    @property
    def allowed_bytes(self):
        """``max_disk_gb`` in whole bytes, or ``None``."""
        return None if self.max_disk_gb is None else round(self.max_disk_gb * BYTES_PER_GB)

    def path_for(self, manifest_hash):
        """The folder of the cache of one manifest."""
        return (self.folder / self.encoder_hash[:16]
                / f"{manifest_hash[:16]}.frames-{DTYPE_TAGS[self.dtype]}")

    def required_bytes(self, dataset):
        """Bytes the cache of ``dataset`` takes, from the manifest alone (no audio decoded)."""
        samples = self._samples(dataset)
        return self._bytes_for(samples)

    def _samples(self, dataset):
        return {data_id: utterance_samples(dataset.data[data_id]) for data_id in dataset.data_ids}

    def _bytes_for(self, samples):
        frames = frame_count(self.upstream.config, torch.tensor(list(samples.values()) or [0]))
        return cache_bytes(int(frames.sum()) if samples else 0, self.num_states,
                           self.hidden_size, self.dtype)

    def load(self, dataset, pipeline_tag="", progressbar=True):
        """The cached frames of ``dataset`` (the full training split), extracted if needed.

        ``dataset`` is a ``DynamicItemDataset`` whose ``sig`` item reads the audio exactly
        as on-the-fly training does; ``pipeline_tag`` names what that pipeline does (gain),
        as for ``FeatureCache.load``. With several processes, extract on the main process
        first (``run_on_main``), then load everywhere.
        """
        manifest_hash = manifest_fingerprint(dataset, pipeline_tag)
        folder = self.path_for(manifest_hash)
        cached = self._read(folder, manifest_hash)
        if cached is not None:
            logger.info("Frame cache hit: %s (%d utterances)", folder, len(cached))
            return cached
        samples = self._samples(dataset)
        needed = self._bytes_for(samples)
        self._check_budget(folder, needed, samples)
        self._clear(folder)
        logger.info("Extracting frames of %d utterances (%.2f GB as %s) to %s",
                    len(dataset), needed / BYTES_PER_GB, self.dtype, folder)
        index = self._extract(dataset, folder, manifest_hash, samples, progressbar)
        write_json_atomic(folder / INDEX_FILE, index)
        return FrameFeatures(folder, index)

    # ------------------------------------------------------------------ reading
    def _expected_header(self, manifest_hash):
        return {
            "format": FRAME_CACHE_FORMAT,
            "encoder_hash": self.encoder_hash,
            "manifest_hash": manifest_hash,
            "dtype": self.dtype,
            "num_states": self.num_states,
            "hidden_size": self.hidden_size,
        }

    def _read(self, folder, manifest_hash):
        index_path = folder / INDEX_FILE
        if not index_path.exists():
            return None
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            logger.warning("Unreadable frame cache index %s (%s); extracting again",
                           index_path, err)
            return None
        expected = self._expected_header(manifest_hash)
        if not isinstance(index, dict) or any(index.get(k) != v for k, v in expected.items()):
            logger.warning("Frame cache %s belongs to another configuration; extracting again",
                           folder)
            return None
        problem = self._data_problem(folder, index)
        if problem:
            logger.warning("Frame cache %s: %s; extracting again", folder, problem)
            return None
        return FrameFeatures(folder, index)

    def _data_problem(self, folder, index):
        """Why the data file cannot be what the index describes, or ``None``."""
        try:
            ids, offsets, frames = index["ids"], index["offsets"], index["num_frames"]
            data_path = folder / index["data_file"]
            declared = int(index["data_bytes"])
        except (KeyError, TypeError, ValueError) as err:
            return f"incomplete index ({err})"
        if not (len(ids) == len(offsets) == len(frames) == len(index.get("sources", ()))):
            return "index lists of different lengths"
        if list(offsets) != [int(o) for o in np.cumsum([0] + list(frames))[:-1]]:
            return "index offsets do not follow the frame counts"
        expected = cache_bytes(sum(frames), self.num_states, self.hidden_size, self.dtype)
        if not data_path.is_file():
            return f"data file {data_path.name} is missing"
        size = data_path.stat().st_size
        if declared != expected or size != expected:
            return (f"data file {data_path.name} holds {size} bytes, expected {expected} "
                    "(truncated?)")
        return None

    # ------------------------------------------------------------------ writing
    def _check_budget(self, folder, needed, samples):
        hours = sum(samples.values()) / SAMPLE_RATE / 3600
        what = (f"Frame cache {folder}: {len(samples)} utterances ({hours:.3g} h of audio) need "
                f"{_gb(needed)} as {self.dtype} ({self.num_states} states x "
                f"{self.hidden_size} dims per frame)")
        cheaper = ("" if self.dtype == "float16"
                   else f", store dtype float16 (about {_gb(needed / 2)})")
        allowed = self.allowed_bytes
        if allowed is not None and needed > allowed:
            raise FrameCacheBudgetError(
                f"{what}, but max_disk_gb allows {_gb(allowed)}. Raise max_disk_gb"
                f"{cheaper}, or run the encoder on the fly (no frame cache)."
            )
        free = shutil.disk_usage(_existing_parent(folder)).free + _stale_bytes(folder)
        if needed + FREE_SPACE_HEADROOM > free:
            raise FrameCacheBudgetError(
                f"{what} (+{_gb(FREE_SPACE_HEADROOM)} headroom), but only "
                f"{_gb(free)} are free on the disk holding it. Free space or "
                f"move the cache folder to a larger disk{cheaper}, or run the encoder on the "
                "fly (no frame cache)."
            )

    def _clear(self, folder):
        """Removes a stale cache: the index first, so no index can outlive its data."""
        (folder / INDEX_FILE).unlink(missing_ok=True)
        for path in _stale_files(folder):
            path.unlink(missing_ok=True)

    @torch.no_grad()
    def _extract(self, dataset, folder, manifest_hash, samples, progressbar):
        device = next(self.upstream.parameters()).device
        self.upstream.eval()
        exact = self.upstream.padding_invariant
        storage = torch.float16 if self.dtype == "float16" else torch.float32
        allowed = self.allowed_bytes
        order = sorted(dataset.data_ids, key=lambda data_id: samples[data_id])
        position = {data_id: i for i, data_id in enumerate(dataset.data_ids)}
        ids, frame_counts = [], []
        written = 0
        valid_samples = batch_samples = 0
        data_file = f"{DATA_PREFIX}{secrets.token_hex(8)}.bin"
        batch = []

        def flush(out):
            nonlocal written, valid_samples, batch_samples
            lengths = torch.tensor([len(sig) for _, sig in batch])
            valid_samples += int(lengths.sum())
            batch_samples += len(batch) * int(lengths.max())
            wavs = torch.zeros(len(batch), int(lengths.max()))
            for row, (_, sig) in enumerate(batch):
                wavs[row, : len(sig)] = sig
            relative = (lengths / lengths.max()).to(device)
            hidden, frame_lens = self.upstream(wavs.to(device), relative)
            for row, (data_id, _) in enumerate(batch):
                block = hidden[:, row, : int(frame_lens[row])].transpose(0, 1).to(storage)
                if not torch.isfinite(block).all():
                    raise FrameCacheError(
                        f"{data_id}: frames overflow {self.dtype} (|value| > "
                        f"{torch.finfo(storage).max:.0f}); use dtype float32"
                    )
                out.write(block.contiguous().cpu().numpy().tobytes())
                written += block.numel() * block.element_size()
                ids.append(data_id)
                frame_counts.append(block.shape[0])
            batch.clear()
            if allowed is not None and written > allowed:
                raise FrameCacheBudgetError(
                    f"Frame cache {folder}: {_gb(written)} written exceeds max_disk_gb "
                    f"({_gb(allowed)}): the manifest durations are shorter than the audio"
                )

        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / data_file) as tmp, open(tmp, "wb") as out:
            with dataset.output_keys_as(["id", "sig"]):
                for data_id in tqdm(order, desc="frames", disable=not progressbar,
                                    dynamic_ncols=True):
                    sig = dataset[position[data_id]]["sig"]
                    if batch and self._starts_new_batch(batch, sig, exact):
                        flush(out)
                    batch.append((data_id, sig))
                if batch:
                    flush(out)
            out.flush()
            os.fsync(out.fileno())
        offsets = np.cumsum([0] + frame_counts)[:-1]
        padding = 1 - valid_samples / batch_samples if batch_samples else 0.0
        logger.info("Extracted %d utterances; padding %.1f %% of the batches' samples",
                    len(ids), 100 * padding)
        return {
            "padding_share": padding,
            **self._expected_header(manifest_hash),
            "data_file": data_file,
            "data_bytes": written,
            "ids": ids,
            "offsets": [int(o) for o in offsets],
            "num_frames": frame_counts,
            "sources": [_source(dataset.data[data_id]) for data_id in ids],
        }

    def _starts_new_batch(self, batch, sig, exact):
        longest = max(len(sig), max(len(s) for _, s in batch))
        return (len(batch) >= self.batch_size
                or (not exact and len(sig) != len(batch[0][1]))
                or (len(batch) + 1) * longest > self.max_batch_samples)


def _gb(num_bytes):
    return f"{num_bytes / BYTES_PER_GB:.4g} GB"


def _existing_parent(path):
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def _stale_files(folder):
    """Data files of an earlier build and temporaries of a killed one."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.is_file() and (p.name.startswith(DATA_PREFIX)
                                or p.name.startswith(f".{DATA_PREFIX}")
                                or p.name.startswith(f".{INDEX_FILE}."))]


def _stale_bytes(folder):
    return sum(p.stat().st_size for p in _stale_files(Path(folder)))


# ---------------------------------------------------------------------- data pipelines
def frame_feature_pipeline(features):
    """``id -> feats [T, L+1, D], frame_len`` from a loaded ``FrameFeatures``.

    Time-major, because ``PaddedBatch`` pads the first axis of each item: a batch then
    holds ``feats`` as ``PaddedData([B, T_max, L+1, D], relative lengths)``, zero-padded,
    and ``frame_len`` as a LongTensor ``[B]``. ``frame_batch`` turns that into the
    upstream's layout.

    Example
    -------
    >>> class Stub:
    ...     def frames(self, data_id):
    ...         return torch.ones(int(data_id), 3, 2)
    >>> dataset = sb.dataio.dataset.DynamicItemDataset({"4": {}, "2": {}})
    >>> dataset.add_dynamic_item(frame_feature_pipeline(Stub()))
    >>> dataset.set_output_keys(["id", "feats", "frame_len"])
    >>> batch = sb.dataio.batch.PaddedBatch([dataset[0], dataset[1]])
    >>> hidden, frame_lens = frame_batch(batch.feats, batch.frame_len)
    >>> tuple(hidden.shape), frame_lens.tolist()
    ((3, 2, 4, 2), [4, 2])
    """

    @sb.utils.data_pipeline.takes("id")
    @sb.utils.data_pipeline.provides("feats", "frame_len")
    def read(data_id):
        frames = features.frames(data_id)
        yield frames
        yield frames.shape[0]

    return read


def frame_batch(feats, frame_len=None):
    """A padded batch of cached frames in the upstream's layout.

    Arguments
    ---------
    feats : PaddedData
        ``batch.feats`` of a ``PaddedBatch``: data ``[B, T, L+1, D]``, relative lengths.
    frame_len : torch.Tensor, optional
        ``batch.frame_len`` (exact frame counts); otherwise computed from the relative
        lengths.

    Returns
    -------
    hidden : torch.Tensor
        ``[L+1, B, T, D]`` (a view), padded frames zero, as ``SSLUpstream`` returns them.
    frame_lens : torch.Tensor
        Valid frames per utterance ``[B]``.
    """
    data, lengths = feats
    if data.dim() != 4:
        raise ValueError(f"expected cached frames shaped [B, T, L+1, D], got {tuple(data.shape)}")
    if frame_len is None:
        frame_lens = torch.round(lengths.to(data.device).double() * data.shape[1]).long()
    else:
        frame_lens = torch.as_tensor(frame_len, device=data.device).long()
    return data.permute(2, 0, 1, 3), frame_lens


__all__ = [
    "FrameCache",
    "FrameFeatures",
    "FrameCacheError",
    "FrameCacheBudgetError",
    "frame_feature_pipeline",
    "frame_batch",
    "cache_bytes",
    "bytes_per_hour",
    "utterance_samples",
]
