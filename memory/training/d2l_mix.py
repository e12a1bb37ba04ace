"""The Doc-to-LoRA training mixture and its held-out suites, by kind.

Kinds (``Sample.kind``):

- ``fact`` / ``niah``: the original one-sentence facts and filler haystacks (:mod:`memory.training.d2l_data`), kept
  in small proportion so the skill they taught is not forgotten;
- ``family``: compositional documents of 1-10 facts (:mod:`memory.training.d2l_families`);
- ``prose``: questions over real passages (:mod:`memory.training.d2l_prose`, reworded or cloze);
- ``continue``: the words that follow a sentence of a real passage (dense self-supervised target);
- ``haystack``: real prose with several needles (family facts) hidden in it, one to several chunks long.

Held-out suites use held-out families, values and prose sources only.

>>> mix = TrainingMix(passages=None, seed=0)
>>> mix.sample().kind in KINDS
True
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from memory.training.d2l_data import FactGenerator, Sample
from memory.training.d2l_families import FamilyGenerator
from memory.training.d2l_prose import Passage, ProseGenerator, load_cache

KINDS = ("fact", "niah", "family", "prose", "continue", "haystack")
DEFAULT_WEIGHTS = {"fact": 0.1, "niah": 0.05, "family": 0.35, "prose": 0.25, "continue": 0.1, "haystack": 0.15}


@dataclass
class MixConfig:
    weights: dict[str, float]
    max_facts: int = 10
    haystack_words: tuple[int, int] = (60, 320)
    needles: tuple[int, int] = (1, 4)


def parse_weights(spec: str | None) -> dict[str, float]:
    """``"family=0.4,prose=0.3"`` -> weights (other kinds 0); ``None`` -> the defaults.

    >>> parse_weights("family=1")["family"], parse_weights("family=1")["prose"]
    (1.0, 0.0)
    """
    if not spec:
        return dict(DEFAULT_WEIGHTS)
    out = dict.fromkeys(KINDS, 0.0)
    for part in spec.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in KINDS:
            raise ValueError(f"unknown kind {k!r}; choose from {KINDS}")
        out[k.strip()] = float(v)
    return out


def _needle(fam: FamilyGenerator) -> tuple[str, str, str]:
    s = fam.sample(n_facts=1, distractor_prob=0.0)
    doc = s.document
    if "\n" in doc or "|" in doc:  # a list or table rendering: make it one sentence
        return _needle(fam)
    return doc, s.question, s.answer


class TrainingMix:
    """Draws training (or held-out) samples of every kind from one split."""

    def __init__(
        self, passages: Sequence[Passage] | None, seed: int = 0, split: str = "train", config: MixConfig | None = None
    ) -> None:
        self.cfg = config or MixConfig(dict(DEFAULT_WEIGHTS))
        self.rng = random.Random(f"mix-{split}-{seed}")
        self.facts = FactGenerator(split, seed=seed)  # type: ignore[arg-type]
        self.fam = FamilyGenerator(split, seed=seed)  # type: ignore[arg-type]
        self.prose = ProseGenerator(list(passages), seed=seed) if passages else None
        w = dict(self.cfg.weights)
        if self.prose is None:
            for k in ("prose", "continue", "haystack"):
                w[k] = 0.0
        self.kinds = [k for k in KINDS if w.get(k, 0) > 0]
        self.weights = [w[k] for k in self.kinds]

    def sample(self, kind: str | None = None) -> Sample:
        kind = kind or self.rng.choices(self.kinds, weights=self.weights)[0]
        c = self.cfg
        if kind == "fact":
            return self.facts.sample(n_facts=self.rng.randint(1, 4))
        if kind == "niah":
            return self.facts.niah(self.rng.randint(32, 128))
        if kind == "family":
            fs = self.fam.sample(self.rng.randint(1, c.max_facts))
            return Sample(fs.document, fs.question, fs.answer, "family")
        assert self.prose is not None
        if kind in ("prose", "continue"):
            forms = ("continue",) if kind == "continue" else ("wh", "cloze")
            s = self.prose.sample(forms=forms, weights=(1.0,) * len(forms))
            return Sample(s.document, s.question, s.answer, kind)
        if kind == "haystack":
            needles = [_needle(self.fam) for _ in range(self.rng.randint(*c.needles))]
            doc, q, a = self.prose.haystack(needles, self.rng.randint(*c.haystack_words))
            return Sample(doc, q, a, "haystack")
        raise ValueError(f"unknown kind {kind!r}")


def heldout_suites(
    passages: Sequence[Passage] | None, n: int = 24, seed: int = 4242, haystack_words: tuple[int, int] = (150, 320)
) -> list[Sample]:
    """A fixed held-out set with ``n`` samples of each kind (``n // 2`` for fact/niah/continue)."""
    mix = TrainingMix(
        passages, seed=seed, split="heldout", config=MixConfig(dict(DEFAULT_WEIGHTS), haystack_words=haystack_words)
    )
    out: list[Sample] = []
    for kind in KINDS:
        if kind in mix.kinds:
            out += [mix.sample(kind) for _ in range(n if kind in ("family", "prose", "haystack") else n // 2)]
    return out


def load_passages(path: str | Path | None, split: str, max_words: int | None = None) -> list[Passage] | None:
    """One split's passages of a cache file (``None`` when there is no cache), optionally only short ones."""
    if not path or not Path(path).is_file():
        return None
    ps = load_cache(path, split)  # type: ignore[arg-type]
    return [p for p in ps if max_words is None or len(p.text.split()) <= max_words]
