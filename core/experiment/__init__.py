"""Paired ablations: k seeds x arms (override sets), the same seeds and splits for every arm, each run an
ordinary run folder, and per metric the paired difference to the reference arm with a verdict.

- ``core.experiment.arms``: the named arms (``base``, ``+mhc``, ``+velocity``, ``+mhc+velocity``) and the
  stability preset (an lr ladder, each +mhc arm paired with base at the same learning rate).
- ``core.experiment.runner``: ``run_experiment(spec)``, parallel and resumable, behind
  ``python -m core experiment``.
- ``core.experiment.stats``: paired differences, t intervals and the one-line verdicts.
"""
