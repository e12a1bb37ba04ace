"""Sanity checks for the realprose QA set (no model): run ``python bench/data/realprose/check.py``."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = {
    "dev_paragraphs.jsonl": ("dev", "paragraph"),
    "test_paragraphs.jsonl": ("test", "paragraph"),
    "dev_documents.jsonl": ("dev", "document"),
    "test_documents.jsonl": ("test", "document"),
}
PARAGRAPH_WORDS = (60, 250)
DEV_DOC_WORDS = (600, 5200)
TEST_DOC_WORDS = (750, 5200)


def main() -> int:
    problems: list[str] = []
    ids: Counter[str] = Counter()
    sources: dict[str, set[str]] = {"dev": set(), "test": set()}
    variants_not_in_text: list[str] = []
    for name, (split, kind) in FILES.items():
        rows = []
        for n, line in enumerate((HERE / name).read_text(encoding="utf-8").splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                problems.append(f"{name}:{n}: invalid JSON ({e.msg})")
        docs: Counter[str] = Counter()
        for r in rows:
            rid, meta = r["id"], r["meta"]
            ids[rid] += 1
            text = r["documents"][0]
            low = text.lower()
            if len(r["documents"]) != 1 or not r["question"].strip() or not r["answers"]:
                problems.append(f"{rid}: needs one document, a question and answers")
            if meta.get("split") != split or meta.get("kind") != kind:
                problems.append(f"{rid}: meta split/kind {meta.get('split')}/{meta.get('kind')} != {split}/{kind}")
            sources[split].add(meta["source"])
            docs[text] += 1
            if r["answers"][0].lower() not in low:
                problems.append(f"{rid}: first answer {r['answers'][0]!r} not in its text")
            variants_not_in_text += [f"{rid}: {a!r}" for a in r["answers"][1:] if a.lower() not in low]
            if any(len(a.split()) > 4 for a in r["answers"]):
                problems.append(f"{rid}: an answer is longer than 4 words")
            if r["answers"][0].lower() in r["question"].lower():
                problems.append(f"{rid}: the question gives away the answer")
            words = len(text.split())
            if kind == "paragraph" and not PARAGRAPH_WORDS[0] <= words <= PARAGRAPH_WORDS[1]:
                problems.append(f"{rid}: paragraph has {words} words")
            if kind == "document":
                lo, hi = DEV_DOC_WORDS if split == "dev" else TEST_DOC_WORDS
                if not lo <= words <= hi:
                    problems.append(f"{rid}: document has {words} words")
                off, first = meta.get("answer_offset"), r["answers"][0]
                if not isinstance(off, int) or text[off : off + len(first)].lower() != first.lower():
                    problems.append(f"{rid}: answer_offset does not point at the first answer")
        per_doc = sorted(docs.values())
        n_sources = len({r["meta"]["source"] for r in rows})
        print(f"{name}: {len(rows)} items, {len(docs)} distinct texts, {n_sources} sources")
        if kind == "document":
            for r in rows:
                if r["id"].endswith("-q01"):
                    text, tokens = r["documents"][0], r["meta"]["doc_tokens_approx"]
                    print(f"  {r['id'][:-4]}: {len(text.split())} words, ~{tokens} tokens, {docs[text]} questions")
            offsets: dict[str, list[str]] = {}
            for r in rows:
                doc_id = r["id"].split("-")[0]
                offsets.setdefault(doc_id, []).append(f"{r['meta']['answer_offset'] / len(r['documents'][0]):.2f}")
            for doc_id, fr in offsets.items():
                print(f"  {doc_id} answer positions (fraction of text): {' '.join(fr)}")
        elif per_doc and per_doc[-1] > 1:
            problems.append(f"{name}: a paragraph is used more than once")
    dupes = [i for i, c in ids.items() if c > 1]
    if dupes:
        problems.append(f"duplicate ids: {dupes}")
    shared = sources["dev"] & sources["test"]
    if shared:
        problems.append(f"dev and test share sources: {sorted(shared)}")
    if any("man" not in s for s in sources["dev"]):
        problems.append("a dev source is not a manual page")
    if any("manual page" in s for s in sources["test"]):
        problems.append("a test source is a manual page")
    n_dev, n_test = len(sources["dev"]), len(sources["test"])
    print(f"ids: {len(ids)} unique; dev sources: {n_dev}, test sources: {n_test}, shared: {len(shared)}")
    print(f"accepted variants not literally in the text (allowed, listed for review): {len(variants_not_in_text)}")
    for v in variants_not_in_text:
        print("  ", v)
    for p in problems:
        print("PROBLEM", p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
