"""Arc State (arc-state 0.11.1) in and out: safe reading of its run folders (``safe_load``, ``folder``), the
mapping of its tensor names to ours (``keys``), its own way of building sets and drawing controls at inference
(``sampling``). The architecture itself is ``core/model/arc_transition.py``."""
