"""Report: one self-contained HTML page from a results store. ``results`` reads the store,
``tables`` and ``figures`` draw, ``train_sections``, ``layer_sections`` and ``search_sections``
answer the study's questions, ``page`` assembles and writes it.

Reads results only: may import ``errors``, ``store``, ``evaluate``, ``data`` (atomic
writes), ``model.roles`` (role order) and ``train.rundir`` (checkpoint names); never the
stages that compute.
"""
