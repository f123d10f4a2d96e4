"""The one registry of analyses: name -> typed settings -> function.

``relevance-lens analyze NAME`` builds its options from an analysis's settings dataclass and a
study's ``[analyses.NAME]`` table is parsed into the same dataclass, so a setting exists in
both or in neither (``tests/test_registry.py`` holds them to it). What an analysis runs *on*
is not a setting: the CLI names folders and eval files; a study wires its own runs and
``[evals]`` in (its extra keys ``evals`` and ``vs_rank`` do that).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

from rich.console import Console

from relevance_lens.dissect.settings import (
    DEFAULT_METRICS,
    AblateSettings,
    AttributeSettings,
    CheckpointsSettings,
    HeadsSettings,
    LensSettings,
    PatchSettings,
    WeightsSettings,
)
from relevance_lens.errors import InputError

if TYPE_CHECKING:
    from relevance_lens.dissect.evalset import EvalSet
    from relevance_lens.score.config import ScoreConfig
    from relevance_lens.store import Store

# ---------------------------------------------------------------- what an analysis runs on


@dataclass
class Inputs:
    """What one analysis runs on (not settings: the CLI names these, a study wires its runs in)."""

    target: Path | None = None  # checkpoints: a run folder; ablate, lens: an adapter folder; weights: either
    evalset: EvalSet | None = None
    metrics: Sequence[str] = DEFAULT_METRICS
    baseline: Path | None = None  # checkpoints: the head-only run folder
    other: Path | None = None  # weights: a second adapter to compare subspaces with
    model: str | None = None  # lens: a bare base model when there is no adapter
    final_only: bool = False  # checkpoints: the final adapter only (a recipe search's test cell)


@dataclass
class Context:
    """Where rows go and how scoring runs; shared by every analysis."""

    store: Store | None = None
    score: ScoreConfig | None = None
    force: bool = False
    console: Console | None = None


Runner = Callable[[Inputs, Any, Context], list[dict[str, Any]]]


@dataclass(frozen=True)
class Analysis:
    """One registered analysis."""

    name: str
    settings: type
    run: Runner
    target: Literal["run", "final"]  # what a study passes as Inputs.target: the run folder or its final adapter
    uses_eval: bool  # scores an eval set (the study runs it once per [evals] set)
    help: str
    # A study may run it on other checkpoints than final/ (its `checkpoints` key), one cell each,
    # and the report shows those checkpoints side by side.
    per_checkpoint: bool = False


# The runners import the analyses when called: the CLI builds its options from this module and
# must start without importing torch.


def _checkpoints(inputs: Inputs, settings: CheckpointsSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.analyses import analyze_checkpoints

    return analyze_checkpoints(
        inputs.target,
        inputs.evalset,
        inputs.metrics,
        baseline_run_dir=inputs.baseline,
        versus=settings.versus,
        final_only=inputs.final_only,
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )


def _ablate(inputs: Inputs, settings: AblateSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.analyses import analyze_ablate

    return analyze_ablate(
        inputs.target,
        inputs.evalset,
        settings.sweeps,
        inputs.metrics,
        window=settings.window,
        window_stride=settings.window_stride,
        sweep_config=settings.sweep_config(),
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )


def _weights(inputs: Inputs, settings: WeightsSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.analyses import analyze_weights

    return analyze_weights(
        inputs.target, other=inputs.other, side=settings.side, store=ctx.store, force=ctx.force, console=ctx.console
    )


def _lens(inputs: Inputs, settings: LensSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.analyses import analyze_lens
    from relevance_lens.dissect.evalset import faq_evalset

    lens = settings.lens_config()
    depth = inputs.evalset.depth
    probe_set = faq_evalset(settings.probe_split, depth) if lens.probe != "none" else None
    common = dict(
        model=inputs.model,
        lens_config=lens,
        probe_set=probe_set,
        store=ctx.store,
        score=ctx.score,
        force=ctx.force,
        console=ctx.console,
    )
    rows = analyze_lens(inputs.target, inputs.evalset, inputs.metrics, **common)
    has_lora = inputs.target is not None and (Path(inputs.target) / "adapter_config.json").is_file()
    if settings.adapter_off and has_lora:  # the head-only runs have no LoRA to switch off
        rows += analyze_lens(inputs.target, inputs.evalset, inputs.metrics, adapter_off=True, **common)
    return rows


def _heads(inputs: Inputs, settings: HeadsSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.heads import heads_runner

    return heads_runner(inputs, settings, ctx)


def _attribute(inputs: Inputs, settings: AttributeSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.attribute import attribute_runner

    return attribute_runner(inputs, settings, ctx)


def _patch(inputs: Inputs, settings: PatchSettings, ctx: Context) -> list[dict[str, Any]]:
    from relevance_lens.dissect.patch import patch_runner

    return patch_runner(inputs, settings, ctx)


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis(
            "checkpoints",
            CheckpointsSettings,
            _checkpoints,
            "run",
            True,
            "Metrics of every checkpoint of a run, beside BM25 and a head-only baseline.",
        ),
        Analysis(
            "ablate",
            AblateSettings,
            _ablate,
            "final",
            True,
            "Switch parts of ΔW off (by layer, role, window...) and measure what ranking loses.",
        ),
        Analysis(
            "weights",
            WeightsSettings,
            _weights,
            "run",
            False,
            "ΔW norms, spectra and effective ranks per layer x role; subspace similarity.",
        ),
        Analysis(
            "lens",
            LensSettings,
            _lens,
            "final",
            True,
            "Rank with the score head on every layer's last-token state (and optional probes).",
        ),
        Analysis(
            "heads",
            HeadsSettings,
            _heads,
            "final",
            True,
            "Switch off one attention head's share of ΔW at a time (q/k/v rows, o columns; GQA kv heads).",
            per_checkpoint=True,
        ),
        Analysis(
            "attribute",
            AttributeSettings,
            _attribute,
            "final",
            True,
            "Token attributions (integrated gradients on input embeddings), fine-tuned vs base + head.",
            per_checkpoint=True,
        ),
        Analysis(
            "patch",
            PatchSettings,
            _patch,
            "final",
            True,
            "Activation patching, relevant into non-relevant passage: the score difference moved per layer x "
            "token positions (residual stream, attention, MLP), fine-tuned vs base + head.",
            per_checkpoint=True,
        ),
    )
}


def analysis(name: str) -> Analysis:
    """The registered analysis called ``name``."""
    if name not in ANALYSES:
        raise InputError(f"analysis {name!r}: unknown; expected one of {', '.join(ANALYSES)}")
    return ANALYSES[name]


def run_analysis(
    name: str, inputs: Inputs, settings: Any = None, context: Context | None = None
) -> list[dict[str, Any]]:
    """Run one analysis by name; returns its tidy rows (also appended to ``context.store``)."""
    entry = analysis(name)
    settings = settings if settings is not None else entry.settings()
    if not isinstance(settings, entry.settings):
        raise InputError(
            f"analysis {name}: settings of type {type(settings).__name__}; expected {entry.settings.__name__}"
        )
    if entry.uses_eval and inputs.evalset is None:
        raise InputError(f"analysis {name}: needs an eval set (a FAQ split or the four files)")
    return entry.run(inputs, settings, context or Context())
