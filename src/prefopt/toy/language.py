"""The toy language: short product reviews, and their ground-truth reward.

A prompt names a product, ``"review of the {qualifier} {descriptor} {subject} :"``
(e.g. ``"review of the new red phone :"``; 12 x 10 x 30 = 3600 distinct prompts). A completion is
a review of 6 to 16 words (punctuation counts as a word) ending with ``"."``: an optional
``"overall ,"`` and one to three clauses, each judging an aspect (price, design, sound, ...)
positively, negatively or neutrally, with independently drawn sentiments so that reviews are
mixed. Clauses are joined by ``"but"`` when their sentiments differ, else by ``"and"`` or ``","``.
Aspects suit any product on purpose: a review that depended on the subject would need a model
that learns to look back at it, which a two-layer model does only after more SFT steps than the
build's time budget allows (and unreliably across seeds).

Text convention: words are separated by single spaces, a prompt ends with ``":"``, and a
completion starts with a space, so ``prompt + completion`` is exactly the text the model reads:
``"review of the new red phone :" + " the price is great but i hated the sound ."``.

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
DESCRIPTORS = "red blue green black white silver pink grey brown golden".split()
SUBJECTS = (
    "phone laptop tablet camera watch speaker headset keyboard monitor printer router blender "
    "kettle toaster lamp mouse charger backpack jacket chair desk bottle mug bicycle drone "
    "console radio fan heater clock"
).split()
ASPECTS = (
    "price quality design look feel size weight value finish style color packaging material "
    "shape sound"
).split()
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
NEUTRAL_VERBS = "noticed checked tested".split()
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
        + SUBJECTS
        + ASPECTS
        + POSITIVE_ADJECTIVES
        + NEGATIVE_ADJECTIVES
        + NEUTRAL_ADJECTIVES
        + POSITIVE_VERBS
        + NEGATIVE_VERBS
        + NEUTRAL_VERBS
        + ADVERBS
    )
)
"""Every word the grammar can produce, in a fixed order (the tokenizer's vocabulary)."""

MIN_WORDS, MAX_WORDS = 6, 16
# Negation stays rare: each "not" flips the meaning of the next word, which makes the pairs'
# preference harder to learn (at 0.15, DPO's validation accuracy dropped by about 0.1).
_NEGATION_RATE = 0.04
_RECOMMEND_RATE = 0.03
_ADJECTIVES = {1: POSITIVE_ADJECTIVES, -1: NEGATIVE_ADJECTIVES, 0: NEUTRAL_ADJECTIVES}
_VERBS = {1: POSITIVE_VERBS, -1: NEGATIVE_VERBS, 0: NEUTRAL_VERBS}
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


def all_prompts() -> list[str]:
    """Every prompt of the language, in a fixed order."""
    return [
        f"review of the {q} {d} {s} :"
        for s, q, d in itertools.product(SUBJECTS, QUALIFIERS, DESCRIPTORS)
    ]


def _clause(rng: random.Random, polarity: int) -> list[str]:
    aspect = rng.choice(ASPECTS)
    if polarity != 0 and rng.random() < _NEGATION_RATE:
        # "not" before a word of the opposite sentiment carries the clause's: "not bad" is positive.
        return ["the", aspect, "is", "not", rng.choice(_ADJECTIVES[-polarity])]
    if polarity != 0 and rng.random() < _RECOMMEND_RATE:
        return (
            "i would recommend it".split() if polarity > 0 else "i would not recommend it".split()
        )
    adverb = [rng.choice(ADVERBS)] if rng.random() < 0.3 else []
    adjective = rng.choice(_ADJECTIVES[polarity])
    template = rng.randrange(4)
    if template == 0:
        return ["the", aspect, "is", *adverb, adjective]
    if template == 1:
        return ["i", rng.choice(_VERBS[polarity]), "the", aspect]
    if template == 2:
        return [adjective, aspect]
    return ["it", "is", *adverb, adjective]


def sample_completion(rng: random.Random) -> str:
    """A grammatical review with independently drawn clause sentiments."""
    while True:
        words = ["overall", ","] if rng.random() < 0.2 else []
        previous = None
        for _ in range(rng.choice((1, 2, 2, 3))):
            polarity = rng.choices((1, -1, 0), weights=(0.4, 0.4, 0.2))[0]
            if previous is not None:
                contrast = polarity * previous < 0
                words.append("but" if contrast else rng.choice(("and", ",")))
            words += _clause(rng, polarity)
            previous = polarity
        words.append(".")
        if MIN_WORDS <= len(words) <= MAX_WORDS:
            return " " + " ".join(words)
