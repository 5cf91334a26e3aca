"""ragtune: RAG, fine-tune, or both? Measure it on your documents, then serve the winner.

One import name for the whole project. In the repository the subpackages live at the root
(``core/``, ``indexer/``, ``tuner/``, ``service/``, ``eval/``, ``workflows/``, ``cli/``) and
this folder links them in; an installed wheel holds them as ordinary subpackages.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ragtune")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
