"""Compositional synthetic documents for Doc-to-LoRA: domain x relation families x surface forms.

A *family* is one relation of one domain (``"products.price"``, ``"people.employer"``, ...); there are more than
100 of them over many domains (policies, procedures, people, products, places, schedules, projects, software,
events, vehicles, courses, restaurants, accounts, buildings). A document holds 1-10 facts, about one or several
similar entities (distractors: the same relation of a look-alike entity with another value), written as prose
(facts spread over sentences with pronouns), a markdown section, a key-value list, a markdown table or a memo.
The question is worded away from the document: a synonym of the attribute, another word order or question form
("Who ...", "When ...", "How much ..."). The answer is a short span of the document.

Held out *by family*: a hash of the family name puts ~1/5 of families in ``heldout``; a held-out family never
appears in training (not as the asked fact, not as a distractor). Values (names, places, numbers) are split by
hash too, and a few statement and question frames are used only for held-out documents. Invented words always
contain one of the letters c, h, j, q, w or y in a position the built-in ``pmem eval qa`` suites never produce,
so no entity of theirs can come out of this generator (``tests/test_d2l_data.py`` checks it).

>>> g = FamilyGenerator("train", seed=0)
>>> s = g.sample(n_facts=3)
>>> s.answer in s.document and s.family in g.families
True
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "heldout"]


def _h(value: str) -> int:
    return int.from_bytes(hashlib.sha1(value.lower().encode()).digest()[:4], "big")


def split_of(value: str, heldout_every: int = 5) -> Split:
    return "heldout" if _h(value) % heldout_every == 0 else "train"


@dataclass(frozen=True)
class FamilySample:
    document: str
    question: str
    answer: str
    kind: str  # "family"
    family: str
    n_facts: int


# ---------------------------------------------------------------------------- value pools
_FIRST = (
    "Maren Tobias Ines Rafael Yusuf Leona Kwame Priya Soren Agnes Mateo Hana Oskar Delia Ibrahim Noor Felix "
    "Ruth Anders Chiara Dmitri Esme Gideon Halima Jonah Keiko Lorenzo Mira Nikolai Odette Pavel Quentin Rosa "
    "Stellan Tamsin Ulla Viktor Wanda Xavier Yara Zubair Bettina Cormac Dagny Elias Freya Gustav Helga Imre "
    "Jasper Katya Lucian Magnus Nadia Orla Piet Rania Sigrid Tariq Uma Vera Wilhelm Ysolde Zeno Alba Bruno "
    "Cosima Dario Elin Fabian Greta Hugo Ilse Joaquim Kirsi Linnea Marek Nils Otto Paloma Rune Saskia Teodor"
).split()
_LAST = (
    "Okafor Lindqvist Moreau Castellanos Haddad Nakamura Brennan Kowalski Adeyemi Fontaine Varga Petrov "
    "Albrecht Sorensen Ferreira Kaur Delacroix Mbeki Rasmussen Takeda Quiroga Wozniak Eriksen Baptiste "
    "Novak Hollis Achterberg Benedetti Chowdhury Dunmore Esposito Falkner Grimaldi Holm Iwasaki Jovanovic "
    "Kristiansen Lachance Marchetti Nyberg Oyelaran Pacheco Renwick Salazar Thorsen Ulloa Vidal Whitcombe "
    "Yilmaz Zamora Abernathy Bergstrom Calloway Draper Ellison Fairbanks Gallardo Hargreaves Ingram Jankowski"
).split()
# invented words: every one carries c, h (not in "th"), j, q, w or y
_ON1 = ["j", "w", "y", "qu", "ch", "c", "wh", "sh", "jo", "ky"]
_ON = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "gr", "pl", "sn", "cr", "fl", "h"]
_VO = ["a", "e", "i", "o", "u", "ia", "oa", "ee", "ay", "y"]
_CO = ["", "", "n", "m", "ck", "sh", "lt", "rn", "x", "w"]
_COLOURS = [
    "charcoal",
    "mint",
    "mustard",
    "burgundy",
    "sky blue",
    "forest green",
    "sand",
    "plum",
    "coral",
    "slate grey",
    "lemon",
    "rust",
    "aquamarine",
    "lilac",
    "peach",
    "emerald",
    "mahogany",
    "pearl white",
]
_MATERIALS = [
    "oak",
    "walnut",
    "aluminium",
    "stainless steel",
    "bamboo",
    "cast iron",
    "glass",
    "ceramic",
    "linen",
    "wool",
    "carbon fibre",
    "brass",
    "granite",
    "birch plywood",
    "recycled plastic",
    "leather",
]
_LANGS = [
    "Portuguese",
    "Finnish",
    "Swahili",
    "Korean",
    "Dutch",
    "Tagalog",
    "Hungarian",
    "Greek",
    "Urdu",
    "Norwegian",
    "Vietnamese",
    "Catalan",
    "Polish",
    "Hebrew",
    "Malay",
    "Icelandic",
]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_TOOLS = [
    "PostgreSQL",
    "Redis",
    "Kafka",
    "Nginx",
    "Terraform",
    "Ansible",
    "Jenkins",
    "Grafana",
    "RabbitMQ",
    "Elasticsearch",
    "MinIO",
    "Consul",
    "Prometheus",
    "Airflow",
    "SQLite",
    "Memcached",
]
_DEPTS = [
    "finance",
    "logistics",
    "customer support",
    "research",
    "marketing",
    "procurement",
    "legal review",
    "quality assurance",
    "facilities",
    "human resources",
    "security",
    "data engineering",
]
_CUISINES = [
    "Ethiopian",
    "Peruvian",
    "Georgian",
    "Sichuan",
    "Lebanese",
    "Basque",
    "Oaxacan",
    "Malaysian",
    "Sicilian",
    "Korean barbecue",
    "Bavarian",
    "Moroccan",
]
_SPECIES = [
    "heron",
    "lynx",
    "salamander",
    "kestrel",
    "tapir",
    "pangolin",
    "ibex",
    "marmot",
    "gecko",
    "wombat",
    "okapi",
    "puffin",
    "axolotl",
    "bison",
    "mongoose",
    "quokka",
]


class _Values:
    """Draws values of each type from one split's pools (split by a hash of the value)."""

    def __init__(self, rng: random.Random, split: Split) -> None:
        self.rng, self.split = rng, split
        self.pools = {
            name: [v for v in pool if split_of(v, 4) == split or len(pool) < 8]
            for name, pool in (
                ("first", _FIRST),
                ("last", _LAST),
                ("colour", _COLOURS),
                ("material", _MATERIALS),
                ("language", _LANGS),
                ("tool", _TOOLS),
                ("dept", _DEPTS),
                ("cuisine", _CUISINES),
                ("species", _SPECIES),
            )
        }

    def _ok(self, v: str) -> bool:
        return split_of(v, 4) == self.split

    def pick(self, pool: str) -> str:
        return self.rng.choice(self.pools[pool])

    def word(self, syll: int | None = None) -> str:
        r = self.rng
        while True:
            n = syll or r.choice([2, 2, 3])
            w = r.choice(_ON1) + r.choice(_VO) + r.choice(_CO)
            w += "".join(r.choice(_ON) + r.choice(_VO) + r.choice(_CO) for _ in range(n - 1))
            w = w.capitalize()
            if self._ok(w) and 4 <= len(w) <= 12:
                return w

    def person(self) -> str:
        return f"{self.pick('first')} {self.pick('last')}"

    def number(self, lo: int, hi: int) -> int:
        while True:
            n = self.rng.randint(lo, hi)
            if self._ok(str(n)):
                return n

    def value(self, vtype: str) -> str:
        r = self.rng
        if vtype == "person":
            return self.person()
        if vtype == "place":
            return self.word() + r.choice(["", "", " Harbour", " Heights", " Junction", "ford", "wick", " Springs"])
        if vtype == "org":
            return self.word() + r.choice([" Labs", " & Sons", " Group", " Cooperative", " Systems", " Partners"])
        if vtype == "count":
            return str(self.number(2, 480))
        if vtype == "money":
            n = self.number(3, 9800)
            return r.choice([f"${n:,}", f"€{n:,}", f"£{n:,}", f"{n:,} dollars", f"${n}.{r.randint(10, 99)}"])
        if vtype == "percent":
            return f"{self.number(2, 95)}%" if r.random() < 0.7 else f"{self.number(2, 95)} percent"
        if vtype == "days":
            n = self.number(2, 120)
            return r.choice([f"{n} days", f"{n} business days", f"{n} calendar days"])
        if vtype == "duration":
            n = self.number(2, 90)
            return r.choice([f"{n} minutes", f"{n} hours", f"{n} weeks", f"{n} months"])
        if vtype == "date":
            d, m, y = r.randint(1, 28), r.choice(_MONTHS), self.number(2024, 2039)
            return r.choice([f"{d} {m} {y}", f"{m} {d}, {y}", f"{y}-{_MONTHS.index(m) + 1:02d}-{d:02d}"])
        if vtype == "year":
            return str(self.number(1850, 2035))
        if vtype == "time":
            h, mi = r.randint(5, 22), r.choice([0, 10, 15, 20, 30, 40, 45, 50])
            return r.choice([f"{h}:{mi:02d}", f"{(h - 1) % 12 + 1}:{mi:02d} {'am' if h < 12 else 'pm'}"])
        if vtype == "weekday":
            return r.choice(_DAYS)
        if vtype == "code":
            letters = "".join(r.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(r.choice([2, 3])))
            return r.choice(
                [
                    f"{letters}-{self.number(100, 9999)}",
                    f"{letters}{self.number(10, 999)}",
                    f"{self.number(1000, 99999)}-{letters}",
                ]
            )
        if vtype == "version":
            return f"{r.randint(0, 14)}.{r.randint(0, 30)}.{r.randint(0, 20)}"
        if vtype == "room":
            return f"{r.choice('ABCDEFGHKLMN')}{self.number(1, 9)}{r.randint(0, 4)}{r.randint(0, 9)}"
        if vtype == "email":
            return f"{self.word(2).lower()}@{self.word(2).lower()}.{r.choice(['org', 'net', 'io', 'com'])}"
        if vtype == "phone":
            return r.choice(
                [
                    f"ext. {self.number(100, 9999)}",
                    f"+{r.randint(1, 99)} {self.number(100, 999)} {self.number(1000, 9999)}",
                ]
            )
        if vtype == "size":
            return r.choice(
                [
                    f"{self.number(2, 900)} kg",
                    f"{self.number(2, 400)} cm",
                    f"{self.number(2, 9000)} MB",
                    f"{self.number(2, 900)} litres",
                    f"{self.number(2, 300)} square metres",
                ]
            )
        if vtype in self.pools:
            return self.pick(vtype)
        raise ValueError(f"unknown value type {vtype!r}")


