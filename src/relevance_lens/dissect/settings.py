"""The settings of every analysis, light enough for the CLI to build its options from them.

One dataclass per registered analysis (:mod:`relevance_lens.dissect.registry`); field metadata:
``help`` (shown by the CLI and named in study errors) and optionally ``flag`` (the CLI's option
declaration when it differs from ``--field-name``). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from relevance_lens.errors import InputError
from relevance_lens.evaluate.stats import PERMUTATIONS, SEED

#: The named ablation sweeps (their builders: :data:`relevance_lens.dissect.ablate.SWEEPS`).
SWEEP_NAMES = (
    "drop-layer",
    "keep-layer",
    "window",
    "bottom-up",
    "top-down",
    "roles",
    "drop-role",
    "keep-role",
    "drop-layer-role",
    "keep-layer-role",
)
ProbeKind = Literal["none", "ridge", "logistic"]
#: Metrics an analysis reports when none are named.
DEFAULT_METRICS = ("nDCG@10", "RR@10")


@dataclass
class SweepConfig:
    """How a sweep is run and tested."""

    cached: bool = field(
        default=True,
        metadata={
            "help": "Restart variants from cached block inputs (exact; saves work); --naive runs every variant "
            "in full.",
            "flag": "--cached/--naive",
        },
    )
    merge: str = field(
        default="auto",
        metadata={
            "help": "Run variants on merged weights, W or W+ΔW per module (relevance_lens.dissect.switch), not "
            "through LoRA layers: auto (when a second copy of the adapted weights fits), on, off."
        },
    )
    verify: bool = field(
        default=True,
        metadata={"help": "Check once that a restarted forward equals a full one; fall back to naive if not."},
    )
    permutations: int = field(default=PERMUTATIONS, metadata={"help": "Sign flips in the paired randomization test."})
    seed: int = field(default=SEED, metadata={"help": "Seed of the randomization test."})


@dataclass
class LensConfig:
    """Lens and probe settings."""

    probe: ProbeKind = field(default="none", metadata={"help": "Per-layer linear probe: none, ridge or logistic."})
    l2: float = field(default=1.0, metadata={"help": "L2 penalty of the probe (on standardized features)."})
    steps: int = field(default=100, metadata={"help": "LBFGS iterations of the logistic probe."})

    def __post_init__(self) -> None:
        if self.probe not in ("none", "ridge", "logistic"):
            raise InputError(f"--probe {self.probe!r}: expected none, ridge or logistic")
        if self.l2 < 0 or self.steps < 1:
            raise InputError(f"probe l2 {self.l2} / steps {self.steps}: expected l2 >= 0 and steps >= 1")


@dataclass
class CheckpointsSettings:
    """``checkpoints``: every checkpoint of a run beside BM25 and the head-only run."""

    versus: str = field(
        default="baseline",
        metadata={
            "help": "What the p-values test against: baseline (the head-only run's final, BM25 without one) or bm25 "
            "(does the reranker beat the first stage?)."
        },
    )

    def __post_init__(self) -> None:
        if self.versus not in ("baseline", "bm25"):
            raise InputError(f"versus {self.versus!r}: expected baseline or bm25")


@dataclass
class AblateSettings(SweepConfig):
    """``ablate``: switch parts of ΔW off and measure what ranking loses (plus :class:`SweepConfig`)."""

    sweeps: list[str] = field(
        default_factory=lambda: ["drop-layer"],
        metadata={"help": f"Named sweeps: {', '.join(SWEEP_NAMES)} (repeat the option).", "flag": "--sweep"},
    )
    window: int = field(default=3, metadata={"help": "Width of the window sweep."})
    window_stride: int = field(default=1, metadata={"help": "Step between window starts (1: every layer)."})

    def __post_init__(self) -> None:
        bad = [s for s in self.sweeps if s not in SWEEP_NAMES]
        if bad:
            raise InputError(f"unknown sweep(s) {', '.join(bad)}; expected one of {', '.join(SWEEP_NAMES)}")
        if self.merge not in ("auto", "on", "off"):
            raise InputError(f"merge {self.merge!r}: expected auto, on or off")
        if self.window < 1 or self.window_stride < 1 or self.permutations < 1:
            raise InputError(
                f"window {self.window} / window_stride {self.window_stride} / permutations "
                f"{self.permutations}: expected positive integers"
            )

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(
            cached=self.cached, merge=self.merge, verify=self.verify, permutations=self.permutations, seed=self.seed
        )


@dataclass
class WeightsSettings:
    """``weights``: ΔW norms, spectra and effective ranks per layer x role; subspace similarity."""

    side: Literal["left", "right"] = field(
        default="left", metadata={"help": "left: output-space directions of ΔW; right: input-space."}
    )

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise InputError(f"side {self.side!r}: expected left or right")


@dataclass
class LensSettings(LensConfig):
    """``lens``: the score head read on every layer (plus :class:`LensConfig`'s probe settings)."""

    probe_split: str = field(default="train", metadata={"help": "FAQ split the probe is fitted on."})
    adapter_off: bool = field(
        default=False, metadata={"help": "Also read the trained head on the frozen base (all LoRA parts off)."}
    )

    def lens_config(self) -> LensConfig:
        return LensConfig(probe=self.probe, l2=self.l2, steps=self.steps)


#: The named head sweeps (their builders: :data:`relevance_lens.dissect.heads.HEAD_SWEEPS`).
HEAD_SWEEP_NAMES = ("drop-head", "keep-head")


@dataclass
class HeadsSettings(SweepConfig):
    """``heads``: switch off one attention head's share of ΔW at a time (plus :class:`SweepConfig`)."""

    sweeps: list[str] = field(
        default_factory=lambda: ["drop-head"],
        metadata={
            "help": "drop-head: each head's q/k/v rows and o columns of ΔW removed (vs full); keep-head: kept "
            "alone (vs base). Repeat the option.",
            "flag": "--sweep",
        },
    )
    layers: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Only the heads of these layers (repeat the option; default: every layer).",
            "flag": "--layer",
        },
    )

    def __post_init__(self) -> None:
        bad = [s for s in self.sweeps if s not in HEAD_SWEEP_NAMES]
        if bad or not self.sweeps:
            raise InputError(
                f"head sweep(s) {', '.join(bad) or '(none)'}: expected some of {', '.join(HEAD_SWEEP_NAMES)}"
            )
        if self.merge not in ("auto", "on", "off"):
            raise InputError(f"merge {self.merge!r}: expected auto, on or off")
        if any(layer < 0 for layer in self.layers) or self.permutations < 1:
            raise InputError(
                f"layers {self.layers} / permutations {self.permutations}: expected layers >= 0 and permutations >= 1"
            )

    def sweep_config(self) -> SweepConfig:
        return SweepConfig(
            cached=self.cached, merge=self.merge, verify=self.verify, permutations=self.permutations, seed=self.seed
        )


