"""The services behind :class:`memory.api.ParametricMemory`, one job each (see README, "Layout").

- :mod:`~memory.services.records`: the database and blob store they share (transactions, retries, lookups).
- :mod:`~memory.services.documents`: documents and versions (add, read, history, diff, rollback, delete, gc).
- :mod:`~memory.services.sources`: files, directories and globs parsed into documents; source rows.
- :mod:`~memory.services.adapters`: adapter rows and weights (list, current per document, compose, load, store).
- :mod:`~memory.services.models`: the base model and hypernetworks, loaded once.
- :mod:`~memory.services.internalization`: a document version in, an adapter out.
- :mod:`~memory.services.skills`: Text-to-LoRA skill adapters.
- :mod:`~memory.services.query`: search, routing, generation, the answer checks, the query log.
"""
