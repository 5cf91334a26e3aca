"""``ragtune serve`` as it ran before ``service/own_thread.py``: request threads (anyio's
workers) run torch themselves, and each keeps the OpenMP pool it opened. The baseline of
``bench_ttft.py --only-own-threads``; not for anything else.

Run: ``python bench/serve_inline_torch.py --data-dir DIR serve ...`` (the CLI's arguments).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragtune.service import own_thread


def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)  # on the calling (reused) worker thread, as before


own_thread.in_own_thread = _inline

from ragtune.cli.main import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
