"""What a reader of metrics.jsonl may assume (issue 12, points 4 and 12): every row has a numeric ``step``,
every column but ``split`` is numeric, and each (split, step) appears once.

A row with a non-numeric step (a hand-edited or foreign file) crashed ``figures`` and three app pages; rows a
resumed run wrote again for steps it had already logged made curves zig-zag. Such rows are dropped, and of
repeated steps the last one, the resumed run's, is kept.
"""

from __future__ import annotations

TEXT_COLUMNS = ("split",)


def clean_metrics(frame):
    import pandas as pd

    if frame.empty:
        return frame
    frame = frame.copy()
    if "step" not in frame:
        frame["step"] = pd.NA
    for column in frame.columns:
        if column not in TEXT_COLUMNS and frame[column].dtype == object:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame[pd.to_numeric(frame["step"], errors="coerce").notna()]
    frame = frame.astype({"step": "int64"})
    frame = frame.drop_duplicates(subset=["split", "step"] if "split" in frame else ["step"], keep="last")
    return frame.reset_index(drop=True)
