"""The embedded mini corpus: six small synthetic corpora in their real on-disk layouts.

Every recipe runs offline on data generated here, written exactly as the real dataset
lays itself out on disk, so the same ``<dataset>_prepare.py`` reads real and mini data:

==========================  ===========================================================
corpus (CLI name)           folders under the output root
==========================  ===========================================================
``librispeech``             ``LibriSpeech/{train-clean-100,dev-clean,test-clean}/...``
``speech_commands``         ``speech_commands_v0.01/`` and ``speech_commands_test_set_v0.01/``
``fluent_speech_commands``  ``fluent_speech_commands_dataset/``
``snips``                   ``SNIPS/`` (as SUPERB's preprocessing leaves Audio-SNIPS)
``diarization``             ``diarization/`` (Kaldi dirs as SUPERB's LibriMix recipe leaves them)
``quesst14``                ``quesst14Database/``
==========================  ===========================================================

Speech comes from espeak-ng: each speaker is a voice (accent + variant) with its own
pitch, speed, word gap, level and room (sox ``reverb``). sox resamples to 16 kHz (8 kHz
for QUESST, as the real one). Noise (white, pink or brown) is added at a random SNR.
Everything random is drawn from ``numpy`` generators seeded by ``(seed, corpus, ...)``
and each recording is a pure function of its plan, so the output is identical for the
same seed, scale and tool versions, whatever the thread scheduling.

Crash safety: each corpus folder is built under a temporary name and renamed when done
(``atomic_dir``); then its marker ``_generation/<corpus>.json`` (the generation manifest:
every file with its labels, voice and noise) is written; ``MINI_CORPUS.json`` comes last.
A rerun with the same arguments finds the markers and returns at once.

The package, one module per job:

==========================  ===========================================================
module                      holds
==========================  ===========================================================
``build``                   the corpus specs, :func:`ensure_mini_corpus`, the summary
``markers``                 completion markers ``_generation/<corpus>.json``, fingerprints
``context``                 what a corpus writer gets: seeded generators, parallel recording
``librispeech`` ...         one module per corpus, writing its real layout
``tools``                   finding and running espeak-ng and sox
``voices``                  the synthetic speakers and how they are drawn
``recording``               one take: synthesis, room, level, placement, speech times
``noise``                   coloured noise, mixing at an SNR, levels
``text``                    the sentence and word generators
``files``                   atomic audio and text writers
==========================  ===========================================================

The hash split the Speech Commands lists follow is :mod:`rewire_lobes.data.speech_commands`.

Example
-------
>>> from rewire_lobes.data.mini_corpus import ensure_mini_corpus
>>> root = ensure_mini_corpus("data/mini", corpora=["speech_commands"])  # doctest: +SKIP
"""

from rewire_lobes.data.mini_corpus.build import (
    CORPORA,
    DEFAULT_FOLDER,
    DEFAULT_SEED,
    REPO_ROOT,
    SUMMARY_FILE,
    CorpusSpec,
    corpus_name,
    ensure_embedded_data,
    ensure_mini_corpus,
    read_manifest,
)
from rewire_lobes.data.mini_corpus.diarization import relocate_kaldi_paths
from rewire_lobes.data.mini_corpus.markers import GENERATOR_VERSION, MARKER_FOLDER
from rewire_lobes.data.mini_corpus.recording import SAMPLE_RATE
from rewire_lobes.data.mini_corpus.snips import SNIPS_VOICES
from rewire_lobes.data.mini_corpus.speech_commands import KEYWORDS
from rewire_lobes.data.mini_corpus.tools import INSTALL_COMMAND, MissingToolError, find_tools
from rewire_lobes.data.speech_commands import hash_split as speech_commands_split

__all__ = [
    "CORPORA",
    "DEFAULT_FOLDER",
    "DEFAULT_SEED",
    "GENERATOR_VERSION",
    "INSTALL_COMMAND",
    "KEYWORDS",
    "MARKER_FOLDER",
    "REPO_ROOT",
    "SAMPLE_RATE",
    "SNIPS_VOICES",
    "SUMMARY_FILE",
    "CorpusSpec",
    "MissingToolError",
    "corpus_name",
    "ensure_embedded_data",
    "ensure_mini_corpus",
    "find_tools",
    "read_manifest",
    "relocate_kaldi_paths",
    "speech_commands_split",
]

