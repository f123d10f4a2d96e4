"""Study: a grid of trainings and analyses from one TOML file. ``spec`` parses and checks the
file, ``plan`` expands it into cells (cost, shards, status), ``run`` runs them resumably, and
``search`` records a recipe search's choice (test is read once, after it).

May import every stage below it, up to ``dissect``; never ``report``.
"""

from relevance_lens.study.plan import (
    IRDS_QUERIES,
    RUNS,
    Cell,
    GpuRate,
    assign_shards,
    expand,
    marker,
    measured_seconds,
    parse_shard,
    select,
    shard_of,
    status,
)
from relevance_lens.study.run import RunOptions, default_paths, dry_run, run_study, timing_row
from relevance_lens.study.spec import (
    GRID_KEYS,
    STUDIES_DIR,
    TABLES,
    AnalysisSpec,
    EvalSpec,
    ModelSpec,
    SearchSpec,
    Study,
    StudySpec,
    find_study,
    load_study,
)

__all__ = [
    "GRID_KEYS",
    "IRDS_QUERIES",
    "RUNS",
    "STUDIES_DIR",
    "TABLES",
    "AnalysisSpec",
    "Cell",
    "EvalSpec",
    "GpuRate",
    "ModelSpec",
    "RunOptions",
    "SearchSpec",
    "Study",
    "StudySpec",
    "assign_shards",
    "default_paths",
    "dry_run",
    "expand",
    "find_study",
    "load_study",
    "marker",
    "measured_seconds",
    "parse_shard",
    "run_study",
    "select",
    "shard_of",
    "status",
    "timing_row",
]
