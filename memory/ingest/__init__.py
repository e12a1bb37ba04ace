"""Document ingestion: text normalisation and hashing, chunking, (Unstructured partitioning)."""

from memory.ingest.text import ChunkSpec, chunk_text, content_hash, normalize_text

__all__ = ["ChunkSpec", "chunk_text", "content_hash", "normalize_text"]
