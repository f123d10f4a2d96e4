"""Which fast path a scoring job pays for, chosen from what this machine has measured.

``compile="auto"`` compiles the decoder blocks when the work they save exceeds what compiling costs::

    job tokens × (eager − compiled seconds per token)  >  compile seconds

All three figures depend on the machine: an AMX CPU gains more from fusing element-wise work than
one whose bf16 matmuls are three times slower (AVX-512 BF16 only), where matmuls are most of the
time; and a compile served from inductor's on-disk cache (a second run on the same machine) costs
a fraction of a cold one. So they are measured, not assumed: every fast scoring run times its
batches (:class:`BatchTimer`) and records, for this machine, model shape and dtype, the seconds per
token of the path it ran and, for a compiled run, what the compile cost (:func:`record`). The
records live in one small JSON file (:func:`calibration_file`). A figure this machine has not
measured yet is taken from a prior, measured on the 2-core AMX CPU of ``benchmarks/README.md``.

The choice is made once, before the first batch, and recorded in the scorer's plan with its
figures: a run never mixes paths. Every path gives the plain path's scores (tests/test_fastscore.py),
so the choice changes time, never results beyond bf16 rounding. ``compile="on"``/``"off"`` force it
(for benchmarks), and ``RELEVANCE_LENS_CALIBRATION=off`` makes ``auto`` use the priors alone and
record nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from relevance_lens.provenance import cpu_features, cpu_name

#: Environment variable: the calibration file's path, or ``off``.
CALIBRATION_ENV = "RELEVANCE_LENS_CALIBRATION"
#: Priors, measured on the 2-core AMX CPU of benchmarks/README.md (SmolLM2-135M, bf16, 128 tokens):
#: compiled blocks ran ~1.8x faster than eager ones (19.2 s vs 25.2 s merged: 1.3x on a slow-host day);
#: a cold compile cost ~25-35 s, a warm one ~5 s. The prior takes the cautious ends.
PRIOR_SPEEDUP = 1.3
PRIOR_COMPILE_S = 30.0
#: Without a measured eager rate the prior is a token count: ~100k tokens pay a cold compile back.
PRIOR_MIN_TOKENS = 100_000
#: Weight of a new measurement of a rate in the kept figure (the rest is the older figure): one
#: run on a loaded machine moves the figure, it does not replace it.
NEW_WEIGHT = 0.5


@dataclass
class Calibration:
    """What this machine measured for one model shape and dtype (None: not yet measured)."""

    eager_s_per_token: float | None = None
    compiled_s_per_token: float | None = None
    compile_s: float | None = None
    runs: int = 0


@dataclass
class CompileChoice:
    """Whether to compile, and the figures the choice was made from."""

    compile: bool
    reason: str
    saved_s: float | None = None
    cost_s: float | None = None


def calibration_file() -> Path | None:
    """``$RELEVANCE_LENS_CALIBRATION``, else ``$XDG_CACHE_HOME/relevance-lens/scoring-paths.json``
    (``~/.cache`` without XDG); None when the variable is ``off``."""
    value = os.environ.get(CALIBRATION_ENV)
    if value == "off":
        return None
    if value:
        return Path(value)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "relevance-lens" / "scoring-paths.json"


def calibration_key(model, device: torch.device, dtype: torch.dtype) -> str:
    """Machine (CPU or GPU, ISA and caps, threads, torch) × model shape × dtype."""
    cfg = model.base_config
    shape = [
        str(getattr(cfg, name, None))
        for name in (
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
    ]
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()} [{cpu_features()}] {torch.get_num_threads()} threads"
    return f"{where} | torch {torch.__version__} | {'/'.join(shape)} | {str(dtype).replace('torch.', '')}"


@contextmanager
def _locked(path: Path):
    """An exclusive flock beside the file: concurrent runs must not lose each other's records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # A cache, not an input: a damaged one is set aside and measured again, never fatal.
        warnings.warn(f"{path}: unreadable scoring calibration ({exc}); starting it afresh", stacklevel=3)
        return {}


