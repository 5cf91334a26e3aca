"""What every command shares: the settings (built once, here at the edge) and error handling."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from ragtune.core.config import Settings, resolve_settings
from ragtune.core.errors import RagtuneError

R = TypeVar("R")


@dataclass
class AppContext:
    config_file: Path | None
    overrides: dict[str, Any]
    _settings: Settings | None = field(default=None, repr=False)
    _sources: dict[str, str] = field(default_factory=dict, repr=False)

    def settings(self, **more: Any) -> Settings:
        """Resolve once; command flags (``more``) take precedence over everything else."""
        if self._settings is None or more:
            merged = {**self.overrides, **{k: v for k, v in more.items() if v is not None}}
            self._settings, self._sources = resolve_settings(self.config_file, merged)
        return self._settings

    def sources(self) -> dict[str, str]:
        self.settings()
        return self._sources


_pass_app = click.make_pass_decorator(AppContext)


def pass_app(f: Callable[..., R]) -> Callable[..., R]:
    """Pass the AppContext as the command's first argument. (click's own typing wants that
    parameter positional-only; ours are named ``app``.)"""
    return _pass_app(f)


def fail(message: str, code: int = 1) -> None:
    """Print one clean error line and exit non-zero."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def run_safely(fn: Callable[[], Any]) -> None:
    """Turn every expected failure into one message and an exit code; never a traceback."""
    try:
        rc = fn()
    except RagtuneError as e:
        fail(e.message, 2 if e.status < 500 else 1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.Abort:
        fail("aborted", 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except BrokenPipeError:
        sys.exit(0)
    except MemoryError:
        fail("out of memory: try a smaller batch size, a shorter max length or fewer threads")
    except Exception as e:  # a bug: say so in one line; the traceback goes to the log (-v)
        logging.getLogger("ragtune").debug("unexpected error", exc_info=True)
        fail(f"unexpected {type(e).__name__}: {e} (rerun with -v for details)")
    else:
        if isinstance(rc, int) and rc:
            sys.exit(rc)
