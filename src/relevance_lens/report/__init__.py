"""Report: one self-contained HTML page from a results store. ``results`` reads the store,
``tables`` and ``figures`` draw, ``train_sections``, ``layer_sections`` and ``search_sections``
answer the study's questions, ``page`` assembles and writes it; ``paper`` writes the same
figures (PDF, SVG, PNG) and tables (CSV, LaTeX) as files for a paper.

Reads results only: may import ``errors``, ``store``, ``evaluate``, ``data`` (atomic
writes), ``model.roles`` (role order) and ``train.rundir`` (checkpoint names); never the
stages that compute.
"""
