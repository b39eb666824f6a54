"""The task world's document store: made-up towns, one document each, and questions whose answers live only in
those documents (the retrieval labs: `embeddings` finds the document, `rag` answers from it).

    Tamvel lies on the river Oskadu. It was founded in 1432, its mayor is Rulo Benmir and it is known for salt.
    When was Tamvel founded?  -> 1432

Every value is drawn at random, so no model can know an answer without reading its town's document, and no
training file holds a document: the store is generated here from the seed (string-seeded RNGs, the same bytes on
every machine), not written to data/raw, so the pretraining corpus and the SFT data stay what they are. Towns are
split by name into a training part (contrastive pairs, reading practice) and a held-out part (every measurement).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYLLABLES = ["ka", "lo", "mir", "tan", "vel", "dor", "sen", "ru", "pha", "gil", "os", "ben", "ur", "ela", "tis",
             "nom", "bra", "sk", "ad", "vo", "zen", "li", "mok", "ter"]
TRADES = ["salt", "wool", "glass", "cheese", "copper", "silk", "timber", "honey", "pottery", "rope", "paper",
          "iron", "wine", "leather", "clocks", "bells"]
# phrasings of a town's document: every one states all four facts, in different orders and words
DOCUMENTS = [
    "{town} lies on the river {river}. It was founded in {founded}, its mayor is {mayor} and it is known for "
    "{trade}.",
    "The town of {town} is known for {trade}. {mayor} is its mayor; the river {river} runs through it, and it "
    "dates from {founded}.",
    "Founded in {founded}, {town} is a {trade} town on the river {river}, with {mayor} as mayor.",
    "{mayor} is the mayor of {town}, a town founded in {founded} on the banks of the {river}, famous for its "
    "{trade}.",
]
# phrasings of each question; the answer is the attribute's value
QUESTIONS = {
    "founded": ["When was {town} founded?", "In which year was {town} founded?", "How old is {town}: when was it "
                "founded?"],
    "mayor": ["Who is the mayor of {town}?", "Who leads {town} as mayor?", "Name the mayor of {town}."],
    "river": ["Which river runs through {town}?", "On which river does {town} lie?", "What river flows past "
              "{town}?"],
    "trade": ["What is {town} known for?", "What is {town} famous for?", "Which trade is {town} known for?"],
}


@dataclass(frozen=True)
class Town:
    name: str
    river: str
    founded: str
    mayor: str
    trade: str

    def document(self, phrasing: int) -> str:
        return DOCUMENTS[phrasing % len(DOCUMENTS)].format(town=self.name, river=self.river, founded=self.founded,
                                                           mayor=self.mayor, trade=self.trade)


def word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def towns(seed: int, count: int, held_out: int) -> tuple[list[Town], list[Town]]:
    """`count` training towns and `held_out` held-out ones, all with distinct names."""
    rng = random.Random(f"{seed}:documents:towns")
    made, names = [], set()
    while len(made) < count + held_out:
        name = word(rng, rng.choice([2, 3]))  # near misses (Kalo, Kalomir) are what retrieval must tell apart
        if name in names:
            continue
        names.add(name)
        made.append(Town(name, word(rng, 3), str(rng.randint(1100, 1899)),
                         f"{word(rng, 2)} {word(rng, 2)}", rng.choice(TRADES)))
    return made[held_out:], made[:held_out]


def store(all_towns: list[Town], seed: int) -> dict[str, str]:
    """The document store: id -> text, one document per town in a phrasing drawn per town."""
    rng = random.Random(f"{seed}:documents:phrasing")
    return {town.name: town.document(rng.randrange(len(DOCUMENTS))) for town in all_towns}


def questions(town_list: list[Town], seed: int, purpose: str, per_town: int = 1) -> list[dict]:
    """`per_town` questions about each town (distinct attributes, phrasing drawn): {question, answer, town}."""
    rng = random.Random(f"{seed}:documents:questions:{purpose}")
    rows = []
    for town in town_list:
        for attribute in rng.sample(sorted(QUESTIONS), min(per_town, len(QUESTIONS))):
            rows.append({"question": rng.choice(QUESTIONS[attribute]).format(town=town.name),
                         "answer": getattr(town, attribute), "town": town.name, "attribute": attribute})
    return rows
