"""The Lightning logger writes the run folder's metrics rows: split from the metric names, the logged step, and
values as the float32 Lightning holds, written as the shortest decimal of that float32."""

import json

import numpy as np

from core.runs import RunWriter, read_metrics
from core.training.logger import RunFolderLogger


def test_logged_metrics_become_train_and_val_rows_with_their_step(tmp_path):
    logger = RunFolderLogger(RunWriter(tmp_path / "run"))
    lr = float(np.float32(1e-3))  # what Lightning hands over for lr=1e-3
    logger.log_metrics({"loss": float(np.float32(2.5)), "lr": lr, "cells": 256.0, "epoch": 0.0}, step=1)
    logger.log_metrics({"val_loss": float(np.float32(2.25)), "val_dist_loss": float(np.float32(2.25)),
                        "epoch": 1.0}, step=3)
    logger.writer.close()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"split": "train", "step": 1, "epoch": 0, "cells": 256, "loss": 2.5, "lr": 0.001}
    assert lines[1] == {"split": "val", "step": 3, "epoch": 1, "val_dist_loss": 2.25, "val_loss": 2.25}
    frame = read_metrics(tmp_path / "run")
    assert list(frame["split"]) == ["train", "val"] and list(frame["step"]) == [1, 3]


def test_values_added_for_the_next_row_appear_in_that_row_only(tmp_path):
    logger = RunFolderLogger(RunWriter(tmp_path / "run"))
    logger.add_to_next_row({"grad_lora": 0.5})
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": 2.0}, step=2)
    logger.writer.close()
    frame = read_metrics(tmp_path / "run")
    assert frame["grad_lora"].iloc[0] == 0.5 and np.isnan(frame["grad_lora"].iloc[1])
