"""Text to read aloud: a small English grammar of names, noun phrases, clauses and sentences."""


def _words(text):
    """The distinct words of ``text``, in order."""
    return tuple(dict.fromkeys(text.split()))


NAMES = _words(
    "john mary thomas anne henry margaret william alice george elizabeth robert emily "
    "charles sarah edward lucy james helen arthur grace walter martha"
)
NOUNS = _words(
    "house garden river forest village window door letter book table chair road horse dog "
    "bird tree mountain ship city king queen soldier captain doctor teacher child mother "
    "father brother sister friend stranger morning evening night winter summer fire water "
    "stone bread money paper lamp candle church school market field hill valley bridge "
    "island storm wind rain snow moon star voice song story question answer journey dream "
    "picture box bottle basket coat hat ring sword key clock bell boat wagon farmer merchant "
    "servant kitchen meadow harbour castle shadow silence heart face hand"
)
ADJECTIVES = _words(
    "old young little great small dark bright cold warm quiet strange gentle heavy empty "
    "narrow broad silent ancient happy weary brave proud poor rich wild green red white "
    "black golden grey long short deep sudden pale lonely careful curious honest distant"
)
PAST_TRANSITIVE = _words(
    "saw found took opened closed carried followed watched remembered heard met left reached "
    "crossed built painted visited answered wrote read bought sold lost kept held pulled "
    "pushed touched filled covered showed brought sent called asked thanked helped"
)
PAST_INTRANSITIVE = _words(
    "walked ran waited laughed smiled slept arrived returned listened wondered whispered "
    "shouted trembled hurried stayed rested sat stood fell danced sang cried spoke hesitated"
)
BASE_VERBS = _words(
    "see find take open close carry follow watch remember hear meet leave reach cross build "
    "visit answer write read buy keep hold help"
)
NEGATED_MODALS = _words("didn't couldn't wouldn't shouldn't")
ADVERBS = _words(
    "slowly quickly quietly suddenly softly gladly carefully silently happily sadly again "
    "together alone early late often never always there here yesterday outside nearby away"
)
PREPOSITIONS = _words(
    "in on under near beside behind across through into over along toward from with without "
    "above below"
)
CONJUNCTIONS = _words("and but while because when although so until after before")
DETERMINERS = _words("the the the a a his her their that this my our every some")


def pick(rng, options):
    """One of ``options``, drawn from ``rng``."""
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng):
    if rng.random() < 0.15:
        return [pick(rng, NAMES)]
    words = [f"{pick(rng, NAMES)}'s"] if rng.random() < 0.1 else [pick(rng, DETERMINERS)]
    if rng.random() < 0.5:
        words.append(pick(rng, ADJECTIVES))
    words.append(pick(rng, NOUNS))
    if words[0] == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return words


def clause(rng):
    """One clause (a list of lower-case words): subject, verb, maybe object, adverb, place."""
    words = _noun_phrase(rng)
    kind = rng.random()
    if kind < 0.15:
        words += [pick(rng, NEGATED_MODALS), pick(rng, BASE_VERBS)] + _noun_phrase(rng)
    elif kind < 0.6:
        words += [pick(rng, PAST_TRANSITIVE)] + _noun_phrase(rng)
    else:
        words.append(pick(rng, PAST_INTRANSITIVE))
    if rng.random() < 0.35:
        words.append(pick(rng, ADVERBS))
    if rng.random() < 0.5:
        words += [pick(rng, PREPOSITIONS)] + _noun_phrase(rng)
    return words


def sentence_clauses(rng, min_words):
    """Clauses (lists of lower-case words) of one sentence with at least ``min_words`` words.

    Every clause after the first starts with a conjunction.
    """
    clauses = [clause(rng)]
    while sum(map(len, clauses)) < min_words:
        clauses.append([pick(rng, CONJUNCTIONS)] + clause(rng))
    return clauses

