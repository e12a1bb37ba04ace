"""The families of the T2L task library: 55 parameterized, checkable transforms.

Each family is one :class:`~memory.training.tasks.base.Family`: an input generator (``source``), a transform
(``apply``) with parameter settings (``params`` for training, ``heldout`` never trained on), a checker (by its
output type unless set) and four wording templates per setting, the last reserved for evaluation.
:data:`UNSEEN_FAMILIES` are never trained on at all; most have a sibling that is (``last_n`` / ``first_n``).

Kinds: ``lists`` (word lists), ``strings`` (letters of words), ``numbers``, ``formats`` (output layouts:
delimiters, numbering, JSON, dates, units, rounding), ``extraction`` (records, dates, entities in a sentence)
and ``style`` (wrappers, labels, answer styles).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from memory.training.tasks.base import (
    ANY,
    MONTHS,
    Family,
    NotApplicable,
    Param,
    Text,
    Typed,
    fmt_num,
    render,
    to_json_value,
)
from memory.training.tasks.words import (
    ANIMALS,
    CITIES,
    COLORS,
    COUNTRIES,
    DOMAINS,
    FRUITS,
    JOBS,
    LIST_WORDS,
    NAMES,
    SPORTS,
    TLDS,
    WEEKDAYS,
    WORDS,
)

ORD = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth"}
ORD_END = {1: "last", 2: "second to last", 3: "third to last"}


def P(pid: str, **kw: Any) -> Param:  # noqa: N802 - reads as a constructor
    """A parameter setting; its id is also readable by the transform as ``kw["id"]``."""
    return Param(pid, {"id": pid, **kw})


# ------------------------------------------------------------------ input generators (rng, kw) -> value
def words(rng: random.Random, lo: int = 3, hi: int = 6, pool: tuple[str, ...] = LIST_WORDS) -> list[str]:
    return rng.sample(pool, rng.randint(lo, hi))


def words_with(rng: random.Random, pred: Any, lo: int = 4, hi: int = 6) -> list[str]:
    """A word list with at least one word matching ``pred`` (the rest random), shuffled."""
    for _ in range(200):
        hit = rng.choice(LIST_WORDS)
        if pred(hit):
            break
    else:
        raise NotApplicable("no word matches")
    out = rng.sample(LIST_WORDS, rng.randint(lo, hi))
    if hit not in out:
        out[rng.randrange(len(out))] = hit
    return out


def src_words(rng: random.Random, kw: dict[str, Any]) -> list[str]:
    return words(rng)


def src_mixed_case(rng: random.Random, kw: dict[str, Any]) -> list[str]:
    styles = (str.upper, str.capitalize, str.lower)
    return [rng.choice(styles)(w) for w in words(rng, 2, 4)]


def src_dupes(rng: random.Random, kw: dict[str, Any]) -> list[str]:
    ws = words(rng, 3, 4)
    out = [*ws, rng.choice(ws)]
    rng.shuffle(out)
    return out


def src_word(rng: random.Random, kw: dict[str, Any]) -> str:
    return rng.choice(LIST_WORDS)


def src_nums(rng: random.Random, kw: dict[str, Any]) -> list[int]:
    return rng.sample(range(1, 100), rng.randint(4, 7))


def src_num(rng: random.Random, kw: dict[str, Any]) -> int:
    return rng.randint(2, 999)


def src_decimal(rng: random.Random, kw: dict[str, Any]) -> Decimal:
    return Decimal(rng.randint(100, 99999)) / Decimal(10 ** rng.randint(1, 4))


def src_bool(rng: random.Random, kw: dict[str, Any]) -> Typed:
    """A yes/no arithmetic question (rendered by the answer-style family itself)."""
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    claim = a + b if rng.random() < 0.5 else a + b + rng.choice([-2, -1, 1, 2, 10])
    return Typed(f"Is {a} + {b} equal to {claim}?", "question")


RECORD_FIELDS: dict[str, tuple[str, ...]] = {
    "name": NAMES,
    "city": CITIES,
    "job": JOBS,
    "pet": ANIMALS,
    "color": COLORS,
    "food": FRUITS,
    "sport": SPORTS,
    "day": WEEKDAYS,
    "country": COUNTRIES,
}


def src_record(rng: random.Random, kw: dict[str, Any]) -> dict[str, str]:
    need = [k for k in ("field", "k1", "k2") if k in kw]
    keys = {kw[k] for k in need}
    others = [k for k in RECORD_FIELDS if k not in keys]
    keys |= set(rng.sample(others, rng.randint(4, 5) - len(keys)))
    order = [k for k in RECORD_FIELDS if k in keys]
    rng.shuffle(order)
    return {k: rng.choice(RECORD_FIELDS[k]) for k in order}


def src_date(rng: random.Random, kw: dict[str, Any]) -> dt.date:
    return dt.date(rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28))


ENTITY_KINDS = ("email", "hashtag", "price", "time", "domain", "year")


def src_text(rng: random.Random, kw: dict[str, Any]) -> Text:
    """A sentence mentioning three kinds of entity, the requested one among them."""
    want = kw.get("what")
    kinds = [want] if want else []
    kinds += rng.sample([k for k in ENTITY_KINDS if k != want], 3 - len(kinds))
    name = rng.choice(NAMES)
    ent = {
        "email": f"{name.lower()}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}.{rng.choice(TLDS)}",
        "hashtag": rng.choice(WORDS),
        "price": str(rng.randint(2, 500)),
        "time": f"{rng.randint(1, 12)}:{rng.choice(['00', '15', '30', '45'])}",
        "domain": f"{rng.choice(DOMAINS)}.{rng.choice(TLDS)}",
        "year": str(rng.randint(1950, 2030)),
    }
    phrases = {
        "email": f"write to {ent['email']}",
        "hashtag": f"tagged #{ent['hashtag']}",
        "price": f"paid ${ent['price']}",
        "time": f"met at {ent['time']}",
        "domain": f"read www.{ent['domain']}",
        "year": f"since {ent['year']}",
    }
    rng.shuffle(kinds)
    body = ", ".join(phrases[k] for k in kinds)
    return Text(f"{name} {body}.", {k: ent[k] for k in kinds})


def src_quantity(rng: random.Random, kw: dict[str, Any]) -> tuple[Decimal, str]:
    value = Decimal(rng.randint(1, 99)) / Decimal(rng.choice([1, 1, 10, 100]))
    return value, kw["src"]


# ------------------------------------------------------------------ transforms
def _nth(seq: list[Any], n: int) -> Any:
    if len(seq) < n or len(seq) < 2:
        raise NotApplicable("list too short")
    return seq[n - 1]


def _shift(word: str, k: int) -> str:
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) if "a" <= c <= "z" else c for c in word)


def _sort_words(ws: list[str], by: str) -> list[str]:
    keys = {
        "alpha": lambda w: w,
        "reverse": lambda w: w,
        "length": lambda w: (len(w), w),
        "length_desc": lambda w: (-len(w), w),
        "last_letter": lambda w: (w[-1], w),
    }
    return sorted(ws, key=keys[by], reverse=by == "reverse")


def _case(ws: list[str], style: str) -> list[str]:
    if style == "upper":
        return [w.upper() for w in ws]
    if style == "lower":
        return [w.lower() for w in ws]
    if style == "title":
        return [w.capitalize() for w in ws]
    low = [w.lower() for w in ws]  # sentence case
    return [low[0].capitalize(), *low[1:]]


def _aggregate(xs: list[int], op: str) -> int:
    if op == "sum":
        return sum(xs)
    if op == "max":
        return max(xs)
    if op == "min":
        return min(xs)
    if op == "count":
        return len(xs)
    return max(xs) - min(xs)  # range


def _date(d: dt.date, fmt: str) -> str:
    return {
        "iso": f"{d.year:04d}-{d.month:02d}-{d.day:02d}",
        "dmy_slash": f"{d.day:02d}/{d.month:02d}/{d.year:04d}",
        "mdy_slash": f"{d.month:02d}/{d.day:02d}/{d.year:04d}",
        "long": f"{d.day} {MONTHS[d.month - 1]} {d.year}",
        "dmy_dot": f"{d.day:02d}.{d.month:02d}.{d.year:04d}",
        "compact": f"{d.year:04d}{d.month:02d}{d.day:02d}",
    }[fmt]


def _date_part(d: dt.date, part: str) -> Any:
    return {"year": d.year, "day": d.day, "month_name": MONTHS[d.month - 1], "month_number": d.month}[part]


def _number_items(ws: list[str], style: str) -> str:
    fmt = {"dot": "{i}. {w}", "paren": "{i}) {w}", "bracket": "[{i}] {w}", "hash": "#{i} {w}"}[style]
    return " ".join(fmt.format(i=i, w=w) for i, w in enumerate(ws, 1))


def _round(x: Any, d: int) -> str:
    if Decimal(x) == Decimal(x).to_integral_value():
        raise NotApplicable("nothing to round")
    return str(Decimal(x).quantize(Decimal(1).scaleb(-d), rounding=ROUND_HALF_UP))


def _as_int(x: Any) -> int:
    d = Decimal(x)
    if d != d.to_integral_value() or d < 0:
        raise NotApplicable("not a natural number")
    return int(d)


def _base(x: Any, base: int) -> str:
    n = _as_int(x)
    return {2: format(n, "b"), 8: format(n, "o"), 16: format(n, "x")}[base]


def _text_of(t: Typed) -> str:
    return render(t.value, t.type) if t.type != "question" else t.value


def _answer_style(t: Typed, kw: dict[str, Any]) -> str:
    if t.type == "question":
        a, rest = t.value[3:].split(" + ")
        b, claim = rest.removesuffix("?").split(" equal to ")
        truth = int(a) + int(b) == int(claim)
    elif t.type == "bool":
        truth = bool(t.value)
    else:
        raise NotApplicable("not a yes/no value")
    return kw["pos"] if truth else kw["neg"]


def _truncate(t: Typed, n: int) -> str:
    if t.type == "str":
        raise NotApplicable("cutting formatted text breaks its format")
    text = _text_of(t)
    if len(text) <= n:
        raise NotApplicable("already short")
    if text[:n] != text[:n].strip():
        raise NotApplicable("the cut ends in a space")
    return text[:n]


def _json_record(r: dict[str, str], k1: str, k2: str) -> str:
    if k1 not in r or k2 not in r:
        raise NotApplicable("missing key")
    return json.dumps({k1: r[k1], k2: r[k2]})


def _extract(t: Text, what: str) -> Any:
    if what not in t.entities:
        raise NotApplicable("not mentioned")
    v = t.entities[what]
    return int(v) if what in ("price", "year") else v


def _not_str(t: Typed) -> Any:
    if t.type == "question":
        raise NotApplicable("a question is not a value")
    return t


# ------------------------------------------------------------------ the families
_L = "lists"
FAMILIES: tuple[Family, ...] = (
    # ---- word lists
    Family(
        "sort_words",
        _L,
        "sort",
        "words",
        "words",
        (
            P("alpha", how="in alphabetical order"),
            P("reverse", how="in reverse alphabetical order"),
            P("length", how="by length, shortest first"),
            P("length_desc", how="by length, longest first"),
        ),
        (P("last_letter", how="by their last letter"),),
        lambda v, kw: _sort_words(v, kw["id"]),
        (
            "Sort the words {how}.",
            "Arrange the words {how}.",
            "Reorder the list of words {how}.",
            "Return the same words, sorted {how}.",
        ),
        source=src_words,
    ),
    Family(
        "filter_longer",
        _L,
        "filter",
        "words",
        "words",
        tuple(P(f"n{n}", n=n) for n in (3, 4, 6, 7)),
        (P("n5", n=5),),
        lambda v, kw: [w for w in v if len(w) > kw["n"]],
        (
            "Keep only the words longer than {n} letters.",
            "Remove every word that has {n} letters or fewer.",
            "Drop the words with at most {n} letters and keep the rest in order.",
            "Filter the list down to the words of more than {n} letters.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: len(w) > kw["n"]),
    ),
    Family(
        "filter_shorter",
        _L,
        "filter",
        "words",
        "words",
        tuple(P(f"n{n}", n=n) for n in (4, 5, 6, 7, 8)),
        (),
        lambda v, kw: [w for w in v if len(w) < kw["n"]],
        (
            "Keep only the words shorter than {n} letters.",
            "Remove every word that has {n} letters or more.",
            "Drop the words with at least {n} letters and keep the rest in order.",
            "Filter the list down to the words of fewer than {n} letters.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: len(w) < kw["n"]),
    ),
    Family(
        "filter_startswith",
        _L,
        "filter",
        "words",
        "words",
        tuple(P(c, c=c) for c in "bcmpst"),
        (P("g", c="g"), P("w", c="w")),
        lambda v, kw: [w for w in v if w.startswith(kw["c"])],
        (
            "Keep only the words that start with the letter {c}.",
            "Remove the words that do not begin with {c}.",
            "Return just the words whose first letter is {c}.",
            "Filter the words, keeping those beginning with {c}.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: w.startswith(kw["c"])),
    ),
    Family(
        "filter_contains",
        _L,
        "filter",
        "words",
        "words",
        tuple(P(c, c=c) for c in "aeor"),
        (P("i", c="i"), P("n", c="n")),
        lambda v, kw: [w for w in v if kw["c"] in w],
        (
            "Keep only the words that contain the letter {c}.",
            "Remove the words without an {c} in them.",
            "Return just the words in which the letter {c} appears.",
            "Filter the list to the words that include at least one {c}.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: kw["c"] in w),
    ),
    Family(
        "exclude_contains",
        _L,
        "filter",
        "words",
        "words",
        tuple(P(c, c=c) for c in "aeiorn"),
        (),
        lambda v, kw: [w for w in v if kw["c"] not in w],
        (
            "Remove the words that contain the letter {c}.",
            "Keep only the words without any {c}.",
            "Drop every word in which the letter {c} appears.",
            "Filter out the words that include the letter {c}.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: kw["c"] not in w),
    ),
    Family(
        "take_nth",
        _L,
        "pick",
        "words",
        "word",
        tuple(P(f"n{n}", n=n, ord=ORD[n]) for n in (1, 2, 4, 5)),
        (P("n3", n=3, ord=ORD[3]),),
        lambda v, kw: _nth(v, kw["n"]),
        (
            "Return the {ord} word.",
            "Give only word number {n} of the list.",
            "Which word is in position {n}? Output it.",
            "Output the word that comes {ord} in the list.",
        ),
        source=src_words,
    ),
    Family(
        "take_nth_last",
        _L,
        "pick",
        "words",
        "word",
        tuple(P(f"n{n}", n=n, ord=ORD_END[n]) for n in (1, 2)),
        (P("n3", n=3, ord=ORD_END[3]),),
        lambda v, kw: _nth(v[::-1], kw["n"]),
        (
            "Return the {ord} word.",
            "Give only the {ord} word of the list.",
            "Which word is {ord}? Output it.",
            "Output the word in {ord} position.",
        ),
        source=src_words,
    ),
    Family(
        "first_n",
        _L,
        "slice",
        "words",
        "words",
        tuple(P(f"n{n}", n=n) for n in (2, 3, 5)),
        (P("n4", n=4),),
        lambda v, kw: v[: kw["n"]] if len(v) > kw["n"] else None,
        (
            "Keep only the first {n} words.",
            "Return the opening {n} words and drop the rest.",
            "Cut the list after its first {n} words.",
            "Output just the initial {n} words of the list.",
        ),
        source=lambda rng, kw: words(rng, 3, 7),
    ),
    Family(
        "last_n",
        _L,
        "slice",
        "words",
        "words",
        tuple(P(f"n{n}", n=n) for n in (2, 3, 4, 5)),
        (),
        lambda v, kw: v[-kw["n"] :] if len(v) > kw["n"] else None,
        (
            "Keep only the last {n} words.",
            "Return the final {n} words and drop the rest.",
            "Cut the list down to its last {n} words.",
            "Output just the closing {n} words of the list.",
        ),
        source=lambda rng, kw: words(rng, 3, 7),
    ),
    Family(
        "reverse",
        _L,
        "reverse",
        "words",
        "words",
        (P("order", what="the order of the words"), P("letters", what="the letters of every word")),
        (P("both", what="the order of the words and the letters of every word"),),
        lambda v, kw: {
            "order": lambda: v[::-1],
            "letters": lambda: [w[::-1] for w in v],
            "both": lambda: [w[::-1] for w in v[::-1]],
        }[kw["id"]](),
        (
            "Reverse {what}.",
            "Write the input with {what} reversed.",
            "Turn around {what}.",
            "Flip {what}, so it reads backwards.",
        ),
        source=lambda rng, kw: words(rng, 2, 4),
    ),
    Family(
        "case",
        "strings",
        "case",
        "words",
        "words",
        (P("upper", style="upper case"), P("lower", style="lower case"), P("title", style="title case")),
        (P("sentence", style="sentence case (only the very first letter capitalised)"),),
        lambda v, kw: _case(v, kw["id"]),
        (
            "Write the words in {style}.",
            "Convert the text to {style}.",
            "Rewrite the input using {style}.",
            "Change the letter case of the text to {style}.",
        ),
        source=src_mixed_case,
    ),
    Family(
        "replace_letter",
        "strings",
        "letters",
        "words",
        "words",
        (
            P("a_o", x="a", y="o"),
            P("e_i", x="e", y="i"),
            P("o_u", x="o", y="u"),
            P("s_z", x="s", y="z"),
            P("t_d", x="t", y="d"),
        ),
        (P("i_e", x="i", y="e"), P("r_l", x="r", y="l")),
        lambda v, kw: [w.replace(kw["x"], kw["y"]) for w in v],
        (
            "Replace every letter {x} with {y}.",
            "Change each {x} in the words to {y}.",
            "Substitute {y} for every {x} in the text.",
            "Wherever the letter {x} appears, write {y} instead.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: kw["x"] in w, 2, 4),
    ),
    Family(
        "remove_letter",
        "strings",
        "letters",
        "words",
        "words",
        tuple(P(c, c=c) for c in "aeiorst"),
        (),
        lambda v, kw: [w.replace(kw["c"], "") for w in v],
        (
            "Delete every letter {c} from the words.",
            "Remove all occurrences of {c} from the text.",
            "Write the words without the letter {c}.",
            "Strip out each {c}, keeping every other letter.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: kw["c"] in w, 2, 4),
    ),
    Family(
        "shift_letters",
        "strings",
        "letters",
        "words",
        "words",
        tuple(P(f"k{k}", k=k, places=f"{k} place" + "s" * (k > 1)) for k in (1, 2, 3, 5)),
        (P("k4", k=4, places="4 places"),),
        lambda v, kw: [_shift(w, kw["k"]) for w in v],
        (
            "Shift every letter forward by {places} in the alphabet (z wraps to a).",
            "Replace each letter with the letter {places} later in the alphabet.",
            "Apply a Caesar shift of {k} to the text.",
            "Move each letter {places} ahead in the alphabet, wrapping around after z.",
        ),
        source=lambda rng, kw: words(rng, 1, 2),
    ),
    Family(
        "truncate_words",
        "strings",
        "letters",
        "words",
        "words",
        tuple(P(f"n{n}", n=n, first=f"first {n} letters" if n > 1 else "first letter") for n in (1, 2, 4)),
        (P("n3", n=3, first="first 3 letters"),),
        lambda v, kw: [w[: kw["n"]] for w in v],
        (
            "Shorten every word to its {first}.",
            "Keep only the {first} of each word.",
            "Cut each word down to the {first}.",
            "Abbreviate every word to its {first}.",
        ),
        source=src_words,
    ),
    Family(
        "repeat_each",
        _L,
        "repeat",
        "words",
        "words",
        (P("k2", k=2, times="twice"), P("k4", k=4, times="four times")),
        (P("k3", k=3, times="three times"),),
        lambda v, kw: [w for w in v for _ in range(kw["k"])],
        (
            "Write each word {times}.",
            "Repeat every word {times} in a row.",
            "Say each word {times} before moving to the next.",
            "Output every word of the list {times}.",
        ),
        source=lambda rng, kw: words(rng, 1, 3, WORDS),
    ),
    Family(
        "dedupe",
        _L,
        "repeat",
        "words",
        "words",
        (P("first", keep="first"), P("last", keep="last")),
        (),
        lambda v, kw: list(dict.fromkeys(v)) if kw["keep"] == "first" else list(dict.fromkeys(v[::-1]))[::-1],
        (
            "Remove repeated words, keeping the {keep} occurrence of each.",
            "Drop duplicate words; keep each word at its {keep} appearance.",
            "Write each word once, where it appears {keep}.",
            "Deduplicate the words, keeping the {keep} copy of every word.",
        ),
        source=src_dupes,
    ),
    Family(
        "join",
        "formats",
        "layout",
        "words",
        "str",
        (
            P("comma", d=", ", name="commas"),
            P("hyphen", d="-", name="hyphens"),
            P("underscore", d="_", name="underscores"),
            P("pipe", d=" | ", name="vertical bars with spaces"),
            P("semicolon", d="; ", name="semicolons"),
        ),
        (P("slash", d="/", name="slashes"), P("plus", d=" + ", name="plus signs with spaces")),
        lambda v, kw: kw["d"].join(v) if len(v) > 1 else None,
        (
            "Join the words with {name}.",
            "Put {name} between the words.",
            "Write the words on one line separated by {name}.",
            "Connect consecutive words using {name} as the separator.",
        ),
        source=src_words,
    ),
    Family(
        "number_items",
        "formats",
        "layout",
        "words",
        "str",
        (
            P("dot", style="dot", ex="1. apple 2. pear"),
            P("paren", style="paren", ex="1) apple 2) pear"),
            P("bracket", style="bracket", ex="[1] apple [2] pear"),
        ),
        (P("hash", style="hash", ex="#1 apple #2 pear"),),
        lambda v, kw: _number_items(v, kw["style"]),
        (
            "Number the words like this: {ex}.",
            "Put a number before each word, in the style {ex}.",
            "Write the words as a numbered list on one line, formatted as {ex}.",
            "Prefix every word with its position, as in {ex}.",
        ),
        source=lambda rng, kw: words(rng, 2, 4),
    ),
    Family(
        "has_word_starting",
        "lists",
        "test",
        "words",
        "bool",
        tuple(P(c, c=c) for c in "bcps"),
        (P("m", c="m"),),
        lambda v, kw: any(w.startswith(kw["c"]) for w in v),
        (
            "Is there a word that starts with {c}?",
            "Does any word begin with the letter {c}?",
            "Check whether one of the words has {c} as its first letter.",
            "Tell me if the list holds a word beginning with {c}.",
        ),
        source=lambda rng, kw: words(rng, 2, 4),
    ),
    # ---- letters of one word
    Family(
        "letter_at",
        "strings",
        "pick",
        "word",
        "word",
        tuple(P(f"n{n}", n=n, ord=ORD[n]) for n in (1, 2, 4)),
        (P("n3", n=3, ord=ORD[3]),),
        lambda v, kw: v[kw["n"] - 1] if len(v) >= kw["n"] else None,
        (
            "Return the {ord} letter of the word.",
            "Which letter is in position {n} of the word?",
            "Give only letter number {n}.",
            "Output the {ord} character of the word.",
        ),
        source=src_word,
    ),
    Family(
        "spell_out",
        "formats",
        "layout",
        "word",
        "str",
        (P("hyphen", d="-", name="hyphens"), P("space", d=" ", name="spaces"), P("dot", d=".", name="dots")),
        (P("star", d="*", name="asterisks"),),
        lambda v, kw: kw["d"].join(v),
        (
            "Spell the word with {name} between the letters.",
            "Separate the letters of the word with {name}.",
            "Write the word letter by letter, joined by {name}.",
            "Put {name} between every two letters of the word.",
        ),
        source=src_word,
    ),
    Family(
        "count_letter",
        "strings",
        "count",
        "words",
        "num",
        tuple(P(c, c=c) for c in "aenor"),
        (P("t", c="t"),),
        lambda v, kw: sum(w.lower().count(kw["c"]) for w in v) or None,
        (
            "Count how many times the letter {c} appears.",
            "How many letters {c} does the text contain?",
            "Return the number of occurrences of {c}.",
            "Tally the letter {c} in the text and give the count.",
        ),
        source=lambda rng, kw: words_with(rng, lambda w: kw["c"] in w, 1, 3),
    ),
    # ---- numbers
    Family(
        "sort_numbers",
        "numbers",
        "sort",
        "nums",
        "nums",
        (P("asc", how="from smallest to largest"), P("desc", how="from largest to smallest")),
        (),
        lambda v, kw: sorted(v, reverse=kw["id"] == "desc"),
        (
            "Sort the numbers {how}.",
            "Arrange the numbers {how}.",
            "Reorder the list of numbers {how}.",
            "Return the same numbers, sorted {how}.",
        ),
        source=src_nums,
    ),
    Family(
        "keep_greater",
        "numbers",
        "filter",
        "nums",
        "nums",
        tuple(P(f"t{t}", t=t) for t in (10, 20, 40, 50, 70)),
        (P("t30", t=30), P("t60", t=60)),
        lambda v, kw: [x for x in v if x > kw["t"]],
        (
            "Keep only the numbers greater than {t}.",
            "Remove every number that is {t} or less.",
            "Return just the numbers above {t}, in their order.",
            "Filter the list down to the values exceeding {t}.",
        ),
        source=src_nums,
    ),
    Family(
        "keep_less",
        "numbers",
        "filter",
        "nums",
        "nums",
        tuple(P(f"t{t}", t=t) for t in (20, 30, 50, 60, 80)),
        (),
        lambda v, kw: [x for x in v if x < kw["t"]],
        (
            "Keep only the numbers less than {t}.",
            "Remove every number that is {t} or more.",
            "Return just the numbers below {t}, in their order.",
            "Filter the list down to the values under {t}.",
        ),
        source=src_nums,
    ),
    Family(
        "keep_divisible",
        "numbers",
        "filter",
        "nums",
        "nums",
        tuple(P(f"k{k}", k=k) for k in (2, 3, 5)),
        (P("k4", k=4),),
        lambda v, kw: [x for x in v if x % kw["k"] == 0],
        (
            "Keep only the multiples of {k}.",
            "Remove the numbers that are not divisible by {k}.",
            "Return just the numbers that {k} divides evenly.",
            "Filter the list to the numbers divisible by {k}.",
        ),
        source=src_nums,
    ),
    Family(
        "aggregate",
        "numbers",
        "reduce",
        "nums",
        "num",
        (
            P("sum", op="sum", what="sum"),
            P("max", op="max", what="largest number"),
            P("min", op="min", what="smallest number"),
            P("count", op="count", what="count of numbers"),
        ),
        (P("range", op="range", what="range (largest minus smallest)"),),
        lambda v, kw: _aggregate(v, kw["op"]),
        (
            "Return the {what} of the list.",
            "Compute the {what} of the numbers.",
            "What is the {what}? Answer with the number.",
            "Give the {what} of the listed values.",
        ),
        source=src_nums,
    ),
    Family(
        "kth_largest",
        "numbers",
        "pick",
        "nums",
        "num",
        tuple(P(f"k{k}", k=k, ord=ORD[k]) for k in (1, 2, 4)),
        (P("k3", k=3, ord=ORD[3]),),
        lambda v, kw: _nth(sorted(v, reverse=True), kw["k"]),
        (
            "Return the {ord} largest number.",
            "Which number is the {ord} biggest in the list?",
            "Give the number ranked {ord} from the top.",
            "Output the {ord} highest value of the list.",
        ),
        source=src_nums,
    ),
    Family(
        "kth_smallest",
        "numbers",
        "pick",
        "nums",
        "num",
        tuple(P(f"k{k}", k=k, ord=ORD[k]) for k in (1, 2, 3)),
        (),
        lambda v, kw: _nth(sorted(v), kw["k"]),
        (
            "Return the {ord} smallest number.",
            "Which number is the {ord} lowest in the list?",
            "Give the number ranked {ord} from the bottom.",
            "Output the {ord} lowest value of the list.",
        ),
        source=src_nums,
    ),
    Family(
        "add_each",
        "numbers",
        "arith",
        "nums",
        "nums",
        tuple(P(f"k{k}", k=k) for k in (1, 2, 5, 10, 100)),
        (P("k3", k=3), P("k20", k=20)),
        lambda v, kw: [x + kw["k"] for x in v],
        (
            "Add {k} to every number.",
            "Increase each number in the list by {k}.",
            "Return the list with {k} added to each value.",
            "Raise every value of the list by {k}.",
        ),
        source=lambda rng, kw: rng.sample(range(1, 100), rng.randint(2, 4)),
    ),
    Family(
        "multiply_each",
        "numbers",
        "arith",
        "nums",
        "nums",
        tuple(P(f"k{k}", k=k) for k in (2, 3, 10)),
        (P("k5", k=5),),
        lambda v, kw: [x * kw["k"] for x in v],
        (
            "Multiply every number by {k}.",
            "Return the list with each value times {k}.",
            "Scale each number in the list by a factor of {k}.",
            "Give every value of the list multiplied by {k}.",
        ),
        source=lambda rng, kw: rng.sample(range(1, 100), rng.randint(2, 4)),
    ),
    Family(
        "add_const",
        "numbers",
        "arith",
        "num",
        "num",
        (
            P("p1", k=1, do="add 1"),
            P("p10", k=10, do="add 10"),
            P("p100", k=100, do="add 100"),
            P("m1", k=-1, do="subtract 1"),
            P("m10", k=-10, do="subtract 10"),
        ),
        (P("p5", k=5, do="add 5"), P("m5", k=-5, do="subtract 5")),
        lambda v, kw: Decimal(v) + kw["k"],
        (
            "Take the number and {do}.",
            "Return the number after you {do}.",
            "Compute the result: {do}.",
            "Work out what you get when you {do} to the number.",
        ),
        source=src_num,
    ),
    Family(
        "multiply_const",
        "numbers",
        "arith",
        "num",
        "num",
        (P("x2", k=2, name="two"), P("x3", k=3, name="three"), P("x10", k=10, name="ten")),
        (P("x4", k=4, name="four"),),
        lambda v, kw: Decimal(v) * kw["k"],
        (
            "Multiply the number by {k}.",
            "Return {name} times the number.",
            "Scale the number by a factor of {k}.",
            "Give the product of the number and {k}.",
        ),
        source=src_num,
    ),
    Family(
        "round_num",
        "formats",
        "layout",
        "num",
        "str",
        (
            P("d0", d=0, places="a whole number"),
            P("d1", d=1, places="one decimal place"),
            P("d3", d=3, places="three decimal places"),
        ),
        (P("d2", d=2, places="two decimal places"),),
        lambda v, kw: _round(v, kw["d"]),
        (
            "Round the number to {places}.",
            "Give the number rounded to {places}.",
            "Write the value with {places} (round half up).",
            "Express the number rounded off to {places}.",
        ),
        source=src_decimal,
    ),
    Family(
        "unit_convert",
        "formats",
        "units",
        "quantity",
        "num",
        (
            P("km_m", src="km", dst="metres", f=1000),
            P("m_cm", src="m", dst="centimetres", f=100),
            P("kg_g", src="kg", dst="grams", f=1000),
            P("h_min", src="h", dst="minutes", f=60),
            P("min_s", src="min", dst="seconds", f=60),
            P("l_ml", src="L", dst="millilitres", f=1000),
        ),
        (P("m_mm", src="m", dst="millimetres", f=1000), P("day_h", src="days", dst="hours", f=24)),
        lambda v, kw: v[0] * kw["f"],
        (
            "Convert the quantity to {dst} and give the number only.",
            "How many {dst} is that? Answer with a number.",
            "Express the amount in {dst}, without the unit.",
            "Rewrite the measurement in {dst}, digits only.",
        ),
        source=src_quantity,
    ),
    Family(
        "with_unit",
        "formats",
        "units",
        "num",
        "str",
        (P("kg", u="kg"), P("km", u="km"), P("cm", u="cm"), P("pct", u="%")),
        (P("m", u="m"),),
        lambda v, kw: f"{fmt_num(v)}{'' if kw['u'] == '%' else ' '}{kw['u']}",
        (
            "Write the number followed by the unit {u}.",
            "Add the unit {u} after the number.",
            "Give the value with {u} as its unit.",
            "Attach the unit {u} to the number.",
        ),
        source=src_num,
    ),
    Family(
        "currency",
        "formats",
        "units",
        "num",
        "str",
        (P("usd", sym="$", name="US dollars"), P("eur", sym="€", name="euros"), P("gbp", sym="£", name="pounds")),
        (),
        lambda v, kw: f"{kw['sym']}{Decimal(v).quantize(Decimal('0.01'), rounding=ROUND_HALF_UP)}",
        (
            "Write the amount in {name} with the {sym} sign and two decimals.",
            "Format the number as a price in {name}, like {sym}12.50.",
            "Show the value as money: {sym} then the amount with cents.",
            "Present the number as an amount of {name} ({sym}, two decimal places).",
        ),
        source=src_num,
    ),
    Family(
        "zero_pad",
        "formats",
        "layout",
        "num",
        "str",
        tuple(P(f"w{w}", w=w) for w in (3, 5, 6)),
        (P("w4", w=4),),
        lambda v, kw: str(_as_int(v)).zfill(kw["w"]),
        (
            "Pad the number with leading zeros to {w} digits.",
            "Write the number using exactly {w} digits.",
            "Left-fill the number with zeros until it is {w} digits long.",
            "Show the integer as a {w}-digit code with leading zeros.",
        ),
        source=lambda rng, kw: rng.randint(1, 10 ** (kw["w"] - 1) - 1),
    ),
    Family(
        "number_base",
        "formats",
        "layout",
        "num",
        "str",
        (P("b2", base=2, name="binary"), P("b16", base=16, name="hexadecimal")),
        (P("b8", base=8, name="octal"),),
        lambda v, kw: _base(v, kw["base"]),
        (
            "Write the number in {name}.",
            "Convert the number to {name}.",
            "Give the {name} form of the number.",
            "Express the integer in base {base}.",
        ),
        checker="ci",
        source=lambda rng, kw: rng.randint(9, 255),
    ),
    Family(
        "greater_than",
        "numbers",
        "test",
        "num",
        "bool",
        tuple(P(f"t{t}", t=t) for t in (10, 50, 100, 500)),
        (P("t250", t=250),),
        lambda v, kw: Decimal(v) > kw["t"],
        (
            "Is the number greater than {t}?",
            "Is the value above {t}?",
            "Does the number exceed {t}?",
            "Tell me whether the number is bigger than {t}.",
        ),
        source=lambda rng, kw: rng.randint(max(1, kw["t"] // 2), kw["t"] * 2),
    ),
    Family(
        "divisible",
        "numbers",
        "test",
        "num",
        "bool",
        tuple(P(f"k{k}", k=k) for k in (2, 3, 5)),
        (P("k4", k=4),),
        lambda v, kw: _as_int(v) % kw["k"] == 0,
        (
            "Is the number divisible by {k}?",
            "Is the number a multiple of {k}?",
            "Can the number be divided by {k} without remainder?",
            "Tell me whether {k} divides the number evenly.",
        ),
        source=src_num,
    ),
    # ---- extraction
    Family(
        "record_field",
        "extraction",
        "record",
        "record",
        "word",
        tuple(P(k, field=k) for k in ("name", "city", "job", "pet", "color", "food")),
        (P("sport", field="sport"), P("country", field="country")),
        lambda v, kw: v.get(kw["field"]),
        (
            "Return the value of the field named {field}.",
            "What is the {field} in the record?",
            "Look up the {field} entry and give its value.",
            "From the record, output the {field} only.",
        ),
        source=src_record,
    ),
    Family(
        "record_json",
        "formats",
        "json",
        "record",
        "str",
        (
            P("name_city", k1="name", k2="city"),
            P("name_job", k1="name", k2="job"),
            P("city_pet", k1="city", k2="pet"),
            P("job_color", k1="job", k2="color"),
            P("pet_food", k1="pet", k2="food"),
            P("name_food", k1="name", k2="food"),
        ),
        (P("name_color", k1="name", k2="color"), P("city_job", k1="city", k2="job")),
        lambda v, kw: _json_record(v, kw["k1"], kw["k2"]),
        (
            "Reply in JSON with the keys {k1} and {k2}.",
            "Return a JSON object holding only the {k1} and the {k2} from the record.",
            "Extract {k1} and {k2} and output them as a JSON object.",
            "Give a JSON object whose keys are {k1} and {k2}, filled from the record.",
        ),
        checker="json",
        source=src_record,
    ),
    Family(
        "date_format",
        "formats",
        "date",
        "date",
        "str",
        (
            P("iso", fmt="iso", name="YYYY-MM-DD"),
            P("dmy_slash", fmt="dmy_slash", name="DD/MM/YYYY"),
            P("mdy_slash", fmt="mdy_slash", name="MM/DD/YYYY"),
            P("long", fmt="long", name="day month-name year, like 5 March 2024"),
        ),
        (P("dmy_dot", fmt="dmy_dot", name="DD.MM.YYYY"), P("compact", fmt="compact", name="YYYYMMDD")),
        lambda v, kw: _date(v, kw["fmt"]),
        (
            "Write the date in the format {name}.",
            "Give the date as {name}.",
            "Convert the date to the {name} format.",
            "Output the date, formatted as {name}.",
        ),
        source=src_date,
    ),
    Family(
        "date_part",
        "extraction",
        "date",
        "date",
        lambda kw: "word" if kw["part"] == "month_name" else "num",
        (
            P("year", part="year", what="year"),
            P("day", part="day", what="day of the month"),
            P("month_name", part="month_name", what="name of the month"),
        ),
        (P("month_number", part="month_number", what="month as a number"),),
        lambda v, kw: _date_part(v, kw["part"]),
        (
            "Return the {what} of the date.",
            "What is the {what}?",
            "Give only the {what} from the date.",
            "From the date, output the {what}.",
        ),
        source=src_date,
    ),
    Family(
        "date_shift",
        "extraction",
        "date_shift",
        "date",
        "date",
        tuple(P(f"d{n}", n=n) for n in (1, 2, 7, 10)),
        (P("d3", n=3), P("d14", n=14)),
        lambda v, kw: v + dt.timedelta(days=kw["n"]),
        (
            "Add {n} days to the date.",
            "Give the date {n} days later.",
            "Move the date forward by {n} days.",
            "Which date comes {n} days after this one?",
        ),
        source=src_date,
    ),
    Family(
        "extract",
        "extraction",
        "extract",
        "text",
        lambda kw: "num" if kw["what"] in ("price", "year") else "word",
        (
            P("email", what="email", name="the email address"),
            P("hashtag", what="hashtag", name="the hashtag word without #"),
            P("price", what="price", name="the price in dollars, as a number"),
            P("time", what="time", name="the time of day"),
        ),
        (P("domain", what="domain", name="the website domain without www"),),
        lambda v, kw: _extract(v, kw["what"]),
        (
            "Extract {name} from the sentence.",
            "Find {name} in the text and return it.",
            "Which is {name}? Give it alone.",
            "Pull out {name} mentioned in the sentence.",
        ),
        source=src_text,
    ),
    # ---- style: any value in, formatted text out
    Family(
        "wrap",
        "style",
        "style",
        ANY,
        "str",
        (
            P("square", l="[", r="]", name="square brackets"),
            P("round", l="(", r=")", name="round brackets"),
            P("curly", l="{", r="}", name="curly braces"),
            P("double", l='"', r='"', name="double quotes"),
            P("angle", l="<", r=">", name="angle brackets"),
        ),
        (P("single", l="'", r="'", name="single quotes"), P("stars", l="*", r="*", name="asterisks")),
        lambda v, kw: f"{kw['l']}{_text_of(_not_str(v))}{kw['r']}",
        (
            "Wrap the answer in {name}.",
            "Put the result between {name}.",
            "Surround the output with {name}.",
            "Enclose the final answer in {name}.",
        ),
        source=lambda rng, kw: Typed(words(rng, 1, 3), "words"),
    ),
    Family(
        "prefix_label",
        "style",
        "style",
        ANY,
        "str",
        tuple(P(x.lower(), label=x) for x in ("Result", "Final", "Reply", "Note")),
        (P("value", label="Value"),),
        lambda v, kw: f"{kw['label']}: {_text_of(_not_str(v))}",
        (
            "Start the answer with '{label}: '.",
            "Begin the output with the label {label} and a colon.",
            "Put '{label}:' in front of the result.",
            "Label the answer by writing {label}: before it.",
        ),
        source=lambda rng, kw: Typed(words(rng, 1, 3), "words"),
    ),
    Family(
        "end_mark",
        "style",
        "style",
        ANY,
        "str",
        (
            P("bang", m="!", name="an exclamation mark"),
            P("question", m="?", name="a question mark"),
            P("dots", m="...", name="three dots"),
        ),
        (P("semicolon", m=";", name="a semicolon"),),
        lambda v, kw: f"{_text_of(_not_str(v))}{kw['m']}",
        (
            "End the answer with {name}.",
            "Finish the output with {name}.",
            "Put {name} after the result.",
            "Close the answer with {name} at the end.",
        ),
        source=lambda rng, kw: Typed(words(rng, 1, 3), "words"),
    ),
    Family(
        "json_wrap",
        "formats",
        "json",
        ANY,
        "str",
        tuple(P(k, key=k) for k in ("answer", "result", "value", "output", "data")),
        (P("item", key="item"), P("text", key="text")),
        lambda v, kw: json.dumps({kw["key"]: to_json_value(_not_str(v).value, v.type)}),
        (
            'Reply in JSON with the key "{key}".',
            'Return a JSON object whose "{key}" field holds the answer.',
            'Format the result as JSON: {{"{key}": ...}}.',
            'Answer with a JSON object, putting the result under "{key}".',
        ),
        checker="json",
        source=lambda rng, kw: Typed(words(rng, 1, 3), "words"),
    ),
    Family(
        "truncate_chars",
        "formats",
        "length",
        ANY,
        "str",
        tuple(P(f"n{n}", n=n) for n in (3, 5, 8, 12)),
        (P("n6", n=6), P("n10", n=10)),
        lambda v, kw: _truncate(_not_str(v), kw["n"]),
        (
            "Keep only the first {n} characters of the answer.",
            "Cut the output to at most {n} characters.",
            "Write only the opening {n} characters.",
            "Limit the answer to its first {n} characters.",
        ),
        source=lambda rng, kw: Typed(words(rng, 2, 4), "words"),
    ),
    Family(
        "answer_style",
        "style",
        "answer",
        ANY,
        "str",
        (
            P("yes_caps", pos="YES", neg="NO"),
            P("true_false", pos="true", neg="false"),
            P("y_n", pos="Y", neg="N"),
            P("one_zero", pos="1", neg="0"),
        ),
        (P("right_wrong", pos="right", neg="wrong"),),
        _answer_style,
        (
            "Answer with {pos} or {neg}.",
            "Reply {pos} if so and {neg} otherwise.",
            "Use {pos} for yes and {neg} for no.",
            "Give your verdict as {pos} or {neg}.",
        ),
        source=lambda rng, kw: src_bool(rng, kw),
    ),
)

# Whole families never trained on (the hardest split); each has a trained sibling.
UNSEEN_FAMILIES: tuple[str, ...] = (
    "filter_shorter",
    "exclude_contains",
    "last_n",
    "keep_less",
    "kth_smallest",
    "remove_letter",
    "spell_out",
    "currency",
)
