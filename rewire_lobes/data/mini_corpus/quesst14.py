"""The mini QUESST 2014: 8 kHz documents and queries, language keys and NIST STD ground truth.

English documents hold the positive terms of each split (the last two terms of a split
occur in none); a few Czech documents and one Czech query per split stand in for the
real corpus's other languages.
"""

from rewire_lobes.data.mini_corpus.context import random_seed
from rewire_lobes.data.mini_corpus.files import write_lines
from rewire_lobes.data.mini_corpus.markers import GENERATOR_VERSION
from rewire_lobes.data.mini_corpus.noise import random_noise_color
from rewire_lobes.data.mini_corpus.recording import Take
from rewire_lobes.data.mini_corpus.text import clause
from rewire_lobes.data.mini_corpus.voices import sample_voices

QUESST_RATE = 8000
QUESST_TERMS = {  # the last two of each split occur in no document
    "dev": (
        "yellow bicycle",
        "thunderstorm",
        "chocolate cake",
        "telephone",
        "umbrella",
        "kangaroo",
        "orange juice",
        "library",
    ),
    "eval": (
        "saxophone",
        "hospital",
        "volcano",
        "paper airplane",
        "strawberry",
        "elephant",
        "pineapple",
        "lighthouse",
    ),
}
QUESST_NEGATIVES = 2
QUESST_OTHER_LANGUAGE = {  # language tag, espeak-ng voice, carrier phrases, one term per split
    "tag": "czech",
    "voice": "cs",
    "carriers": (
        "dnes ráno jsme šli na",
        "večer jsme hledali",
        "můj bratr mluvil o",
        "na stole leží",
    ),
    "terms": {"dev": "nádraží", "eval": "zmrzlina"},
}
QUESST_DOCUMENTS = 36


def write_quesst14(ctx):
    """Writes the documents, both query sets and the scoring files; returns ``(counts, items)``."""
    rng = ctx.rng("quesst14")
    folder = ctx.staging["quesst14Database"]
    other = QUESST_OTHER_LANGUAGE
    n_english = ctx.count(QUESST_DOCUMENTS, 6)
    n_other = ctx.count(len(other["carriers"]), 2)

    # which documents hold which terms: each positive term in 1 to 3 of them, at most 2 per one
    english_terms = {
        split: terms[: len(terms) - QUESST_NEGATIVES] for split, terms in QUESST_TERMS.items()
    }
    holders = [[] for _ in range(n_english)]
    for split, terms in english_terms.items():
        for term in terms:
            free = [d for d in range(n_english) if len(holders[d]) < 2] or list(range(n_english))
            for doc in rng.choice(free, min(len(free), int(rng.integers(1, 4))), replace=False):
                holders[doc].append((split, term))
    other_holders = [[("dev", other["terms"]["dev"])], [("eval", other["terms"]["eval"])]]
    other_holders += [[] for _ in range(n_other - 2)]

    voices = sample_voices(rng, 16)
    other_voices = sample_voices(rng, 4, languages=(other["voice"],))
    documents = []
    for index, terms in enumerate(holders):
        phrases = [" ".join(clause(rng))]
        for _, term in terms:
            phrases += [term, " ".join(clause(rng))]
        documents.append(("nnenglish", phrases, terms, voices[index % 10]))
    for index, terms in enumerate(other_holders):
        phrases = [other["carriers"][index % len(other["carriers"])]] + [term for _, term in terms]
        documents.append((other["tag"], phrases, terms, other_voices[index % 2]))
    order = rng.permutation(len(documents)).tolist()
    documents = [documents[i] for i in order]

    jobs, items = [], []
    for number, (language, phrases, terms, voice) in enumerate(documents, start=1):
        docid = f"quesst14_{number:05d}"
        take = Take(
            phrases=tuple(phrases),
            voice=voice,
            seed=random_seed(rng),
            sample_rate=QUESST_RATE,
            snr_db=float(rng.uniform(10, 30)),
            noise=random_noise_color(rng),
        )
        jobs.append((take, folder / "Audio" / f"{docid}.wav"))
        items.append(
            {
                "id": docid,
                "kind": "document",
                "language": language,
                "text": " | ".join(phrases),
                "terms": [{"split": s, "term": t} for s, t in terms],
            }
        )
    queries = {}
    for split, terms in QUESST_TERMS.items():
        spoken = [(term, "nnenglish", voices[10 + i % 6]) for i, term in enumerate(terms)]
        spoken.insert(
            int(rng.integers(len(spoken) + 1)),
            (other["terms"][split], other["tag"], other_voices[2]),
        )
        for number, (term, language, voice) in enumerate(spoken, start=1):
            qid = f"quesst14_{split}_{number:04d}"
            queries[(split, term)] = qid
            take = Take(
                phrases=(term,),
                voice=voice,
                seed=random_seed(rng),
                sample_rate=QUESST_RATE,
                snr_db=float(rng.uniform(15, 35)),
                noise=random_noise_color(rng),
                pad=(0.1, 0.25),
            )
            jobs.append((take, folder / f"{split}_queries" / f"{qid}.wav"))
            items.append({"id": qid, "kind": f"{split}_query", "language": language, "text": term})
    for item, meta in zip(items, ctx.render(jobs)):
        item.update(meta)

    _write_quesst_lists(folder, items)
    for split in QUESST_TERMS:
        _write_quesst_groundtruth(
            folder / "scoring" / f"groundtruth_quesst14_{split}", split, items, queries
        )
    counts = {
        "documents": len(documents),
        "dev_queries": len(QUESST_TERMS["dev"]) + 1,
        "eval_queries": len(QUESST_TERMS["eval"]) + 1,
    }
    return counts, items


