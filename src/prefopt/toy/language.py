"""The toy language: short product and movie reviews, and their ground-truth reward.

A prompt names something to review, ``"review of the {qualifier} {descriptor} {subject} :"``
(e.g. ``"review of the new red phone :"``; 12 x 10 x 30 = 3600 distinct prompts). A completion is
a review of 6 to 16 words (punctuation counts as a word) ending with ``"."``: an optional
``"overall ,"`` and one to three clauses, each judging an aspect of the subject (battery, screen
for products; plot, acting for movies) positively, negatively or neutrally. Clauses are joined
by ``"but"`` when their sentiments differ, else by ``"and"`` or ``","``.

Text convention: words are separated by single spaces, a prompt ends with ``":"``, and a
completion starts with a space, so ``prompt + completion`` is exactly the text the model reads:
``"review of the new red phone :" + " the battery is great but i hated the screen ."``.

Ground-truth reward of a completion: the number of positive words minus the number of negative
words, where a sentiment word directly after ``"not"`` counts with the opposite sign
(``"not great"`` = -1, ``"not bad"`` = +1, ``"i would not recommend it"`` = -1). Words are
lowercased and stripped of surrounding punctuation; anything outside the lexicon (unknown words,
special tokens) counts 0, so any string can be scored, including a model's raw output.
"""

from __future__ import annotations

import itertools
import random
import string

QUALIFIERS = "new old small big latest classic popular basic modern famous recent second".split()
DESCRIPTORS = "red blue green black white silver french japanese german italian".split()
PRODUCTS = (
    "phone laptop tablet camera watch speaker headset keyboard monitor printer router "
    "blender kettle toaster lamp"
).split()
MOVIES = (
    "movie film show documentary series comedy thriller drama cartoon musical western "
    "sequel remake mystery romance"
).split()
ASPECTS = {
    "product": (
        "battery screen design price sound keypad build size weight audio charger case "
        "finish software display"
    ).split(),
    "movie": (
        "plot acting ending music story cast dialogue pacing animation soundtrack script "
        "humor atmosphere direction photography"
    ).split(),
}
POSITIVE_ADJECTIVES = (
    "great good excellent amazing wonderful fantastic superb brilliant lovely perfect solid "
    "impressive beautiful fun charming delightful"
).split()
NEGATIVE_ADJECTIVES = (
    "bad terrible awful poor horrible boring weak ugly disappointing mediocre dull annoying "
    "broken flimsy painful clumsy"
).split()
NEUTRAL_ADJECTIVES = "okay average normal standard typical ordinary plain usual".split()
POSITIVE_VERBS = "loved liked enjoyed adored".split()
NEGATIVE_VERBS = "hated disliked regretted".split()
NEUTRAL_VERBS = {"product": "used bought tried".split(), "movie": "watched saw tried".split()}
ADVERBS = "very really quite so pretty truly".split()
FUNCTION_WORDS = "review of the : . , is it i would not recommend overall and but".split()

POLARITY: dict[str, int] = {
    **{w: 1 for w in POSITIVE_ADJECTIVES + POSITIVE_VERBS + ["recommend"]},
    **{w: -1 for w in NEGATIVE_ADJECTIVES + NEGATIVE_VERBS},
}

VOCAB: list[str] = list(
    dict.fromkeys(
        FUNCTION_WORDS
        + QUALIFIERS
        + DESCRIPTORS
        + PRODUCTS
        + MOVIES
        + ASPECTS["product"]
        + ASPECTS["movie"]
        + POSITIVE_ADJECTIVES
        + NEGATIVE_ADJECTIVES
        + NEUTRAL_ADJECTIVES
        + POSITIVE_VERBS
        + NEGATIVE_VERBS
        + NEUTRAL_VERBS["product"]
        + NEUTRAL_VERBS["movie"]
        + ADVERBS
    )
)
"""Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary)."""

MIN_WORDS, MAX_WORDS = 6, 16
_NEGATION_RATE = 0.15
_PUNCTUATION = string.punctuation


def reward(completion: str) -> float:
    """Ground-truth sentiment score of any string (see the module docstring)."""
    score, previous = 0, ""
    for raw in completion.lower().split():
        word = raw.strip(_PUNCTUATION)
        polarity = POLARITY.get(word, 0)
        score += -polarity if previous == "not" else polarity
        previous = word
    return float(score)


def all_prompts() -> list[tuple[str, str]]:
    """Every (prompt, subject) pair of the language, in a fixed order."""
    return [
        (f"review of the {q} {d} {s} :", s)
        for s, q, d in itertools.product(PRODUCTS + MOVIES, QUALIFIERS, DESCRIPTORS)
    ]


def category(subject: str) -> str:
    return "product" if subject in PRODUCTS else "movie"


def _clause(rng: random.Random, polarity: int, kind: str) -> list[str]:
    aspect = rng.choice(ASPECTS[kind])
    adjectives = {1: POSITIVE_ADJECTIVES, -1: NEGATIVE_ADJECTIVES, 0: NEUTRAL_ADJECTIVES}
    verbs = {1: POSITIVE_VERBS, -1: NEGATIVE_VERBS, 0: NEUTRAL_VERBS[kind]}
    if polarity != 0 and rng.random() < _NEGATION_RATE:
        # A negated opposite word carries the clause's polarity: "not bad" is positive.
        if rng.random() < 0.3:
            return "i would recommend it".split() if polarity > 0 else "i would not recommend it".split()
        return ["the", aspect, "is", "not", rng.choice(adjectives[-polarity])]
    adverb = [rng.choice(ADVERBS)] if rng.random() < 0.3 else []
    template = rng.randrange(4)
    if template == 0:
        return ["the", aspect, "is", *adverb, rng.choice(adjectives[polarity])]
    if template == 1:
        return ["i", rng.choice(verbs[polarity]), "the", aspect]
    if template == 2:
        return [rng.choice(adjectives[polarity]), aspect]
    return ["it", "is", *adverb, rng.choice(adjectives[polarity])]


def sample_completion(rng: random.Random, subject: str) -> str:
    """A grammatical review of `subject` with independently drawn clause sentiments."""
    kind = category(subject)
    while True:
        words = ["overall", ","] if rng.random() < 0.2 else []
        previous = None
        for _ in range(rng.choice((1, 2, 2, 3))):
            polarity = rng.choices((1, -1, 0), weights=(0.4, 0.4, 0.2))[0]
            if previous is not None:
                contrast = polarity * previous < 0
                words.append("but" if contrast else rng.choice(("and", ",")))
            words += _clause(rng, polarity, kind)
            previous = polarity
        words.append(".")
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " " + " ".join(words)
