"""A small synthetic corpus for the adaptation tests: documents with a title and several
sentences, each mixing words every document uses with words of its own topic, so that BM25 and a
trained encoder can tell them apart and the mined signals have something to pair."""

from __future__ import annotations

import json
import random
from pathlib import Path

COMMON = ("the of and to in is was for on that with as by at from this which are were an be "
          "has its it also their more most other some such these they than been into over "
          "after about between during under while").split()
SYLLABLES = "ka lo mi ne ru sa te vo zi ba de fu gi ho ju".split()


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def documents(n: int = 40, seed: int = 0) -> list[dict]:
    """``n`` BEIR-style records: ``_id``, ``title``, ``text``."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        topic = [_word(rng) for _ in range(12)]
        sents = []
        for _ in range(rng.randint(6, 10)):
            words = [rng.choice(topic) if rng.random() < 0.4 else rng.choice(COMMON)
                     for _ in range(rng.randint(8, 16))]
            sents.append(" ".join(words).capitalize() + ".")
        docs.append({"_id": f"d{i:03d}", "title": f"{topic[0]} {topic[1]} {topic[2]}",
                     "text": " ".join(sents)})
    return docs


def write_corpus(path: Path, n: int = 40, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for d in documents(n, seed):
            f.write(json.dumps(d) + "\n")
    return path
