"""Shared fixtures: tiny random encoders saved the way real checkpoints are."""

import os

import pytest

# Tests never reach a model hub; a hub id must fail fast with our message.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """Returns ``make(model_type="wav2vec2", feat_extract_norm="group") -> encoder dir``."""
    from rewire_lobes.upstream.encoder import save_random_encoder

    made = {}

    def make(model_type="wav2vec2", feat_extract_norm="group"):
        key = (model_type, feat_extract_norm)
        if key not in made:
            folder = tmp_path_factory.mktemp("encoders") / f"{model_type}-{feat_extract_norm}"
            made[key] = str(save_random_encoder(folder, "tiny", model_type, feat_extract_norm))
        return made[key]

    return make


@pytest.fixture(scope="session")
def mini_corpus():
    """Root of the embedded mini corpus (``data/mini``), generated once if absent.

    Generated into the repository's default folder (gitignored), so recipe tests and
    later sessions reuse it; a complete corpus makes this a no-op.
    """
    from rewire_lobes.data.mini_corpus import ensure_mini_corpus

    return ensure_mini_corpus()
