"""Text normalisation, content hashing and token-bounded chunking.

The content hash of a document version is the SHA-256 of its *normalised* text, so the same
policy saved with CRLF line endings or trailing blanks is the same version.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Scripts written without spaces (CJK ideographs, kana, hangul, yi...): every character is a token or more.
_DENSE_SCRIPT = (
    "\u2e80-\u2fff\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\uac00-\ud7af\uf900-\ufaff"
)
_LONG_WORD = 16  # characters: longer runs (base64, hashes, glued identifiers) are not one token
# One match per token; the group captures the long runs, which count more (ASCII text: the fast path).
_WORD = re.compile(rf"(\w{{{_LONG_WORD + 1},}})|\w+|[^\w\s]")
_WORD_DENSE = re.compile(
    rf"[{_DENSE_SCRIPT}]|([^\W{_DENSE_SCRIPT}]{{{_LONG_WORD + 1},}})|[^\W{_DENSE_SCRIPT}]+|[^\w\s]"
)
_CHARS_PER_TOKEN_LONG = 3  # what a BPE tokenizer makes of base64 and hex, roughly


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line endings, no trailing spaces, no leading/trailing blank lines.

    >>> normalize_text("a \\r\\nb\\r\\n\\n")
    'a\\nb'
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return text.strip("\n")


def content_hash(text: str) -> str:
    """SHA-256 hex digest of the normalised text."""
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


def approx_token_count(text: str) -> int:
    """A fast tokenizer-free estimate: words and punctuation marks, each character of a script written
    without spaces (CJK...), and a run of over 16 word characters (base64, a hash) as one token per 3
    characters, so that text without spaces is never one giant "token".

    >>> approx_token_count("Refunds within 30 days."), approx_token_count("数据库文档")
    (5, 5)
    >>> approx_token_count("QUJD" * 30)  # 120 characters without a break
    40
    """
    tokens = (_WORD if text.isascii() else _WORD_DENSE).findall(text)
    return len(tokens) + sum(-(-len(w) // _CHARS_PER_TOKEN_LONG) - 1 for w in filter(None, tokens))


@dataclass(frozen=True)
class ChunkSpec:
    ordinal: int
    text: str
    start_char: int
    end_char: int
    token_count: int
    metadata: dict[str, Any] = field(default_factory=dict)


def chunk_text(
    text: str,
    max_tokens: int = 512,
    count_tokens: Callable[[str], int] | None = None,
) -> list[ChunkSpec]:
    """Split text into chunks of at most ``max_tokens`` tokens at paragraph, then sentence, then word breaks.

    ``start_char``/``end_char`` index into ``text``; ``text[c.start_char:c.end_char] == c.text``. The bound
    is checked with ``count_tokens`` on the chunk's own text, so it holds for a real tokenizer too; only
    a single character that alone counts more than ``max_tokens`` can exceed it.

    >>> [c.text for c in chunk_text("One. Two.", max_tokens=2)]
    ['One.', 'Two.']
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
    count = count_tokens or approx_token_count
    chunks: list[ChunkSpec] = []
    cur_start: int | None = None
    cur_end = 0
    for start, end in _bounded_units(text, _split_units(text), max_tokens, count):
        if cur_start is not None and count(text[cur_start:end]) > max_tokens:
            chunks.append(_make(text, len(chunks), cur_start, cur_end, count(text[cur_start:cur_end])))
            cur_start = None
        if cur_start is None:
            cur_start = start
        cur_end = end
    if cur_start is not None:
        chunks.append(_make(text, len(chunks), cur_start, cur_end, count(text[cur_start:cur_end])))
    return chunks


def _bounded_units(
    text: str, spans: list[tuple[int, int]], max_tokens: int, count: Callable[[str], int]
) -> list[tuple[int, int]]:
    """Split any unit over ``max_tokens`` at spaces, and any single word over it into character windows."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if count(text[s:e]) <= max_tokens:
            out.append((s, e))
            continue
        cur: tuple[int, int] | None = None
        for m in re.finditer(r"\S+", text[s:e]):
            ws, we = s + m.start(), s + m.end()
            if count(text[ws:we]) > max_tokens:
                if cur is not None:
                    out.append(cur)
                    cur = None
                out.extend(_char_windows(text, ws, we, max_tokens, count))
                continue
            if cur is not None and count(text[cur[0] : we]) > max_tokens:
                out.append(cur)
                cur = None
            cur = (cur[0] if cur else ws, we)
        if cur is not None:
            out.append(cur)
    return out


def _char_windows(text: str, s: int, e: int, max_tokens: int, count: Callable[[str], int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while s < e:
        step = min(e - s, 8 * max_tokens)  # no need to count the whole rest of a huge run for each window
        while step > 1 and count(text[s : s + step]) > max_tokens:
            step = max(1, step // 2)
        out.append((s, s + step))
        s += step
    return out


def _make(text: str, ordinal: int, start: int, end: int, tokens: int) -> ChunkSpec:
    return ChunkSpec(ordinal=ordinal, text=text[start:end], start_char=start, end_char=end, token_count=tokens)


_SENTENCE = re.compile(r"[^\n.!?]*(?:[.!?]+|\n+|$)")


def _split_units(text: str) -> list[tuple[int, int]]:
    """Sentence-ish spans with surrounding whitespace trimmed; very long sentences split at spaces."""
    spans: list[tuple[int, int]] = []
    for m in _SENTENCE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if s >= e:
            continue
        if e - s > 2000:  # a run-on "sentence": fall back to word windows
            spans.extend((s + w.start(), s + w.end()) for w in re.finditer(r"\S+(?:\s+\S+){0,199}", text[s:e]))
        else:
            spans.append((s, e))
    return spans
