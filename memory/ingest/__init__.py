"""Document ingestion: partitioning (Unstructured, offline), title-aware chunking, sources, hashing.

>>> from memory.ingest import partition_bytes, chunk_document
>>> doc = partition_bytes(b"# Leave\\n\\nTwenty days of paid leave per year.", "leave.md")
>>> [c.metadata["section"] for c in chunk_document(doc, max_tokens=64)]
['Leave']
"""

from memory.ingest.chunking import chunk_document, chunk_elements, tokenizer_counter
from memory.ingest.partition import (
    DEFAULT_MAX_BYTES,
    SUPPORTED_FILETYPES,
    Element,
    ParsedDocument,
    filetype_for,
    partition_bytes,
    partition_path,
)
from memory.ingest.sources import SourceScan, document_key, expand_source, scan_source, source_kind
from memory.ingest.text import ChunkSpec, approx_token_count, chunk_text, content_hash, normalize_text

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SUPPORTED_FILETYPES",
    "ChunkSpec",
    "Element",
    "ParsedDocument",
    "SourceScan",
    "approx_token_count",
    "chunk_document",
    "chunk_elements",
    "chunk_text",
    "content_hash",
    "document_key",
    "expand_source",
    "filetype_for",
    "normalize_text",
    "partition_bytes",
    "partition_path",
    "scan_source",
    "source_kind",
    "tokenizer_counter",
]
