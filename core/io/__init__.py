"""Writing and reading files safely: atomic replacement (atomic.py) and weights-only checkpoints (checkpoint.py)."""
