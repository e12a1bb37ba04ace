"""A tiny real embedder for tests that need retrieval but no model."""

from __future__ import annotations

import zlib

import numpy as np


class BagOfWords:
    """Hashed bag of words: cosine is word overlap.

    The hash is crc32, not Python's ``hash``, which is salted per process: a salted hash makes two words share a
    bucket in one run out of ``dim`` and not in the next (a flaky test), and gives another process (a server, a
    worker, a restarted server) other vectors for the same text.
    """

    name = "bag-of-words"
    dim = 512

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, dtype=np.float32)
        for w in text.lower().replace(".", " ").replace("?", " ").replace(",", " ").split():
            v[zlib.crc32(w.encode()) % self.dim] += 1.0
        n = np.linalg.norm(v)
        return v / n if n else v

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)
