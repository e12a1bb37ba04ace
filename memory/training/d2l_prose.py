"""Real prose for Doc-to-LoRA: passages from text on this machine, questions made from them automatically.

Sources (read offline, nothing downloaded):

- ``meta``: the long descriptions in the virtualenv's ``*.dist-info/METADATA`` (one source per distribution);
- ``pkgdoc``: ``.md``/``.rst``/``.txt`` files shipped inside installed packages (one source per package);
- ``docstring``: module, class and function docstrings of installed packages and of Python's standard library,
  read with :mod:`ast` (never imported; one source per top-level package or stdlib module);
- ``man``: manual pages rendered by ``man`` when it is installed (one source per page).

Passages are paragraphs of 25-220 words that read as prose (few code characters). Anything about licences,
copyright, warranties or liability, and Debian policy, is dropped: those texts repeat across packages and are
kept for evaluation. The split is *by source*: a hash of ``family:source`` puts ~1/6 of sources in ``heldout``;
no passage of a held-out source is ever trained on.

Questions (all answers are short spans of the passage):

- ``wh``: a sentence reworded into a question by a few patterns ("X is Y" -> "What is X?", "X was written by
  Y" -> "By whom was X written?", "... in 1998" -> "In what year ...?", "defaults to Y" -> "What is the default
  ...?", numbers -> "How many <unit> ...?");
- ``cloze``: a salient span (number, name, noun phrase, last words) blanked out of a sentence;
- ``continue``: a dense self-supervised target, the words that follow one of the passage's sentences.

>>> p = Passage("meta", "demo", "The tool was written by Ada Byron in 1843. It reads punched cards and prints tables.")
>>> qs = questions(p, __import__("random").Random(0))
>>> all(q.answer.lower() in p.text.lower() for q in qs)
True
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Split = Literal["train", "heldout"]

_EXCLUDE = re.compile(
    r"licen[cs]|copyright|warrant|liabilit|merchantab|\bGPL\b|\bMIT\b|apache license|redistribut|all rights reserved|"
    r"debian policy|policy manual|terms and conditions|\blegal\b|indemn|disclaim|patent",
    re.IGNORECASE,
)
_CODEY = re.compile(r"[{}\[\]<>=_`|\\#$@~^*]|::|\(\)|\.\w+\(|>>>|https?://")


@dataclass(frozen=True)
class Passage:
    family: str  # meta | pkgdoc | docstring | man
    source: str  # distribution, package, module or man page
    text: str

    @property
    def split(self) -> Split:
        return source_split(self.family, self.source)


@dataclass(frozen=True)
class ProseSample:
    document: str
    question: str
    answer: str
    kind: str  # "prose" (wh/cloze) | "continue"
    form: str  # wh | cloze | continue
    source: str


def source_split(family: str, source: str) -> Split:
    h = int.from_bytes(hashlib.sha1(f"{family}:{source.lower()}".encode()).digest()[:4], "big")
    return "heldout" if h % 6 == 0 else "train"


# ---------------------------------------------------------------------------- passages
def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _is_prose(par: str) -> bool:
    words = par.split()
    if not 25 <= len(words) <= 220:
        return False
    if _EXCLUDE.search(par):
        return False
    codey = len(_CODEY.findall(par))
    letters = sum(c.isalpha() for c in par)
    if codey > len(words) / 12 or letters < 0.7 * len(par):
        return False
    return par.count(".") >= 1 and par[0].isupper()


def paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a text (blank-line separated; markup, lists and code blocks skipped)."""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or any(
            ln.lstrip().startswith(("-", "*", "+", ">", "|", "#", "..", "    ", "\t", "=", "~")) for ln in lines
        ):
            continue
        par = _clean(" ".join(lines))
        if _is_prose(par):
            yield par


def _site_packages() -> list[Path]:
    out = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    return out or [Path(sysconfig.get_paths()["purelib"])]


def _meta_passages(sp: Path) -> Iterator[Passage]:
    for meta in sorted(sp.glob("*.dist-info/METADATA")):
        name = meta.parent.name.split("-")[0].lower()
        try:
            raw = meta.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        body = raw.split("\n\n", 1)[1] if "\n\n" in raw else ""
        for par in paragraphs(body):
            yield Passage("meta", name, par)


def _pkgdoc_passages(sp: Path, max_files: int = 4000) -> Iterator[Passage]:
    n = 0
    for f in sorted(sp.rglob("*")):
        if f.suffix.lower() not in (".md", ".rst", ".txt") or "dist-info" in str(f) or not f.is_file():
            continue
        if _EXCLUDE.search(f.name) or f.stat().st_size > 400_000:
            continue
        rel = f.relative_to(sp).parts
        n += 1
        if n > max_files:
            return
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for par in paragraphs(text):
            yield Passage("pkgdoc", rel[0].lower(), par)


