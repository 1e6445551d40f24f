"""Hard negatives for contrastive rewiring: the paper's future work (§5), as an option.

With ``hard_negatives: transcript`` every utterance brings a third view that is nobody's
partner: the neutral (TTS) rendering of the utterance whose transcript is nearest to its
own. It shares words and sounds with the anchor but not its content, so the loss must
tell apart what the transcript says rather than how it sounds overall.

Nearness is the cosine similarity of TF-IDF vectors of character n-grams (2 to 4, within
words), which ranks near-identical phrasings first and is cheap for the paper's 6.6k
utterances. A transcript identical to the anchor's is never its neighbour: its neutral
rendering would be the anchor's own Neutral positive.
"""

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer

from rewire_lobes.errors import DataFileError

ROWS_PER_BLOCK = 1024  # similarity rows computed at once: memory stays O(block x N)


def nearest_transcripts(ids, texts):
    """``{id: the id of the utterance with the nearest other transcript}``.

    Ties go to the utterance listed first, so the result depends only on the inputs.

    Example
    -------
    >>> nearest_transcripts(["a", "b", "c"], ["the cat sat", "the cat sat down", "dogs bark"])
    {'a': 'b', 'b': 'a', 'c': 'b'}
    """
    ids, texts = list(ids), [" ".join(str(t).lower().split()) for t in texts]
    if len(set(texts)) < 2:
        raise DataFileError(
            f"--hard_negatives transcript needs at least two different transcripts, got "
            f"{len(set(texts))} among {len(ids)} utterances"
        )
    vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit_transform(texts)
    text_ids = np.unique(texts, return_inverse=True)[1]
    neighbours = {}
    for start in range(0, len(ids), ROWS_PER_BLOCK):
        block = slice(start, start + ROWS_PER_BLOCK)
        similarity = (vectors[block] @ vectors.T).toarray()
        similarity[text_ids[block, None] == text_ids[None, :]] = -np.inf
        for row, column in enumerate(similarity.argmax(axis=1)):
            neighbours[ids[start + row]] = ids[column]
    return neighbours
