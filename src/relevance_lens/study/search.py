"""The recipe search's choice: read every tried setting's dev number from the store, choose, record.

A study with ``[search]`` (:class:`~relevance_lens.study.spec.SearchSpec`) expands each grid
point into: one training run per tried setting, each with a ``checkpoints`` cell on the
``select_on`` eval set (the dev curve); one ``search`` cell, the choice; and cells that run
*after the choice*: the test cell (the ``test`` eval set, the chosen run's final adapter only)
and the study's analyses of the chosen run. Those cells carry ``after_choice`` (the search's
id) instead of a run: their run is the one the choice names, read from the store by
:func:`resolve`, so no cell can read the test set before the choice row exists.

The choice is the tried setting whose final adapter has the highest ``metric`` on the select
set (ties: the first listed). It is stored as rows of analysis ``search``: one per tried run
(variant: the search's id; its dev number; config: its setting and whether it was chosen) and
the choice row (run: the search's id, variant ``choice``; config: the chosen run and setting,
every tried setting with its dev number, the select and test sets), all in one transaction.
A recorded choice is never recomputed: a rerun reads it back.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from rich.console import Console

from relevance_lens.errors import InputError
from relevance_lens.store import Store

# Cells are typed Any here: plan.py (which defines Cell) imports this module.

CHOICE = "choice"  # the variant of the choice row


def choice(store: Store | None, search_id: str) -> dict[str, Any] | None:
    """The recorded choice of a search (its row's config), or None before it is made."""
    if store is None:
        return None
    rows = store.rows(run=search_id, analysis="search", variant=CHOICE)
    return json.loads(rows[-1]["config_json"]) if rows else None


def resolve(cell: Any, store: Store | None, required: bool = False) -> Any:
    """A cell that runs after a search's choice, on the chosen run; other cells as they are.

    None when the choice is not recorded yet (``required``: an InputError instead)."""
    search_id = cell.config.get("after_choice")
    if search_id is None:
        return cell
    found = choice(store, search_id)
    if found is None:
        if required:
            raise InputError(
                f"{cell.what} of search {search_id}: the search has no recorded choice yet; run the study's cells "
                f"in order (its choice cell comes first)"
            )
        return None
    chosen = found["chosen"]
    config = {k: v for k, v in cell.config.items() if k != "after_choice"}
    config["run"] = chosen
    needs = tuple(chosen if n == search_id else n for n in cell.needs)
    return replace(cell, run=chosen, config=config, needs=needs)


def dev_number(store: Store, run: str, ev: dict[str, Any], baseline: str | None, metric: str) -> dict | None:
    """The stored ``checkpoints`` row of a run's final adapter on eval set ``ev`` (the newest)."""
    found = None
    for row in store.rows(run=run, analysis="checkpoints", checkpoint="final", metric=metric):
        config = json.loads(row["config_json"])
        if (
            config.get("eval") == ev["name"]
            and config.get("depth") == ev["depth"]
            and config.get("max_queries") == ev["max_queries"]
            and config.get("baseline") == (baseline or "bm25")
        ):
            found = row
    return found


def record_choice(cell: Any, store: Store, console: Console | None = None) -> dict[str, Any]:
    """Choose the best tried setting by its stored dev number and record it; an existing choice
    is returned as recorded (a rerun never chooses again)."""
    existing = choice(store, cell.run)
    if existing is not None:
        return existing
    c = cell.config
    metric, ev = c["recipe"]["metric"], c["eval"]
    tried = []
    for run, setting in zip(c["tried"], c["settings"]):
        row = dev_number(store, run, ev, c["baseline"], metric)
        if row is None:
            raise InputError(
                f"search {cell.run}: run {run} has no final {metric} on {ev['name']} in {store.path}; run its "
                f"checkpoints cell first"
            )
        tried.append({"run": run, "setting": setting, "value": row["value"], "n_queries": row["n_queries"]})
    best = max(range(len(tried)), key=lambda i: (tried[i]["value"], -i))  # ties: the first listed
    who = {"model": c["model"], "rank": c["rank"], "targets": c["targets"], "analysis": "search", "metric": metric}
    rows = [
        {
            **who,
            "run": t["run"],
            "checkpoint": "final",
            "variant": cell.run,
            "value": t["value"],
            "n_queries": t["n_queries"],
            "config_json": {"search": cell.run, "eval": ev["name"], "setting": t["setting"], "chosen": i == best},
        }
        for i, t in enumerate(tried)
    ]
    record = {
        "cell": cell.id,
        "chosen": tried[best]["run"],
        "setting": tried[best]["setting"],
        "metric": metric,
        "select_on": ev,
        "test": c["test"],
        "tried": tried,
    }
    rows.append({**who, "run": cell.run, "variant": CHOICE, "value": tried[best]["value"], "config_json": record})
    store.append(rows)  # one transaction: the tried rows and the choice, or none of them
    if console is not None:
        shown = ", ".join(f"{k}={v}" for k, v in tried[best]["setting"].items())
        console.print(
            f"search {cell.run}: chose {shown} ({tried[best]['run']}): {metric} {tried[best]['value']:.4f} on "
            f"{ev['name']}, best of {len(tried)}",
            highlight=False,
        )
    return record