def _docstring_passages(root: Path, family_root: str, max_files: int = 6000) -> Iterator[Passage]:
    n = 0
    for f in sorted(root.rglob("*.py")):
        parts = f.relative_to(root).parts
        if any(
            p in ("test", "tests", "testing", "idlelib", "lib2to3", "site-packages", "dist-packages")
            or (p.startswith("_") and p != "__init__.py")
            for p in parts[:-1]
        ):
            continue
        n += 1
        if n > max_files:
            return
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError, OSError, RecursionError):
            continue
        source = parts[0].removesuffix(".py").lower()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    for par in paragraphs(doc):
                        yield Passage(family_root, source, par)


def _man_passages(max_pages: int = 600) -> Iterator[Passage]:
    root = Path("/usr/share/man")
    pages = sorted(p for sec in ("man1", "man5", "man7", "man8") for p in (root / sec).glob("*.gz"))
    rng = random.Random(0)
    rng.shuffle(pages)
    for page in pages[:max_pages]:
        name = page.name.split(".")[0]
        try:
            out = subprocess.run(
                ["man", "-P", "cat", str(page)],
                capture_output=True,
                text=True,
                timeout=10,
                env={"MANWIDTH": "2000", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = re.sub(r".\x08", "", out)
        blocks = [_clean(b) for b in re.split(r"\n\s*\n", text)]
        for b in blocks:
            if b.isupper() or len(b.split()) < 25:
                continue
            if _is_prose(b):
                yield Passage("man", name, b)


def collect(man: bool = True) -> list[Passage]:
    """Every prose passage this machine offers (deduplicated by text)."""
    seen: set[str] = set()
    out: list[Passage] = []
    gens: list[Iterable[Passage]] = []
    for sp in _site_packages():
        gens += [_meta_passages(sp), _pkgdoc_passages(sp), _docstring_passages(sp, "docstring")]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    gens.append(_docstring_passages(stdlib, "stdlib"))
    if man and Path("/usr/share/man/man1").is_dir():
        gens.append(_man_passages())
    for g in gens:
        for p in g:
            key = p.text[:200]
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def build_cache(path: str | Path, man: bool = True) -> dict[str, int]:
    """Write every passage as JSONL to ``path``; returns counts per (family, split)."""
    ps = collect(man=man)
    counts: dict[str, int] = {}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    with tmp.open("w") as f:
        for x in ps:
            f.write(json.dumps(asdict(x)) + "\n")
            k = f"{x.family}/{x.split}"
            counts[k] = counts.get(k, 0) + 1
    tmp.replace(p)
    return counts


def load_cache(path: str | Path, split: Split | None = None) -> list[Passage]:
    out = []
    with Path(path).open() as f:
        for line in f:
            x = Passage(**json.loads(line))
            if split is None or x.split == split:
                out.append(x)
    return out


# ---------------------------------------------------------------------------- questions
_STOP = set(
    "a an the of to in on at by for with from as and or but not no it its this that these those is are was "
    "were be been being has have had do does did can could may might will would should shall must than then "
    "which who whom whose what when where why how also only such other some any each all more most very you "
    "your we our they their he she his her i if so into about over under after before".split()
)
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_NAME = re.compile(r"\b([A-Z][a-z]+(?:\s+(?:van|von|de|da|del)?\s*[A-Z][a-z]+){1,2})\b")
_NUM = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:\s+([a-z]{3,15}))?")
_YEAR = re.compile(r"\bin ((?:1[6-9]|20)\d\d)\b")
_COPULA = re.compile(
    r"^((?:The|A|An) [a-z][\w-]*(?: [\w-]+){0,4}?) (is|are|was|were) ((?:a|an|the) )?([\w-]+(?: [\w-]+){0,3})"
)
_BY = re.compile(r"^(.{3,60}?) (is|are|was|were) (\w+(?:ed|en)) by ((?:[A-Z][\w.-]*)(?: [A-Z][\w.-]*){0,3})")
_DEFAULT = re.compile(r"(?:defaults? to|default (?:value )?is|by default,? (?:is|uses)) (`?[\w.-]+`?)", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text) if s.strip()]


def _short(span: str, max_words: int = 4) -> str:
    words = re.split(r"\s+", re.split(r"[,;:()]", span)[0].strip())
    while words and words[-1].lower() in _STOP:
        words.pop()
    return " ".join(words[:max_words]).rstrip(".")


def _salient(sent: str) -> list[str]:
    spans = [m.group(1) for m in _NUM.finditer(sent)] + [m.group(1) for m in _NAME.finditer(sent) if m.start() > 0]
    return [s for s in spans if len(s) >= 2]