def _write_quesst_lists(folder, items):
    """``scoring/language_key_{utterances,dev,eval}.lst``: ``quesst14Database/<path> <lang>``."""
    lists = {
        "document": ("utterances", "Audio"),
        "dev_query": ("dev", "dev_queries"),
        "eval_query": ("eval", "eval_queries"),
    }
    for kind, (name, subfolder) in lists.items():
        write_lines(
            folder / "scoring" / f"language_key_{name}.lst",
            [
                f"quesst14Database/{subfolder}/{i['id']}.wav {i['language']}"
                for i in items
                if i["kind"] == kind
            ],
        )


def _write_quesst_groundtruth(folder, split, items, queries):
    """NIST STD ground truth: ECF (the documents), term list (the queries), RTTM (occurrences).

    RTTM lines are ``LEXEME <doc> 1 <tbeg> <dur> <query id> lex <NA> <NA>``; a document
    with no occurrence of this split's queries gets one ``NO_KEYWORD`` line.
    """
    documents = [i for i in items if i["kind"] == "document"]
    excerpts = [
        f'<excerpt audio_filename="{d["id"]}" channel="1" tbeg="0.000" dur="{d["duration"]:.3f}" '
        f'source_type="splitcts"/>'
        for d in documents
    ]
    total = sum(d["duration"] for d in documents)
    write_lines(
        folder / "quesst14.ecf.xml",
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ecf source_signal_duration="{total:.3f}" language="multiple" '
            f'version="mini-{GENERATOR_VERSION}">',
        ]
        + [f"  {e}" for e in excerpts]
        + ["</ecf>"],
    )
    terms = [
        f'  <term termid="{qid}"><termtext>{qid}</termtext></term>'
        for (s, _), qid in queries.items()
        if s == split
    ]
    write_lines(
        folder / f"quesst14_{split}.tlist.xml",
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<termlist ecf_filename="quesst14.ecf.xml" language="multiple" encoding="UTF-8" '
            f'version="mini-{GENERATOR_VERSION}">',
        ]
        + terms
        + ["</termlist>"],
    )
    rttm = []
    for doc in documents:
        found = False
        phrases = iter(doc["phrases"][1:])
        for term in doc["terms"]:
            start, end = next(phrases)
            if doc["language"] == "nnenglish":
                next(phrases)  # the clause that follows an English term
            if term["split"] == split:
                rttm.append(
                    f"LEXEME {doc['id']} 1 {start:.3f} {end - start:.3f} "
                    f"{queries[(split, term['term'])]} lex <NA> <NA>"
                )
                found = True
        if not found:
            rttm.append(
                f"LEXEME {doc['id']} 1 0.000 {doc['duration']:.3f} NO_KEYWORD lex <NA> <NA>"
            )
    write_lines(folder / f"quesst14_{split}.rttm", rttm)

