"""Title-aware, token-bounded chunking of partitioned elements.

Rules, in order:

1. A ``Title`` starts a new chunk when the current chunk already has body text (so headings stay with
   the text under them, and consecutive headings stay together), unless the current chunk is still under
   ``combine_under_tokens``.
2. A chunk never exceeds ``max_tokens`` as counted by ``count_tokens`` on its own text. When an element
   does not fit, the chunk is closed; headings at its end move to the next chunk with their text.
3. An element that alone exceeds ``max_tokens`` (a long table, a run-on paragraph) is split with
   :func:`~memory.ingest.text.chunk_text`; each part keeps the element's page and section.

Each chunk's ``metadata`` has ``section``, ``section_path``, ``sections`` (every section it touches),
``page_start``/``page_end`` (``None`` without pages), ``categories`` and ``element_count``; chunk offsets
index into the document text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from memory.ingest.partition import Element, ParsedDocument
from memory.ingest.text import ChunkSpec, approx_token_count, chunk_text

_SEP = "\n\n"


def chunk_elements(
    elements: Sequence[Element],
    max_tokens: int = 512,
    count_tokens: Callable[[str], int] | None = None,
    *,
    text: str | None = None,
    combine_under_tokens: int = 0,
) -> list[ChunkSpec]:
    """Group elements into chunks of at most ``max_tokens`` tokens, starting a chunk at each section.

    ``text`` is the document text the element offsets index into; without it the text is rebuilt by
    joining the elements with a blank line, which is exactly :attr:`ParsedDocument.text`.

    >>> from memory.ingest.partition import partition_bytes
    >>> doc = partition_bytes(b"# A\\n\\nFirst part of the text.\\n\\n# B\\n\\nSecond part.", "x.md")
    >>> [c.text for c in chunk_elements(doc.elements, 100)]
    ['A\\n\\nFirst part of the text.', 'B\\n\\nSecond part.']
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
    count = count_tokens or approx_token_count
    elements = list(elements)
    if not elements:
        return []
    source, spans = _layout(elements, text)
    chunks: list[ChunkSpec] = []

    def tokens(i0: int, i1: int) -> int:
        return count(source[spans[i0][0] : spans[i1][1]])

    def flush(idx: list[int]) -> None:
        if idx:
            start, end = spans[idx[0]][0], spans[idx[-1]][1]
            chunks.append(
                ChunkSpec(
                    ordinal=len(chunks),
                    text=source[start:end],
                    start_char=start,
                    end_char=end,
                    token_count=count(source[start:end]),
                    metadata=_metadata([elements[i] for i in idx]),
                )
            )

    cur: list[int] = []
    for i, el in enumerate(elements):
        is_title = el.category == "Title"
        if is_title and cur and _has_body(elements, cur) and tokens(cur[0], cur[-1]) >= combine_under_tokens:
            flush(cur)
            cur = []
        if count(el.text) > max_tokens:
            carry = _trailing_titles(elements, cur, allow_all=True)
            flush(cur[: len(cur) - len(carry)])
            base = spans[i][0]
            parts = chunk_text(el.text, max_tokens, count)
            for k, part in enumerate(parts):
                start, end = base + part.start_char, base + part.end_char
                group = [el]
                if k == 0 and carry:  # the heading goes with the first part when it fits, else alone
                    if count(source[spans[carry[0]][0] : end]) <= max_tokens:
                        start, group = spans[carry[0]][0], [elements[j] for j in carry] + [el]
                    else:
                        flush(carry)
                meta = _metadata(group)
                meta.update(part=k + 1, parts=len(parts))
                chunks.append(
                    ChunkSpec(
                        ordinal=len(chunks),
                        text=source[start:end],
                        start_char=start,
                        end_char=end,
                        token_count=count(source[start:end]),
                        metadata=meta,
                    )
                )
            cur = []
            continue
        if cur and tokens(cur[0], i) > max_tokens:
            carry = _trailing_titles(elements, cur)
            flush(cur[: len(cur) - len(carry)])
            cur = carry
            if cur and tokens(cur[0], i) > max_tokens:
                flush(cur)
                cur = []
        cur.append(i)
    flush(cur)
    return chunks


def chunk_document(
    doc: ParsedDocument,
    max_tokens: int = 512,
    count_tokens: Callable[[str], int] | None = None,
    **kwargs: Any,
) -> list[ChunkSpec]:
    """:func:`chunk_elements` over a parsed document; offsets index into ``doc.text``.

    >>> from memory.ingest.partition import partition_bytes
    >>> doc = partition_bytes(b"Hello there, this is a short note.", "n.txt")
    >>> chunk_document(doc, 64)[0].text == doc.text
    True
    """
    return chunk_elements(doc.elements, max_tokens, count_tokens, text=doc.text, **kwargs)


def tokenizer_counter(tokenizer: Any) -> Callable[[str], int]:
    """A ``count_tokens`` function from a Hugging Face tokenizer (no special tokens counted).

    >>> class Toy:
    ...     def encode(self, text, add_special_tokens=False):
    ...         return text.split()
    >>> tokenizer_counter(Toy())("a b c")
    3
    """

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    return count


# ----------------------------------------------------------------------------------- helpers
def _layout(elements: list[Element], text: str | None) -> tuple[str, list[tuple[int, int]]]:
    spans = [(e.start_char, e.end_char) for e in elements]
    if text is not None:
        for e, (s, end) in zip(elements, spans, strict=True):
            if text[s:end] != e.text:
                raise ValueError(
                    f"element offsets {s}:{end} do not match the text ({e.text[:40]!r}); pass the "
                    "ParsedDocument.text these elements came from"
                )
        return text, spans
    joined = _SEP.join(e.text for e in elements)
    pos, fresh = 0, []
    for e in elements:
        fresh.append((pos, pos + len(e.text)))
        pos += len(e.text) + len(_SEP)
    return joined, fresh


def _has_body(elements: list[Element], idx: list[int]) -> bool:
    return any(elements[i].category != "Title" for i in idx)


def _trailing_titles(elements: list[Element], idx: list[int], *, allow_all: bool = False) -> list[int]:
    """The headings at the end of a chunk (all of it only with ``allow_all``)."""
    k = len(idx)
    while k > 0 and elements[idx[k - 1]].category == "Title":
        k -= 1
    return idx[k:] if (k > 0 or allow_all) else []


def _metadata(els: list[Element]) -> dict[str, Any]:
    pages = [p for e in els if (p := e.metadata.get("page_number")) is not None]
    sections: list[str] = []
    categories: list[str] = []
    for e in els:
        s = e.metadata.get("section")
        if s is not None and s not in sections:
            sections.append(s)
        if e.category not in categories:
            categories.append(e.category)
    first = els[0].metadata
    meta: dict[str, Any] = {
        "section": first.get("section"),
        "section_path": list(first.get("section_path") or []),
        "sections": sections,
        "page_start": min(pages) if pages else None,
        "page_end": max(pages) if pages else None,
        "categories": categories,
        "element_count": len(els),
    }
    attachments = sorted({e.metadata["attachment"] for e in els if e.metadata.get("attachment")})
    if attachments:
        meta["attachments"] = attachments
    return meta