def wh_questions(sent: str) -> list[tuple[str, str]]:
    """Reworded questions for one sentence: (question, answer span)."""
    out = []
    s = sent.rstrip(".")
    m = _BY.match(s)
    if m:
        out.append((f"By whom {m.group(2)} {m.group(1)[0].lower() + m.group(1)[1:]} {m.group(3)}?", m.group(4)))
    m = _COPULA.match(s)
    if m:
        ans = _short(m.group(4))
        if ans and ans.lower() not in _STOP:
            subj = m.group(1)
            out.append((f"What {m.group(2)} {subj[0].lower() + subj[1:]}?", ans))
    m = _YEAR.search(s)
    if m:
        rest = (s[: m.start()] + s[m.end() :]).strip().rstrip(",")
        if len(rest.split()) >= 3:
            out.append((f"In what year: {rest[0].lower() + rest[1:]}?", m.group(1)))
    m = _DEFAULT.search(s)
    if m:
        subj = " ".join(w for w in s[: m.start()].split()[-5:])
        if subj:
            out.append((f"What is the default for {subj.rstrip(',')}, according to the text?", m.group(1).strip("`")))
    for m in _NUM.finditer(s):
        if m.group(2) and m.group(2) not in _STOP and not _YEAR.search(s[max(0, m.start() - 3) : m.end()]):
            ctx = " ".join(s[: m.start()].split()[-6:])
            if len(ctx.split()) >= 2:
                out.append((f"How many {m.group(2)}: {ctx} ...?", m.group(1)))
            break
    return out


def questions(p: Passage, rng: random.Random, n_continue: int = 1) -> list[ProseSample]:
    """Every question this passage yields (wh, cloze, continue)."""
    sents = sentences(p.text)
    out: list[ProseSample] = []
    for s in sents:
        words = s.split()
        if not 6 <= len(words) <= 45:
            continue
        for q, a in wh_questions(s):
            if a and a.lower() in p.text.lower():
                out.append(ProseSample(p.text, q, a, "prose", "wh", p.source))
        spans = _salient(s)
        if spans and rng.random() < 0.7:
            a = rng.choice(spans)
            blank = s.replace(a, "___", 1)
            out.append(
                ProseSample(p.text, f'Fill in the blank from the text: "{blank}"', a, "prose", "cloze", p.source)
            )
        else:
            k = rng.randint(1, 3)
            tail = _short(" ".join(words[-k:]), 3)
            head = " ".join(words[: len(words) - k])
            if tail and any(w.lower() not in _STOP for w in tail.split()) and tail in s:
                out.append(
                    ProseSample(
                        p.text, f'Complete this sentence from the text: "{head} ..."', tail, "prose", "cloze", p.source
                    )
                )
    conts = [(i, s) for i, s in enumerate(sents[:-1]) if len(s.split()) >= 5]
    for i, s in rng.sample(conts, min(n_continue, len(conts))):
        nxt = " ".join(sents[i + 1].split()[:14])
        out.append(
            ProseSample(
                p.text,
                f'What comes right after this sentence in the text? "{s}"',
                nxt,
                "continue",
                "continue",
                p.source,
            )
        )
    return out


class ProseGenerator:
    """Samples prose questions from one split's passages (see the module docstring).

    >>> ps = [Passage("meta", "x", "The parser is written in C. It reads 40 files per second and writes JSON.")]
    >>> ProseGenerator(ps, seed=0).sample().answer != ""
    True
    """

    def __init__(self, passages: list[Passage], seed: int = 0) -> None:
        if not passages:
            raise ValueError("no passages")
        self.passages = passages
        self.rng = random.Random(f"prose-{seed}")

    def sample(
        self, forms: tuple[str, ...] = ("wh", "cloze", "continue"), weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    ) -> ProseSample:
        form = self.rng.choices(forms, weights=weights)[0]
        for _ in range(50):
            p = self.rng.choice(self.passages)
            qs = [q for q in questions(p, self.rng) if q.form == form]
            if qs:
                return self.rng.choice(qs)
        return self.rng.choice(
            questions(p, self.rng)
            or [ProseSample(p.text, "What is this text about?", p.text.split()[0], "prose", "cloze", p.source)]
        )

    def haystack(self, needles: list[tuple[str, str, str]], n_words: int) -> tuple[str, str, str]:
        """Real prose of about ``n_words`` words with ``needles`` ((sentence, question, answer)) at random depths;
        returns (document, question, answer) for one of the needles."""
        words = 0
        pars: list[str] = []
        while words < n_words:
            p = self.rng.choice(self.passages).text
            pars.append(p)
            words += len(p.split())
        sents = [s for par in pars for s in sentences(par)]
        for sent, _q, _a in needles:
            sents.insert(self.rng.randint(0, len(sents)), sent)
        _s, q, a = self.rng.choice(needles)
        return " ".join(sents), q, a


def main(argv: list[str] | None = None) -> int:
    """``python -m memory.training.d2l_prose OUT.jsonl [--no-man]``: build the passage cache."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m memory.training.d2l_prose", description=main.__doc__)
    p.add_argument("out")
    p.add_argument("--no-man", action="store_true", help="skip manual pages")
    a = p.parse_args(argv)
    print(json.dumps(build_cache(a.out, man=not a.no_man), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