# ---------------------------------------------------------------------------- domains and relations
# relation: (name, attribute noun, attribute synonyms for questions, value type, verbal statements, verbal questions)
Rel = tuple[str, str, tuple[str, ...], str, tuple[str, ...], tuple[str, ...]]

_EN: dict[str, Callable[[_Values], str]] = {
    "policies": lambda v: (
        f"the {v.word()} {v.rng.choice(['travel', 'leave', 'expense', 'returns', 'remote work', 'equipment', 'overtime', 'visitor'])} policy"
    ),
    "procedures": lambda v: (
        f"the {v.word()} {v.rng.choice(['backup', 'onboarding', 'release', 'audit', 'evacuation', 'calibration', 'shutdown'])} procedure"
    ),
    "people": lambda v: v.person(),
    "products": lambda v: (
        f"the {v.word()} {v.rng.choice(['X', 'Pro ', 'S', 'Mini ', ''])}{v.number(2, 990)} {v.rng.choice(['blender', 'router', 'kettle', 'drone', 'lamp', 'e-bike', 'headset', 'projector', 'scanner', 'heater'])}"
    ),
    "places": lambda v: v.word() + v.rng.choice([" Park", " Square", " Market", " Pier", " Gardens", " Quarter"]),
    "schedules": lambda v: (
        f"the {v.word()} {v.rng.choice(['shuttle', 'ferry', 'night bus', 'yoga class', 'choir rehearsal', 'book club', 'clinic'])}"
    ),
    "projects": lambda v: f"project {v.word()}",
    "software": lambda v: f"{v.word()}{v.rng.choice(['DB', 'JS', 'ctl', 'Sync', 'Flow', ''])}",
    "events": lambda v: (
        f"the {v.word()} {v.rng.choice(['conference', 'hackathon', 'marathon', 'trade fair', 'summit', 'gala', 'retreat'])}"
    ),
    "vehicles": lambda v: (
        f"the {v.rng.choice(['tugboat', 'airship', 'tram', 'cargo van', 'sailboat', 'locomotive', 'snowcat'])} {v.word()}"
    ),
    "courses": lambda v: (
        f"{v.rng.choice(['Applied', 'Introductory', 'Advanced', 'Practical'])} {v.word()} {v.rng.choice(['Studies', 'Design', 'Statistics', 'Chemistry', 'Carpentry'])}"
    ),
    "restaurants": lambda v: f"{v.rng.choice(['Café', 'Bistro', 'Trattoria', 'Canteen', 'Diner'])} {v.word()}",
    "accounts": lambda v: (
        f"the {v.word()} {v.rng.choice(['savings account', 'cloud account', 'loyalty account', 'shared mailbox', 'grant account'])}"
    ),
    "buildings": lambda v: (
        f"the {v.word()} {v.rng.choice(['Tower', 'Pavilion', 'Depot', 'Annex', 'Warehouse', 'Hall'])}"
    ),
    "animals": lambda v: f"{v.word()} the {v.pick('species')}",
}

