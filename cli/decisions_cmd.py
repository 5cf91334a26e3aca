"""`ragtune decisions publish|list|show|rm`: serve the measured winner of a run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from ragtune.cli.context import AppContext, pass_app

if TYPE_CHECKING:
    from ragtune.core.config import Settings
    from ragtune.core.decisions import Decision, DecisionStatus


@click.group("decisions")
def decisions() -> None:
    """Publish a run's winner as the decision for its index; list, show and remove them.

    \b
    A request to that index that names no mode and no adapter is then answered with the
    winning mode, adapter and retrieval settings, and says which decision chose them.
      ragtune decisions publish demo            # <data>/runs/demo (or a run folder's path)
      ragtune decisions list
      ragtune decisions show demo-squad
      ragtune decisions rm demo-squad
    """


def publish_run(settings: Settings, run: str, index: str | None = None) -> Decision:
    """Publish ``run`` (a run id or a folder); print what it decides and what it replaced."""
    from ragtune.core.decisions import decision_from_run, publish_decision, run_folder

    d = decision_from_run(settings, run_folder(settings, run), index)
    old = publish_decision(settings, d)
    v = d.verdict
    click.echo(
        f"decision for index {d.index}: {v.winner} (run {d.run}; test F1 {v.f1.mean:.3f} "
        f"[{v.f1.lo:.3f}, {v.f1.hi:.3f}] on {v.n} questions)"
    )
    if d.selection:
        click.echo(f"  picked on validation: {d.selection.variant}")
    if old is not None and old.run != d.run:
        click.echo(f"  replaces the decision of run {old.run} ({old.verdict.winner})")
    return d


@decisions.command("publish")
@click.argument("run")
@click.option("--index", default=None, help="The index it decides for (default: the run's).")
@pass_app
def publish_cmd(app: AppContext, run: str, index: str | None) -> None:
    """Publish the winner of RUN (a run id in <data>/runs, or a run folder's path).

    Refused when the adapter it chose no longer exists or was retrained since, or when the
    index version it was measured on no longer exists: re-evaluate, then publish."""
    publish_run(app.settings(), run, index)


def _row(d: Decision, st: DecisionStatus) -> dict[str, object]:
    return {
        "index": d.index,
        "run": d.run,
        "winner": d.verdict.winner,
        "f1": d.verdict.f1.model_dump(),
        "n": d.verdict.n,
        "mode": d.mode,
        "adapter": d.adapter,
        "status": st.status,
        "problems": st.problems,
        "notes": st.notes,
        "changes": st.changes,
        "published_at": d.published_at,
    }


@decisions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> None:
    """One line per decision: index, winner, test F1, run, and whether it still holds."""
    from ragtune.core.decisions import decision_status, list_decisions

    settings = app.settings()
    found, problems = list_decisions(settings)
    for e in problems:
        click.echo(f"warning: {e.message}", err=True)
    rows = [_row(d, decision_status(settings, d)) for d in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows and not problems:
        click.echo("no decisions (publish one with: ragtune decisions publish RUN)")
        return
    for r in rows:
        f1 = r["f1"]
        assert isinstance(f1, dict)
        click.echo(
            f"{r['index']:<20} {r['winner']:<28} F1 {f1['mean']:.3f}  run {r['run']}  "
            f"[{r['status']}]"
        )
        for line in [*r["problems"], *r["notes"]]:  # type: ignore[misc]
            click.echo(f"  {line}")


@decisions.command("show")
@click.argument("index")
@pass_app
def show_cmd(app: AppContext, index: str) -> None:
    """Print the decision for INDEX and its status (JSON)."""
    from ragtune.core.decisions import DecisionNotFound, decision_status, read_decision

    settings = app.settings()
    d = read_decision(settings, index)
    if d is None:
        raise DecisionNotFound(f"no decision for index {index!r}", field="index")
    out = d.to_json()
    out.pop("snapshot", None)  # document-by-document chunk ranges: not for reading
    out["status"] = decision_status(settings, d).model_dump()
    click.echo(json.dumps(out, indent=2, sort_keys=True))


@decisions.command("rm")
@click.argument("index")
@pass_app
def rm_cmd(app: AppContext, index: str) -> None:
    """Remove the decision for INDEX (its requests go back to the defaults)."""
    from ragtune.core.decisions import remove_decision

    old = remove_decision(app.settings(), index)
    click.echo(f"removed the decision for index {index}" + (f" (run {old.run})" if old else ""))


def register(cli: click.Group) -> None:
    cli.add_command(decisions)
