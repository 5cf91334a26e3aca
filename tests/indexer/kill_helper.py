"""Run one index build that stops at a named stage, for the kill -9 tests.

``python -m tests.indexer.kill_helper DATA_DIR EMBEDDER STAGE MARKER PATH...``: when the
build reaches STAGE (``indexer.build.STAGES``), it writes MARKER and sleeps until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ragtune.core.config import resolve_settings
from ragtune.indexer.api import build_index


def main() -> None:
    data_dir, embedder, stage, marker, *paths = sys.argv[1:]
    settings, _ = resolve_settings(
        overrides={
            "data_dir": data_dir,
            "embedder": embedder,
            "torch_threads": 1,
            "chunk_size": 64,
            "chunk_overlap": 8,
        },
        environ={},
    )

    def on_stage(name: str) -> None:
        if name == stage:
            Path(marker).write_text(name)
            time.sleep(600)

    build_index(settings, [Path(p) for p in paths], "kb", progress=False, on_stage=on_stage)


if __name__ == "__main__":
    main()