_RELS: dict[str, list[Rel]] = {
    "policies": [
        (
            "max_amount",
            "spending limit",
            ("maximum amount", "cap on spending", "limit"),
            "money",
            ("{E} caps spending at {V}.", "Under {E}, nobody may spend more than {V}."),
            ("How much can be spent at most under {E}?",),
        ),
        (
            "notice",
            "notice period",
            ("advance notice", "required notice"),
            "days",
            ("{E} requires {V} of notice.", "Requests under {E} must be filed {V} in advance."),
            ("How far ahead must a request be made under {E}?",),
        ),
        (
            "owner",
            "policy owner",
            ("person responsible", "owner"),
            "person",
            ("{V} is responsible for {E}.", "{E} is maintained by {V}."),
            ("Who maintains {E}?",),
        ),
        (
            "approver",
            "approver",
            ("person who signs off", "approving manager"),
            "person",
            ("Exceptions to {E} are approved by {V}.",),
            ("Who can approve an exception to {E}?",),
        ),
        (
            "effective",
            "effective date",
            ("start date", "date it takes effect"),
            "date",
            ("{E} takes effect on {V}.", "Starting {V}, {E} applies."),
            ("When does {E} come into force?",),
        ),
        (
            "reimbursement",
            "reimbursement rate",
            ("share reimbursed", "refund rate"),
            "percent",
            ("{E} reimburses {V} of eligible costs.",),
            ("What share of costs does {E} pay back?",),
        ),
        (
            "review",
            "review interval",
            ("review cycle", "revision interval"),
            "duration",
            ("{E} is reviewed every {V}.",),
            ("How often is {E} revisited?",),
        ),
        (
            "contact",
            "contact address",
            ("email for questions", "help address"),
            "email",
            ("Questions about {E} go to {V}.",),
            ("Where should questions about {E} be sent?",),
        ),
    ],
    "procedures": [
        (
            "steps",
            "number of steps",
            ("step count", "how many steps"),
            "count",
            ("{E} has {V} steps.", "{E} consists of {V} separate steps."),
            ("How many steps make up {E}?",),
        ),
        (
            "duration",
            "expected duration",
            ("time it takes", "typical length"),
            "duration",
            ("{E} usually takes {V}.", "Plan {V} for {E}."),
            ("How long does {E} take?",),
        ),
        (
            "tool",
            "tool used",
            ("software used", "system it relies on"),
            "tool",
            ("{E} is run with {V}.", "{E} relies on {V}."),
            ("Which tool does {E} use?",),
        ),
        (
            "lead",
            "coordinator",
            ("lead", "person in charge"),
            "person",
            ("{V} coordinates {E}.", "{E} is led by {V}."),
            ("Who is in charge of {E}?",),
        ),
        (
            "frequency",
            "scheduled day",
            ("day it runs", "weekday"),
            "weekday",
            ("{E} runs every {V}.", "Every {V}, {E} is carried out."),
            ("On which day of the week does {E} happen?",),
        ),
        (
            "ticket",
            "ticket code",
            ("reference code", "tracking code"),
            "code",
            ("{E} is tracked under ticket {V}.",),
            ("What ticket tracks {E}?",),
        ),
        (
            "room",
            "room",
            ("location", "where it takes place"),
            "room",
            ("{E} is carried out in room {V}.",),
            ("In which room is {E} done?",),
        ),
        (
            "start_time",
            "start time",
            ("starting time", "time it begins"),
            "time",
            ("{E} starts at {V}.", "At {V}, {E} begins."),
            ("At what time does {E} begin?",),
        ),
    ],
    "people": [
        (
            "employer",
            "employer",
            ("company", "workplace"),
            "org",
            ("{E} works for {V}.", "{E} has been employed by {V} for years."),
            ("Which company employs {E}?",),
        ),
        (
            "hometown",
            "hometown",
            ("home town", "place of origin"),
            "place",
            ("{E} grew up in {V}.", "{E} comes from {V}."),
            ("Where did {E} grow up?",),
        ),
        (
            "language",
            "native language",
            ("mother tongue", "first language"),
            "language",
            ("{E} speaks {V} at home.", "{E}'s first language is {V}."),
            ("What language did {E} grow up speaking?",),
        ),
        (
            "department",
            "department",
            ("team", "unit"),
            "dept",
            ("{E} works in {V}.", "{E} joined the {V} team."),
            ("Which department is {E} part of?",),
        ),
        (
            "phone",
            "phone number",
            ("extension", "number to call"),
            "phone",
            ("{E} can be reached on {V}.",),
            ("How can one phone {E}?",),
        ),
        (
            "birth_year",
            "year of birth",
            ("birth year", "year born"),
            "year",
            ("{E} was born in {V}.",),
            ("When was {E} born?",),
        ),
        (
            "mentor",
            "mentor",
            ("adviser", "supervisor"),
            "person",
            ("{E} was mentored by {V}.", "{V} supervises {E}."),
            ("Who advises {E}?",),
        ),
        (
            "office",
            "office",
            ("desk location", "office room"),
            "room",
            ("{E} sits in office {V}.",),
            ("Where is {E}'s office?",),
        ),
        (
            "salary",
            "monthly salary",
            ("monthly pay", "pay"),
            "money",
            ("{E} earns {V} a month.",),
            ("How much is {E} paid per month?",),
        ),
    ],
    "products": [
        (
            "price",
            "price",
            ("cost", "retail price"),
            "money",
            ("{E} sells for {V}.", "{E} is priced at {V}."),
            ("How much does {E} cost?",),
        ),
        (
            "warranty",
            "guarantee period",
            ("coverage period", "guarantee"),
            "duration",
            ("{E} comes with a {V} guarantee.",),
            ("How long is {E} covered?",),
        ),
        (
            "colour",
            "colour",
            ("finish", "color"),
            "colour",
            ("{E} is finished in {V}.", "{E} ships in {V}."),
            ("What colour is {E}?",),
        ),
        (
            "material",
            "housing material",
            ("body material", "what it is made of"),
            "material",
            ("{E} has a body made of {V}.",),
            ("What is {E} made of?",),
        ),
        (
            "maker",
            "manufacturer",
            ("maker", "producer"),
            "org",
            ("{E} is manufactured by {V}.", "{V} builds {E}."),
            ("Which company makes {E}?",),
        ),
        ("weight", "weight", ("mass", "size"), "size", ("{E} measures {V}.",), ("How big is {E}?",)),
        (
            "sku",
            "product code",
            ("SKU", "article number"),
            "code",
            ("{E} is listed as {V}.",),
            ("Under what code is {E} sold?",),
        ),
        (
            "release",
            "launch date",
            ("release date", "date of launch"),
            "date",
            ("{E} went on sale on {V}.", "{E} launched {V}."),
            ("When did {E} come out?",),
        ),
        (
            "stock",
            "units in stock",
            ("stock level", "units available"),
            "count",
            ("There are {V} units of {E} in stock.",),
            ("How many units of {E} are available?",),
        ),
    ],
    "places": [
        (
            "opening",
            "opening time",
            ("time it opens", "opening hour"),
            "time",
            ("{E} opens at {V}.", "Gates of {E} open at {V}."),
            ("When does {E} open?",),
        ),
        (
            "capacity",
            "capacity",
            ("maximum number of visitors", "how many people it holds"),
            "count",
            ("{E} holds up to {V} people.",),
            ("How many people fit in {E}?",),
        ),
        ("area", "area", ("surface", "size"), "size", ("{E} covers {V}.",), ("How large is {E}?",)),
        (
            "near",
            "nearest town",
            ("closest town", "neighbouring town"),
            "place",
            ("{E} lies just outside {V}.", "The closest town to {E} is {V}."),
            ("Which town is closest to {E}?",),
        ),
        (
            "warden",
            "caretaker",
            ("warden", "person who looks after it"),
            "person",
            ("{E} is looked after by {V}.",),
            ("Who takes care of {E}?",),
        ),
        (
            "closed_day",
            "closing day",
            ("day it is closed", "rest day"),
            "weekday",
            ("{E} is closed on {V}s.",),
            ("On what day is {E} shut?",),
        ),
        (
            "fee",
            "entry fee",
            ("admission price", "ticket price"),
            "money",
            ("Entry to {E} costs {V}.",),
            ("How much is admission to {E}?",),
        ),
        (
            "opened",
            "year of opening",
            ("opening year", "year it opened"),
            "year",
            ("{E} first opened in {V}.",),
            ("In what year did {E} open?",),
        ),
    ],
    "schedules": [
        (
            "departure",
            "first departure",
            ("earliest departure", "first run"),
            "time",
            ("{E} first leaves at {V}.", "The earliest {E} goes at {V}."),
            ("When is the earliest {E}?",),
        ),
        (
            "day",
            "meeting day",
            ("day of the week", "regular day"),
            "weekday",
            ("{E} meets every {V}.", "{E} takes place on {V}s."),
            ("Which day is {E} on?",),
        ),
        (
            "length",
            "session length",
            ("length", "duration"),
            "duration",
            ("Each {E} lasts {V}.",),
            ("How long is each {E}?",),
        ),
        (
            "host",
            "organiser",
            ("host", "person who runs it"),
            "person",
            ("{E} is organised by {V}.", "{V} runs {E}."),
            ("Who runs {E}?",),
        ),
        (
            "venue",
            "venue",
            ("meeting place", "location"),
            "place",
            ("{E} gathers at {V}.",),
            ("Where does {E} gather?",),
        ),
        (
            "price",
            "fare",
            ("ticket price", "cost per session"),
            "money",
            ("A seat on {E} costs {V}.",),
            ("What does a ticket for {E} cost?",),
        ),
        (
            "seats",
            "number of seats",
            ("seats", "places available"),
            "count",
            ("{E} has room for {V}.",),
            ("How many places does {E} have?",),
        ),
    ],
    "projects": [
        (
            "budget",
            "budget",
            ("funding", "allocated budget"),
            "money",
            ("{E} has a budget of {V}.", "{E} was granted {V}."),
            ("How much money does {E} have?",),
        ),
        (
            "deadline",
            "deadline",
            ("due date", "delivery date"),
            "date",
            ("{E} is due on {V}.", "{E} must be delivered by {V}."),
            ("When is {E} due?",),
        ),
        (
            "manager",
            "project manager",
            ("manager", "lead"),
            "person",
            ("{E} is managed by {V}.", "{V} leads {E}."),
            ("Who manages {E}?",),
        ),
        (
            "team_size",
            "team size",
            ("number of members", "headcount"),
            "count",
            ("{E} has {V} members.",),
            ("How many people work on {E}?",),
        ),
        ("client", "client", ("customer", "sponsor"), "org", ("{E} is being built for {V}.",), ("Who is {E} for?",)),
        (
            "stack",
            "main database",
            ("database", "data store"),
            "tool",
            ("{E} stores its data in {V}.",),
            ("Which database does {E} use?",),
        ),
        (
            "progress",
            "completion",
            ("progress", "share finished"),
            "percent",
            ("{E} is {V} complete.",),
            ("How far along is {E}?",),
        ),
    ],
    "software": [
        (
            "version",
            "latest version",
            ("current release", "newest version"),
            "version",
            ("The latest release of {E} is {V}.", "{E} {V} is the current version."),
            ("What is the newest version of {E}?",),
        ),
        (
            "port",
            "default port",
            ("port number", "listening port"),
            "count",
            ("{E} listens on port {V} by default.",),
            ("On which port does {E} listen?",),
        ),
        (
            "author",
            "maintainer",
            ("author", "main developer"),
            "person",
            ("{E} is maintained by {V}.", "{V} wrote {E}."),
            ("Who maintains {E}?",),
        ),
        (
            "timeout",
            "default timeout",
            ("timeout", "time limit"),
            "duration",
            ("{E} gives up after {V}.",),
            ("How long before {E} times out?",),
        ),
        (
            "backend",
            "storage backend",
            ("backend", "data store"),
            "tool",
            ("{E} keeps its state in {V}.",),
            ("Where does {E} keep its state?",),
        ),
        (
            "released",
            "first release year",
            ("year of first release", "launch year"),
            "year",
            ("{E} was first released in {V}.",),
            ("When did {E} first come out?",),
        ),
        (
            "config",
            "configuration key",
            ("setting name", "config key"),
            "code",
            ("{E} reads its settings from the key {V}.",),
            ("Which key holds {E}'s settings?",),
        ),
        (
            "memory",
            "memory limit",
            ("RAM limit", "maximum memory"),
            "size",
            ("{E} uses at most {V} of memory.",),
            ("How much memory can {E} use?",),
        ),
    ],
    "events": [
        (
            "date",
            "event date",
            ("date", "day it is held"),
            "date",
            ("{E} is held on {V}.", "{E} will take place on {V}."),
            ("When is {E}?",),
        ),
        (
            "city",
            "host city",
            ("location", "city"),
            "place",
            ("{E} is hosted in {V}.", "This year {E} comes to {V}."),
            ("Where is {E} held?",),
        ),
        (
            "attendees",
            "expected attendance",
            ("number of attendees", "visitors expected"),
            "count",
            ("{E} expects {V} visitors.",),
            ("How many people are expected at {E}?",),
        ),
        (
            "speaker",
            "keynote speaker",
            ("main speaker", "headline speaker"),
            "person",
            ("The keynote at {E} will be given by {V}.",),
            ("Who gives the main talk at {E}?",),
        ),
        (
            "ticket",
            "ticket price",
            ("entry price", "pass price"),
            "money",
            ("A pass for {E} costs {V}.",),
            ("How much is a ticket to {E}?",),
        ),
        (
            "sponsor",
            "main sponsor",
            ("sponsor", "backer"),
            "org",
            ("{E} is sponsored by {V}.",),
            ("Which organisation pays for {E}?",),
        ),
        (
            "registration",
            "registration deadline",
            ("sign-up deadline", "last day to register"),
            "date",
            ("Registration for {E} closes on {V}.",),
            ("By when must people sign up for {E}?",),
        ),
    ],
    "vehicles": [
        (
            "captain",
            "driver",
            ("operator", "pilot"),
            "person",
            ("{E} is operated by {V}.", "{V} drives {E}."),
            ("Who operates {E}?",),
        ),
        ("colour", "paint colour", ("colour", "livery"), "colour", ("{E} is painted {V}.",), ("What colour is {E}?",)),
        (
            "speed",
            "top speed",
            ("maximum speed", "fastest speed"),
            "count",
            ("{E} reaches {V} km/h.",),
            ("How fast can {E} go, in km/h?",),
        ),
        (
            "base",
            "home base",
            ("depot", "where it is kept"),
            "place",
            ("{E} is kept at {V}.",),
            ("Where is {E} kept?",),
        ),
        (
            "built",
            "year built",
            ("construction year", "build year"),
            "year",
            ("{E} was built in {V}.",),
            ("When was {E} built?",),
        ),
        (
            "reg",
            "registration",
            ("registration number", "plate"),
            "code",
            ("{E} is registered as {V}.",),
            ("What is {E}'s registration?",),
        ),
        (
            "load",
            "maximum load",
            ("capacity", "load limit"),
            "size",
            ("{E} carries up to {V}.",),
            ("How much can {E} carry?",),
        ),
    ],
    "courses": [
        (
            "teacher",
            "instructor",
            ("teacher", "lecturer"),
            "person",
            ("{E} is taught by {V}.", "{V} teaches {E}."),
            ("Who teaches {E}?",),
        ),
        (
            "credits",
            "credit points",
            ("credits", "number of credits"),
            "count",
            ("{E} is worth {V} credits.",),
            ("How many credits does {E} give?",),
        ),
        ("room", "lecture room", ("classroom", "room"), "room", ("{E} meets in room {V}.",), ("Where does {E} meet?",)),
        (
            "day",
            "lecture day",
            ("day", "weekday it runs"),
            "weekday",
            ("{E} runs on {V}s.",),
            ("On which weekday is {E}?",),
        ),
        ("fee", "tuition fee", ("fee", "cost"), "money", ("{E} costs {V} in tuition.",), ("What is the fee for {E}?",)),
        (
            "language",
            "language of instruction",
            ("teaching language", "language"),
            "language",
            ("{E} is taught in {V}.",),
            ("In what language is {E} given?",),
        ),
        (
            "pass",
            "pass mark",
            ("passing grade", "minimum score"),
            "percent",
            ("Students need {V} to pass {E}.",),
            ("What score is needed to pass {E}?",),
        ),
    ],
    "restaurants": [
        (
            "chef",
            "head chef",
            ("chef", "cook in charge"),
            "person",
            ("The kitchen of {E} is run by {V}.", "{V} cooks at {E}."),
            ("Who runs the kitchen at {E}?",),
        ),
        (
            "cuisine",
            "cuisine",
            ("kind of food", "style of cooking"),
            "cuisine",
            ("{E} serves {V} food.", "{E} specialises in {V} dishes."),
            ("What kind of food does {E} serve?",),
        ),
        (
            "seats",
            "number of tables",
            ("tables", "table count"),
            "count",
            ("{E} has {V} tables.",),
            ("How many tables does {E} have?",),
        ),
        (
            "opening",
            "opening hour",
            ("time it opens", "opening time"),
            "time",
            ("{E} opens its doors at {V}.",),
            ("What time does {E} open?",),
        ),
        (
            "closed",
            "day off",
            ("closing day", "day it is closed"),
            "weekday",
            ("{E} is closed every {V}.",),
            ("Which day is {E} shut?",),
        ),
        (
            "menu",
            "set menu price",
            ("price of the set menu", "menu price"),
            "money",
            ("The set menu at {E} is {V}.",),
            ("How much is the set menu at {E}?",),
        ),
        ("street", "neighbourhood", ("district", "area"), "place", ("{E} is in {V}.",), ("In which district is {E}?",)),
    ],
    "accounts": [
        (
            "number",
            "account number",
            ("account id", "number"),
            "code",
            ("{E} has the number {V}.",),
            ("What is the id of {E}?",),
        ),
        (
            "balance",
            "balance",
            ("amount in it", "current balance"),
            "money",
            ("{E} holds {V}.", "The balance of {E} is {V}."),
            ("How much is in {E}?",),
        ),
        (
            "holder",
            "holder",
            ("owner", "account holder"),
            "person",
            ("{E} belongs to {V}.", "{V} holds {E}."),
            ("Whose is {E}?",),
        ),
        (
            "rate",
            "interest rate",
            ("rate", "interest"),
            "percent",
            ("{E} earns {V} a year.",),
            ("What interest does {E} pay?",),
        ),
        (
            "opened",
            "opening date",
            ("date opened", "creation date"),
            "date",
            ("{E} was opened on {V}.",),
            ("When was {E} set up?",),
        ),
        (
            "quota",
            "storage quota",
            ("quota", "space allowed"),
            "size",
            ("{E} is limited to {V}.",),
            ("How much space does {E} get?",),
        ),
        (
            "email",
            "recovery email",
            ("backup address", "recovery address"),
            "email",
            ("The recovery address for {E} is {V}.",),
            ("Which address recovers {E}?",),
        ),
    ],
    "buildings": [
        (
            "floors",
            "number of floors",
            ("storeys", "floor count"),
            "count",
            ("{E} has {V} floors.", "{E} rises {V} storeys."),
            ("How many storeys does {E} have?",),
        ),
        (
            "architect",
            "architect",
            ("designer", "person who designed it"),
            "person",
            ("{E} was designed by {V}.", "{V} drew the plans for {E}."),
            ("Who designed {E}?",),
        ),
        (
            "built",
            "completion year",
            ("year finished", "year it was completed"),
            "year",
            ("{E} was completed in {V}.",),
            ("When was {E} finished?",),
        ),
        (
            "material",
            "facade material",
            ("cladding", "outer material"),
            "material",
            ("The facade of {E} is clad in {V}.",),
            ("What covers the outside of {E}?",),
        ),
        (
            "tenant",
            "main tenant",
            ("occupant", "tenant"),
            "org",
            ("{E} is occupied mostly by {V}.",),
            ("Which organisation occupies {E}?",),
        ),
        (
            "district",
            "district",
            ("part of town", "area"),
            "place",
            ("{E} stands in {V}.",),
            ("In which part of town is {E}?",),
        ),
        (
            "code",
            "door code",
            ("entry code", "access code"),
            "code",
            ("The door of {E} opens with {V}.",),
            ("What opens the door of {E}?",),
        ),
    ],
    "animals": [
        (
            "keeper",
            "keeper",
            ("handler", "carer"),
            "person",
            ("{E} is looked after by {V}.", "{V} feeds {E}."),
            ("Who feeds {E}?",),
        ),
        (
            "age",
            "age in years",
            ("age", "how old"),
            "count",
            ("{E} is {V} years old.",),
            ("How old is {E}, in years?",),
        ),
        (
            "enclosure",
            "enclosure",
            ("pen", "habitat number"),
            "room",
            ("{E} lives in enclosure {V}.",),
            ("Which enclosure houses {E}?",),
        ),
        ("weight", "weight", ("mass", "size"), "size", ("{E} weighs {V}.",), ("How heavy is {E}?",)),
        (
            "arrival",
            "arrival date",
            ("date it arrived", "arrival"),
            "date",
            ("{E} arrived on {V}.",),
            ("When did {E} arrive?",),
        ),
        (
            "origin",
            "place of origin",
            ("birthplace", "where it came from"),
            "place",
            ("{E} was brought from {V}.",),
            ("Where did {E} come from?",),
        ),
    ],
}

