"""Studies: the experiments of the ResNet paper, reproduced with rtool's own training runs.

``config`` (settings and the shared recipe; no torch, so the CLI builds its flags cheaply), ``runs``
(run folders: finished, resume, start), ``degradation`` (``rtool study degradation``: train, figure, tables).
"""