@dataclass
class AttributeSettings:
    """``attribute``: integrated-gradients token attributions of chosen pairs, fine-tuned vs base + head."""

    baseline: Literal["pad", "zero"] = field(
        default="pad",
        metadata={"help": "Integrated-gradients baseline: pad (every position the pad token's embedding) or zero."},
    )
    steps: int = field(
        default=32,
        metadata={
            "help": "Gauss-Legendre nodes the path integral starts with (8 per sub-interval); sub-intervals that "
            "fail their own completeness check are then halved, up to --max-steps."
        },
    )
    max_steps: int = field(
        default=1024,
        metadata={
            "help": "Most gradient evaluations per pair and model: the adaptive path integral stops here even if "
            "the gap is above --tolerance (steps: no refinement)."
        },
    )
    pairs: int = field(
        default=2,
        metadata={
            "help": "Attribute the first N scored queries, each with its first relevant and first non-relevant "
            "passage in the first stage's top-depth."
        },
    )
    query_ids: list[str] = field(
        default_factory=list, metadata={"help": "These queries instead (repeat the option).", "flag": "--query-id"}
    )
    tolerance: float = field(
        default=0.05,
        metadata={"help": "Completeness: largest relative gap between the attributions' sum and the score difference."},
    )

    def __post_init__(self) -> None:
        if self.baseline not in ("pad", "zero"):
            raise InputError(f"baseline {self.baseline!r}: expected pad or zero")
        if self.steps < 1 or self.pairs < 1 or not self.tolerance > 0:
            raise InputError(
                f"steps {self.steps} / pairs {self.pairs} / tolerance {self.tolerance}: expected positive numbers"
            )
        if self.max_steps < self.steps:
            raise InputError(
                f"max_steps {self.max_steps} < steps {self.steps}: expected a budget of at least the starting "
                f"nodes, e.g. max_steps = {max(1024, self.steps)}"
            )


#: What activation patching replaces (:mod:`relevance_lens.dissect.patch`): the residual stream (a
#: block's output), the attention sublayer's output, the MLP sublayer's output.
PATCH_COMPONENTS = ("resid", "attn", "mlp")
#: Token position classes: template prefix + query, passage (+ template suffix), the scored last
#: token, and all of them.
PATCH_POSITIONS = ("query", "passage", "last", "all")
#: ΔW-ablated models patching can run on besides the adapter and the base + head.
PATCH_ABLATIONS = ("drop-mha", "drop-mlp")


@dataclass
class PatchSettings:
    """``patch``: activation patching from a relevant passage's run into a non-relevant one's."""

    pairs: int = field(
        default=4,
        metadata={
            "help": "One pair from each of the first N scored queries with a relevant and a non-relevant passage "
            "in the first stage's top-depth: the first-stage top of each."
        },
    )
    components: list[str] = field(
        default_factory=lambda: ["resid"],
        metadata={
            "help": f"What is patched: {', '.join(PATCH_COMPONENTS)} (block output, attention output, MLP output; "
            "repeat the option).",
            "flag": "--component",
        },
    )
    positions: list[str] = field(
        default_factory=lambda: list(PATCH_POSITIONS),
        metadata={
            "help": f"Token positions patched: {', '.join(PATCH_POSITIONS)} (repeat the option).",
            "flag": "--position",
        },
    )
    ablated: list[str] = field(
        default_factory=list,
        metadata={
            "help": f"Also patch these ΔW-ablated models: {', '.join(PATCH_ABLATIONS)} (repeat the option).",
            "flag": "--ablated",
        },
    )
    min_gap: float = field(
        default=1e-3,
        metadata={"help": "Skip (and count) pairs whose two scores differ by less than this under a model."},
    )

    def __post_init__(self) -> None:
        for name, given, allowed in (
            ("component", self.components, PATCH_COMPONENTS),
            ("position", self.positions, PATCH_POSITIONS),
            ("ablated", self.ablated, PATCH_ABLATIONS),
        ):
            bad = [g for g in given if g not in allowed]
            if bad or (name != "ablated" and not given):
                raise InputError(
                    f"patch {name} {', '.join(map(repr, bad)) or '(none)'}: expected some of {', '.join(allowed)}"
                )
        if self.pairs < 1 or not self.min_gap >= 0:
            raise InputError(f"patch pairs {self.pairs} / min_gap {self.min_gap}: expected pairs >= 1 and min_gap >= 0")
