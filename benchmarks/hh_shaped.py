"""HH-RLHF-shaped preference data from a seeded generator (nothing is downloaded).

Anthropic's HH-RLHF rows are two full transcripts, `chosen` and `rejected`, that share every turn
but the last assistant reply ("\\n\\nHuman: ...\\n\\nAssistant: ..."). This generator matches
their shape: 1-5 exchanges before the final one (most rows have one or two), human turns of
~17 words, earlier assistant turns of ~40, final replies of ~28, so that the shared prompt is
about 72% of a pair's tokens as in HH; and about 0.2% of rows whose chosen reply is empty (an
empty answer preferred over a harmful one). Words come from a Zipf-distributed synthetic
vocabulary with punctuation, so a byte-level BPE trained on it merges across word and
prompt/completion boundaries as a real one does.

    python benchmarks/hh_shaped.py --pairs 80000 --out /tmp/hh80k.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

SYLLABLES = [c + v for c in "bcdfghklmnprstvwyz" for v in ("a", "e", "i", "o", "u", "ou", "ea")]
EMPTY_CHOSEN_RATE = 0.002


class Generator:
    def __init__(self, seed: int = 0, vocabulary: int = 6000):
        self.rng = random.Random(seed)
        words = set()
        while len(words) < vocabulary:
            words.add("".join(self.rng.choices(SYLLABLES, k=self.rng.choice((1, 1, 2, 2, 3)))))
        self.words = sorted(words)
        self.cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) for rank in range(vocabulary))
        )

    def sentence(self, mean_words: float) -> str:
        n = max(1, round(self.rng.lognormvariate(0, 0.6) * mean_words))
        words = self.rng.choices(self.words, cum_weights=self.cum_weights, k=n)
        text, start = [], True
        for word in words:
            text.append(word.capitalize() if start else word)
            start = self.rng.random() < 0.08
            if start:
                text[-1] += self.rng.choice(".?!")
            elif self.rng.random() < 0.05:
                text[-1] += ","
        return " ".join(text) + ("" if start else ".")

    def row(self) -> dict[str, str]:
        exchanges = min(1 + int(self.rng.expovariate(1 / 1.3)), 6)
        prompt = ""
        for _ in range(exchanges - 1):
            prompt += f"\n\nHuman: {self.sentence(15)}\n\nAssistant: {self.sentence(40)}"
        prompt += f"\n\nHuman: {self.sentence(17)}\n\nAssistant:"
        empty = self.rng.random() < EMPTY_CHOSEN_RATE
        chosen = "" if empty else " " + self.sentence(28)
        rejected = " " + self.sentence(28)
        return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def write_jsonl(path: str | Path, pairs: int, seed: int = 0) -> Path:
    generator = Generator(seed)
    path = Path(path)
    with open(path, "w") as handle:
        for _ in range(pairs):
            handle.write(json.dumps(generator.row()) + "\n")
    return path


def corpus(n: int = 3000, seed: int = 1) -> list[str]:
    """Texts to train a tokenizer on: the same language, other rows."""
    generator = Generator(seed)
    return [row["rejected"] for row in (generator.row() for _ in range(n))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=80000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    print(write_jsonl(args.out, args.pairs, args.seed))


if __name__ == "__main__":
    main()