# generic statement frames over (entity, attribute, value); the last two only in held-out documents
_FRAMES = [
    "The {a} of {E} is {V}.",
    "{E}'s {a} is {V}.",
    "{E} has a {a} of {V}.",
    "For {E}, the {a} is {V}.",
    "{V} is the {a} of {E}.",
    "As for {E}, its {a} is {V}.",
    "{E} lists {V} as its {a}.",
    "Note that the {a} of {E} is {V}.",
    "The {a} for {E} was set to {V}.",
    "Records show {V} as the {a} of {E}.",
    "According to the file, {E} has {V} as its {a}.",
]
_FRAMES_HELDOUT = ["{E} — {a}: {V}.", "It is {V} that serves as the {a} of {E}."]
_QFRAMES = [
    "What is the {s} of {E}?",
    "What {s} does {E} have?",
    "Tell me the {s} of {E}.",
    "{E}: what is its {s}?",
    "Which {s} is given for {E}?",
    "Do you know {E}'s {s}?",
    "Can you tell me the {s} for {E}?",
    "I need the {s} of {E}. What is it?",
]
_QFRAMES_HELDOUT = ["Regarding {E}, what {s} is recorded?", "Give the {s} that applies to {E}."]
_PRONOUN_OPENERS = [
    "{E} is described in this note.",
    "Here are some details about {E}.",
    "This entry concerns {E}.",
    "The following applies to {E}.",
    "Some notes on {E}.",
]
_FILLER = [
    "These details were last checked by the office.",
    "Please report any errors to the front desk.",
    "Older figures may still appear in printed copies.",
    "The list is updated at the start of each quarter.",
    "Figures are rounded where needed.",
    "Not all entries have been confirmed yet.",
    "Staff should keep this information handy.",
    "Changes are announced in the weekly newsletter.",
]


