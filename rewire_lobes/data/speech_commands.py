"""TensorFlow's hash split of Speech Commands, for the prepare step and the mini corpus alike.

The dataset's own rule (its README and TensorFlow's ``input_data.which_set``), which
SUPERB applies too (``superb_protocol.md`` §2): the speaker part of the file name (before
``_nohash_``) is hashed with sha1, ``p = (int mod 2^27) * 100 / (2^27 - 1)``;
``p < 10`` is validation, ``10 <= p < 20`` testing, the rest train. All clips of one
speaker land in the same part, and a part never changes when files are added.

Example
-------
>>> hash_split("yes/026290a7_nohash_0.wav")
'validation'
"""

import hashlib
import re
from pathlib import Path

MAX_NUM_WAVS_PER_CLASS = 2**27 - 1  # TensorFlow's constant
VALIDATION_PERCENTAGE = 10
TESTING_PERCENTAGE = 10


def hash_percentage(filename):
    """Where the speaker of ``filename`` falls in ``[0, 100]`` under the hash rule.

    Arguments
    ---------
    filename : str or Path
        A clip's path or name, ``<speaker>_nohash_<n>.wav``; the folders are ignored.

    Returns
    -------
    float

    Example
    -------
    >>> hash_percentage("026290a7_nohash_0.wav") == hash_percentage("no/026290a7_nohash_3.wav")
    True
    """
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    return (digest % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)


def hash_split(filename):
    """``"validation"``, ``"testing"`` or ``"train"``: the part of the dataset ``filename`` is in.

    Arguments
    ---------
    filename : str or Path
        A clip's path or name, ``<speaker>_nohash_<n>.wav``.

    Returns
    -------
    str

    Example
    -------
    >>> hash_split("yes/026290a7_nohash_0.wav")
    'validation'
    """
    percent = hash_percentage(filename)
    if percent < VALIDATION_PERCENTAGE:
        return "validation"
    if percent < VALIDATION_PERCENTAGE + TESTING_PERCENTAGE:
        return "testing"
    return "train"