def lookup(key: str, path: Path | None = None) -> Calibration:
    """This key's figures (all None where nothing was measured, or calibration is off)."""
    path = path if path is not None else calibration_file()
    if path is None:
        return Calibration()
    entry = _read(path).get(key)
    if not isinstance(entry, dict):
        return Calibration()
    known = {k: entry[k] for k in asdict(Calibration()) if k in entry}
    try:
        return Calibration(**known)
    except TypeError:
        return Calibration()


def record(key: str, *, eager_s_per_token=None, compiled_s_per_token=None, compile_s=None, path=None) -> None:
    """Fold one run's measurements into the key's figures; written atomically under a lock."""
    path = path if path is not None else calibration_file()
    if path is None:
        return
    try:
        with _locked(path):
            data = _read(path)
            old = lookup(key, path) if key in data else Calibration()
            new = Calibration(
                eager_s_per_token=_blend(old.eager_s_per_token, eager_s_per_token),
                compiled_s_per_token=_blend(old.compiled_s_per_token, compiled_s_per_token),
                # The last compile is the best guess of the next: whether inductor's cache is warm.
                compile_s=compile_s if compile_s is not None else old.compile_s,
                runs=old.runs + 1,
            )
            data[key] = asdict(new) | {"updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
    except OSError as exc:  # a read-only home must not stop scoring
        warnings.warn(f"{path}: scoring calibration not saved ({exc})", stacklevel=2)


def _blend(old: float | None, new: float | None) -> float | None:
    if new is None:
        return old
    if old is None:
        return new
    return (1 - NEW_WEIGHT) * old + NEW_WEIGHT * new


def choose_compile(calibration: Calibration, tokens: int) -> CompileChoice:
    """Compile when ``tokens`` × (eager − compiled s/token) exceeds the compile's cost (module doc)."""
    eager, compiled = calibration.eager_s_per_token, calibration.compiled_s_per_token
    if eager is None and compiled is None:
        pays = tokens >= PRIOR_MIN_TOKENS
        return CompileChoice(
            pays, f"{tokens:,} tokens {'>=' if pays else '<'} {PRIOR_MIN_TOKENS:,} (prior: no run measured here)"
        )
    prior = [name for name, value in (("eager", eager), ("compiled", compiled)) if value is None]
    if calibration.compile_s is None:
        prior.append("compile")
    cost = calibration.compile_s if calibration.compile_s is not None else PRIOR_COMPILE_S
    eager = eager if eager is not None else compiled * PRIOR_SPEEDUP
    compiled = compiled if compiled is not None else eager / PRIOR_SPEEDUP
    saved = tokens * (eager - compiled)
    pays = saved > cost
    source = f"prior for {', '.join(prior)}; the rest measured here" if prior else "all measured here"
    reason = (
        f"{tokens:,} tokens x ({1e3 * eager:.3f} - {1e3 * compiled:.3f} ms/token) = {saved:.1f} s saved "
        f"{'>' if pays else '<='} {cost:.1f} s to compile ({source})"
    )
    return CompileChoice(pays, reason, saved, cost)


class BatchTimer:
    """Seconds and tokens of each batch of one run, and the figures they give."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, float]] = []

    def add(self, tokens: int, seconds: float) -> None:
        self.batches.append((tokens, seconds))

    def steady_s_per_token(self) -> float | None:
        """Median seconds per token over the batches: compile stalls (a few batches) fall outside it."""
        rates = [s / t for t, s in self.batches if t > 0]
        return statistics.median(rates) if rates else None

    def stall_s(self) -> float:
        """Seconds above the steady rate, summed over the batches: the compile (and recompiles) a
        compiled run paid. Token-less entries (a shared prefix's forward) are not batches."""
        rate = self.steady_s_per_token()
        if rate is None:
            return 0.0
        return sum(max(0.0, s - t * rate) for t, s in self.batches if t > 0)