def all_families() -> list[str]:
    return sorted(f"{d}.{r[0]}" for d, rels in _RELS.items() for r in rels)


def family_split(family: str) -> Split:
    """Which split a family belongs to (~1/5 held out, by a hash of its name)."""
    return split_of("family:" + family, 5)


class FamilyGenerator:
    """Documents of 1-10 facts from one split's families, values and frames (see the module docstring).

    >>> len(all_families()) >= 100
    True
    """

    def __init__(self, split: Split, seed: int = 0) -> None:
        self.split: Split = split
        self.rng = random.Random(f"families-{split}-{seed}")
        self.v = _Values(self.rng, split)
        self.families = [f for f in all_families() if family_split(f) == split]
        self._by_domain: dict[str, list[Rel]] = {}
        for d, rels in _RELS.items():
            keep = [r for r in rels if f"{d}.{r[0]}" in self.families]
            if keep:
                self._by_domain[d] = keep
        self.frames = _FRAMES + (_FRAMES_HELDOUT if split == "heldout" else [])
        self.qframes = _QFRAMES + (_QFRAMES_HELDOUT if split == "heldout" else [])

    # ---------------------------------------------------------------- pieces
    def _lookalike(self, domain: str, ent: str) -> str:
        """A similar entity of the same domain (shares all but one word), or a fresh one."""
        words = ent.split()
        caps = [i for i, w in enumerate(words) if w[:1].isupper() or w[:1].isdigit()]
        if caps and self.rng.random() < 0.7:
            i = self.rng.choice(caps)
            words = list(words)
            words[i] = str(self.v.number(2, 990)) if words[i].isdigit() else self.v.word()
            other = " ".join(words)
            if other != ent:
                return other
        return _EN[domain](self.v)

    def _statement(self, rel: Rel, ent: str, val: str, pronoun: bool) -> str:
        _name, attr, _syn, _vt, verbal, _vq = rel
        if verbal and self.rng.random() < 0.5:
            s = self.rng.choice(verbal)
        else:
            s = self.rng.choice(self.frames).replace("{a}", attr)
            if attr[0] in "aeiou":
                s = s.replace(" a {a}".replace("{a}", attr), " an " + attr)
        if pronoun and s.startswith("{E}'s "):
            s = "Its " + s[len("{E}'s ") :]
        elif pronoun and s.startswith("{E} ") and not ent[:1].isupper():
            s = "It " + s[len("{E} ") :]
        out = s.replace("{E}", ent).replace("{V}", val)
        return out[0].upper() + out[1:]

    def _question(self, rel: Rel, ent: str) -> str:
        _name, _attr, syn, _vt, _verbal, vq = rel
        r = self.rng
        if vq and r.random() < 0.45:
            q = r.choice(vq)
        else:
            q = r.choice(self.qframes).replace("{s}", r.choice(syn))
        q = q.replace("{E}", ent)
        return q[0].upper() + q[1:]

    # ---------------------------------------------------------------- documents
    def sample(self, n_facts: int | None = None, *, distractor_prob: float = 0.5) -> FamilySample:
        """A document of ``n_facts`` (default 1-10) facts and one question on one of them."""
        r = self.rng
        n = n_facts or r.randint(1, 10)
        domain = r.choice(list(self._by_domain))
        rels = self._by_domain[domain]
        # entities: the main one, maybe look-alikes (distractors), maybe entities of other domains
        main = _EN[domain](self.v)
        facts: list[tuple[str, str, Rel, str]] = []  # (domain, entity, relation, value)
        used: set[tuple[str, str]] = set()
        ents = {main: domain}
        for _ in range(n):
            if facts and r.random() < distractor_prob:
                d0, e0, rel0, _ = r.choice(facts)
                e = next((x for x in ents if x != e0 and ents[x] == d0), None) or self._lookalike(d0, e0)
                ents[e] = d0
                cand = [(d0, e, rel0)]
            elif r.random() < 0.25 and len(self._by_domain) > 1:
                d = r.choice(list(self._by_domain))
                e = next((x for x in ents if ents[x] == d), None) or _EN[d](self.v)
                ents[e] = d
                cand = [(d, e, x) for x in self._by_domain[d]]
            else:
                cand = [(domain, main, x) for x in rels]
            cand = [c for c in cand if (c[1], c[2][0]) not in used]
            if not cand:
                continue
            d, e, rel = r.choice(cand)
            used.add((e, rel[0]))
            facts.append((d, e, rel, self.v.value(rel[3])))
        # the asked fact: its value must be unique in the document
        values = [f[3] for f in facts]
        askable = [f for f in facts if values.count(f[3]) == 1]
        d, e, rel, val = r.choice(askable or facts)
        doc = self._render(facts)
        q = self._question(rel, e)
        return FamilySample(doc, q, val, "family", f"{d}.{rel[0]}", len(facts))

    def _render(self, facts: list[tuple[str, str, Rel, str]]) -> str:
        r = self.rng
        style = r.choices(["prose", "markdown", "kv", "table", "memo"], weights=[5, 2, 1, 1, 1])[0]
        by_ent: dict[str, list[tuple[Rel, str]]] = {}
        for _d, e, rel, val in facts:
            by_ent.setdefault(e, []).append((rel, val))
        if style == "table":
            cols = []
            for rows in by_ent.values():
                for rel, _ in rows:
                    if rel[1] not in cols:
                        cols.append(rel[1])
            if len(cols) <= 5:
                lines = ["| name | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
                for e, rows in by_ent.items():
                    vals = {rel[1]: v for rel, v in rows}
                    lines.append(f"| {e} | " + " | ".join(vals.get(c, "-") for c in cols) + " |")
                return "\n".join(lines)
            style = "markdown"
        if style in ("markdown", "kv"):
            parts = []
            for e, rows in by_ent.items():
                head = f"## {e[0].upper()}{e[1:]}" if style == "markdown" else f"{e[0].upper()}{e[1:]}:"
                body = [
                    f"- {rel[1].capitalize()}: {v}"
                    if r.random() < 0.6 or style == "kv"
                    else "- " + self._statement(rel, e, v, pronoun=False)
                    for rel, v in rows
                ]
                parts.append("\n".join([head, *body]))
            return "\n\n".join(parts)
        sentences: list[str] = []
        if style == "memo":
            sentences.append(r.choice(["Memo.", "To all staff:", "Update from the office.", "Notice:"]))
        order = list(by_ent.items())
        for e, rows in order:
            spread = len(rows) >= 2 and r.random() < 0.6
            if spread:
                sentences.append(r.choice(_PRONOUN_OPENERS).replace("{E}", e))
            for rel, v in rows:
                sentences.append(self._statement(rel, e, v, pronoun=spread and r.random() < 0.6))
            if r.random() < 0.3:
                sentences.append(r.choice(_FILLER))
        return " ".join(sentences)


def contains_any(text: str, needles: list[str]) -> list[str]:
    """The needles found in ``text`` (case-insensitive, whole-phrase)."""
    low = text.lower()
    return [n for n in needles if re.search(r"(?<!\w)" + re.escape(n.lower()) + r"(?!\w)", low)]
