"""The indexer: files -> documents -> chunks -> embeddings -> a versioned FAISS index.

Public entry point: :func:`indexer.api.build_index`. Modules, in data-flow order:
``loaders`` (files to Documents), ``chunking`` (Documents to token-sized Chunks),
``build`` (incremental plan, embedding, FAISS, atomic version swap), ``api`` (the summary
type and the functions the CLI and other callers use).
"""
