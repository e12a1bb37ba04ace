"""Synthetic meta-training data for Doc-to-LoRA: made-up facts, multi-fact documents, haystacks.

Every value (entity, person, city, number) comes from a pool that is split deterministically
between ``train`` and ``heldout`` by a hash of the value itself, so a held-out question never
asks about an entity or answer that training could have memorised. Haystack filler sentences
are split the same way.

>>> gen = FactGenerator("heldout", seed=0)
>>> s = gen.sample(n_facts=1)
>>> s.answer in s.document
True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "heldout"]

_ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "dr",
    "f",
    "g",
    "gl",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "qu",
    "r",
    "s",
    "sk",
    "st",
    "t",
    "tr",
    "v",
    "w",
    "z",
    "th",
    "sh",
    "ch",
    "pl",
    "gr",
    "fl",
]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "io", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m", "nd", "rk", "st"]

_COLOURS = [
    "red",
    "blue",
    "green",
    "yellow",
    "purple",
    "orange",
    "silver",
    "golden",
    "black",
    "white",
    "pink",
    "brown",
    "grey",
    "teal",
    "crimson",
    "violet",
    "amber",
    "navy",
    "olive",
    "maroon",
    "turquoise",
    "indigo",
    "scarlet",
    "beige",
    "ivory",
    "bronze",
    "copper",
    "lavender",
    "magenta",
    "cyan",
]
_JOBS = [
    "baker",
    "pilot",
    "surgeon",
    "carpenter",
    "librarian",
    "chemist",
    "farmer",
    "painter",
    "sailor",
    "lawyer",
    "plumber",
    "dentist",
    "architect",
    "tailor",
    "butcher",
    "journalist",
    "engineer",
    "nurse",
    "teacher",
    "gardener",
    "astronomer",
    "jeweler",
    "potter",
    "blacksmith",
    "florist",
    "mechanic",
    "translator",
    "violinist",
    "cartographer",
    "beekeeper",
]
_ANIMALS = [
    "cat",
    "dog",
    "parrot",
    "rabbit",
    "hamster",
    "turtle",
    "ferret",
    "goat",
    "horse",
    "owl",
    "lizard",
    "goldfish",
    "tortoise",
    "snake",
    "pony",
    "donkey",
    "duck",
    "goose",
    "llama",
    "hedgehog",
    "raccoon",
    "fox",
    "canary",
    "iguana",
    "frog",
    "squirrel",
    "alpaca",
    "otter",
    "badger",
    "pigeon",
]

_FILLER = [
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
    "The river flows slowly past the old mill.",
    "A light breeze moved through the tall trees.",
    "Clouds gathered over the distant hills.",
    "The market opened early on most mornings.",
    "Children played in the square until dusk.",
    "The library smelled of old paper and dust.",
    "Rain fell softly on the tiled roofs.",
    "A cart rolled down the cobbled street.",
    "The baker set out fresh loaves by the window.",
    "Boats rocked gently in the harbour.",
    "The clock in the tower struck noon.",
    "Birds sang in the hedges along the lane.",
    "The road wound through fields of wheat.",
    "Snow covered the peaks in winter.",
    "Lanterns glowed along the quiet canal.",
    "The wind carried the smell of salt.",
    "A dog barked somewhere in the valley.",
    "The bridge creaked under heavy wagons.",
    "Travellers rested at the inn by the crossroads.",
    "The orchard was full of ripe apples.",
    "Fog rolled in from the sea each evening.",
    "The old stone wall was covered in moss.",
    "Farmers brought their goods to the fair.",
    "A small stream ran behind the chapel.",
    "The stars were bright on clear nights.",
    "Leaves turned red and gold in autumn.",
    "The ferry crossed the lake twice a day.",
    "Smoke rose from the chimneys of the village.",
    "The meadow was dotted with wild flowers.",
    "Bells rang out across the rooftops.",
    "The path climbed steeply toward the ridge.",
    "Fishermen mended their nets on the pier.",
    "The forest was silent after the storm.",
    "A kettle whistled in the kitchen.",
    "The festival lasted for three days.",
]


def _split_of(value: str) -> Split:
    h = int.from_bytes(hashlib.sha1(value.lower().encode()).digest()[:4], "big")
    return "heldout" if h % 4 == 0 else "train"


def _in_split(value: str, split: Split) -> bool:
    return _split_of(value) == split


@dataclass(frozen=True)
class Sample:
    """One training or evaluation item: a document, a question about it and the gold answer."""

    document: str
    question: str
    answer: str
    kind: str  # "fact" | "niah"


class FactGenerator:
    """Made-up fact documents and needle-in-a-haystack haystacks from one split's pools.

    >>> FactGenerator("train", seed=1).niah(n_tokens_hint=64).kind
    'niah'
    """

    def __init__(self, split: Split, seed: int = 0) -> None:
        self.split: Split = split
        self.rng = random.Random(f"{split}-{seed}")
        self._colours = [c for c in _COLOURS if _in_split(c, split)]
        self._jobs = [c for c in _JOBS if _in_split(c, split)]
        self._animals = [c for c in _ANIMALS if _in_split(c, split)]
        self._filler = [f for f in _FILLER if _in_split(f, split)]
        # the two simplest filler lines always stay in training (the reference haystack)
        if split == "train":
            self._filler += [f for f in _FILLER[:2] if f not in self._filler]
        else:
            self._filler = [f for f in self._filler if f not in _FILLER[:2]] or self._filler

    # ----------------------------------------------------------------- pools
    def _word(self, syllables: int) -> str:
        while True:
            w = "".join(
                self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS) for _ in range(syllables)
            ).capitalize()
            if _in_split(w, self.split):
                return w

    def _number(self, lo: int, hi: int) -> str:
        while True:
            n = str(self.rng.randint(lo, hi))
            if _in_split(n, self.split):
                return n

    def person(self) -> str:
        return f"{self._word(2)} {self._word(2)}"

    def entity(self) -> str:
        return self._word(self.rng.choice([2, 3]))

    # ----------------------------------------------------------------- facts
    def _fact(self, kind: str, ent: str) -> tuple[str, str, str]:
        """Return (sentence, question, answer) for one fact kind about ``ent``."""
        r = self.rng
        if kind == "code":
            a = self._number(1000, 9999)
            return (f"The access code for the {ent} vault is {a}.", f"What is the access code for the {ent} vault?", a)
        if kind == "keeper":
            a = self.person()
            return (f"The keeper of the {ent} lighthouse is {a}.", f"Who is the keeper of the {ent} lighthouse?", a)
        if kind == "colour":
            a = r.choice(self._colours)
            return (f"The starship {ent} is painted {a}.", f"What colour is the starship {ent}?", a)
        if kind == "capital":
            a = self._word(2)
            return (f"The capital of the island of {ent} is {a}.", f"What is the capital of the island of {ent}?", a)
        if kind == "job":
            a = r.choice(self._jobs)
            return (f"{ent} works as a {a}.", f"What is the job of {ent}?", a)
        if kind == "pet":
            a = r.choice(self._animals)
            return (f"{ent} has a pet {a}.", f"What kind of pet does {ent} have?", a)
        if kind == "floor":
            a = self._number(10, 99)
            return (f"The {ent} laboratory is on floor {a}.", f"On which floor is the {ent} laboratory?", a)
        if kind == "year":
            a = self._number(1100, 1999)
            return (f"The {ent} guild was founded in {a}.", f"In which year was the {ent} guild founded?", a)
        raise ValueError(f"unknown fact kind {kind!r}")

    FACT_KINDS = ("code", "keeper", "colour", "capital", "job", "pet", "floor", "year")

    def sample(self, n_facts: int = 1, kinds: tuple[str, ...] | None = None) -> Sample:
        """A document of ``n_facts`` facts about distinct entities; the question asks about one of them."""
        kinds = kinds or self.FACT_KINDS
        facts = []
        for _ in range(n_facts):
            k = self.rng.choice(kinds)
            ent = self.person() if k in ("job", "pet") else self.entity()
            facts.append(self._fact(k, ent))
        _, q, a = self.rng.choice(facts)
        return Sample(" ".join(f[0] for f in facts), q, a, "fact")

    def niah(self, n_tokens_hint: int = 128) -> Sample:
        """A haystack of ~``n_tokens_hint`` tokens (about 10 tokens per filler line) with one magic number."""
        n_lines = max(1, n_tokens_hint // 10)
        lines = [self.rng.choice(self._filler) for _ in range(n_lines)]
        a = self._number(1000, 9999)
        lines.insert(self.rng.randint(0, len(lines)), f"The special magic number is {a}.")
        return Sample(" ".join(lines), "What is the special magic number?", a, "niah")

    def mixed(self, max_facts: int = 1, niah_prob: float = 0.25, niah_tokens: tuple[int, int] = (32, 256)) -> Sample:
        """A training sample from the curriculum mix: facts with 1..``max_facts`` sentences, or a haystack."""
        if self.rng.random() < niah_prob:
            return self.niah(self.rng.randint(*niah_tokens))
        return self.sample(n_facts=self.rng.randint(1, max_facts))


def heldout_set(
    n_fact: int, n_niah: int, *, max_facts: int = 1, niah_tokens: int = 128, seed: int = 12345
) -> list[Sample]:
    """A fixed held-out evaluation set: ``n_fact`` fact questions then ``n_niah`` haystacks.

    >>> len(heldout_set(3, 2))
    5
    """
    gen = FactGenerator("heldout", seed=seed)
    out = [gen.sample(n_facts=gen.rng.randint(1, max_facts)) for _ in range(n_fact)]
    out += [gen.niah(niah_tokens) for _ in range(n_niah)]
    return out
