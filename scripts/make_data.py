#!/usr/bin/env python3
"""Generate data/train.jsonl and data/valid.jsonl: small chat-format sets with a learnable pattern, and
data/preference_train.jsonl and data/preference_valid.jsonl: preference pairs of the same tasks, the right
answer preferred over a wrong one (OpenAI's preference format for training, {"prompt", "chosen", "rejected"}
for validation).

Deterministic (fixed seed), standard library only. Templated tasks that a tiny model can learn quickly:
animal sounds, single-digit addition, object colours and spelling digits, some with a system message, some
two-turn.

    python scripts/make_data.py [--out data] [--train 300] [--valid 50] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ANIMALS = {
    "cat": "meow",
    "dog": "woof",
    "cow": "moo",
    "duck": "quack",
    "sheep": "baa",
    "pig": "oink",
    "horse": "neigh",
    "frog": "ribbit",
    "owl": "hoot",
    "lion": "roar",
    "bee": "buzz",
    "mouse": "squeak",
    "goat": "bleat",
    "snake": "hiss",
    "crow": "caw",
    "wolf": "howl",
}
COLOURS = {
    "sky": "blue",
    "grass": "green",
    "sun": "yellow",
    "snow": "white",
    "coal": "black",
    "banana": "yellow",
    "tomato": "red",
    "orange": "orange",
    "plum": "purple",
    "leaf": "green",
    "cherry": "red",
    "sea": "blue",
    "night": "black",
    "cloud": "white",
    "carrot": "orange",
    "grape": "purple",
}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
SYSTEM = "You are a short and exact assistant."


def animal(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(sorted(ANIMALS))
    return f"What does the {name} say?", f"The {name} says {ANIMALS[name]}."


def addition(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randrange(10), rng.randrange(10)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."


def colour(rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(sorted(COLOURS))
    return f"What colour is the {thing}?", f"The {thing} is {COLOURS[thing]}."


def spell(rng: random.Random) -> tuple[str, str]:
    n = rng.randrange(10)
    return f"Spell the number {n}.", f"{n} is spelled {NUMBERS[n]}."


TASKS = (animal, addition, colour, spell)


def example(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    messages: list[dict[str, str]] = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": SYSTEM})
    turns = 2 if rng.random() < 0.15 else 1
    for _ in range(turns):
        question, answer = rng.choice(TASKS)(rng)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return {"messages": messages}


def _other(rng: random.Random, right: str, choices: list[str]) -> str:
    return rng.choice([c for c in choices if c != right])


def wrong_answer(rng: random.Random, question: str, answer: str) -> str:
    """The answer with its fact (the last word) replaced by another of the same kind."""
    head, fact = answer[:-1].rsplit(" ", 1)
    if fact.isdigit():
        choices = [str(n) for n in range(19)]
    else:
        choices = sorted(set(ANIMALS.values()) | set(COLOURS.values()) | set(NUMBERS))
        for kind in (list(ANIMALS.values()), list(COLOURS.values()), NUMBERS):
            if fact in kind:
                choices = sorted(set(kind))
                break
    return f"{head} {_other(rng, fact, choices)}."


def pair(rng: random.Random, *, openai_format: bool) -> dict[str, object]:
    prompt: list[dict[str, str]] = []
    if rng.random() < 0.3:
        prompt.append({"role": "system", "content": SYSTEM})
    question, answer = rng.choice(TASKS)(rng)
    prompt.append({"role": "user", "content": question})
    rejected = wrong_answer(rng, question, answer)
    if openai_format:
        return {
            "input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}],
        }
    return {"prompt": prompt, "chosen": answer, "rejected": rejected}


def write(path: Path, rows: list[dict[str, object]] | list[dict[str, list[dict[str, str]]]]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "data"))
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--valid", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--valid-pairs", dest="valid_pairs", type=int, default=40)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write(out / "train.jsonl", [example(rng) for _ in range(args.train)])
    write(out / "valid.jsonl", [example(rng) for _ in range(args.valid)])
    # Pairs from a stream of their own: the chat sets above stay exactly as they were.
    pairs = random.Random(args.seed + 1)
    write(out / "preference_train.jsonl", [pair(pairs, openai_format=True) for _ in range(args.pairs)])
    write(out / "preference_valid.jsonl", [pair(pairs, openai_format=False) for _ in range(args.valid_pairs)])
    print(f"wrote {args.train} + {args.valid} examples and {args.pairs} + {args.valid_pairs} pairs to {out}")


if __name__ == "__main__":
    main()
