"""The benchmark report: ratios, targets and the README table come out as the rows say (no timing here)."""

import json

from bench.__main__ import main, markdown
from bench.harness import Row, Timing


def _result(rows):
    machine = {"cpus": 2, "processor": "x86_64", "platform": "Linux", "python": "3.11.7", "torch": "2.13.0+cpu",
               "torch_threads": 2, "cuda": None}
    return {"machine": machine, "seconds": 295.6, "rows": [r.to_json() for r in rows]}


def test_ratio_is_against_the_baseline_of_the_same_row():
    row = Row("mhc", "block", Timing(0.0226, 0.0216, 0.0235, 15), "plain", Timing(0.0192, 0.0185, 0.0212, 15))
    assert row.ratio == 0.0226 / 0.0192
    assert Row("training", "memory", None).ratio is None


def test_markdown_table_has_one_line_per_row_with_ratio_target_and_notes(tmp_path, capsys):
    rows = [
        Row("sinkhorn", "3072 x 4x4", Timing(0.00343, 0.00329, 0.00363, 15), "hyper-connections",
            Timing(0.0107, 0.0105, 0.0426, 15), target="<= 0.8x", met=True,
            extra={"col_error": "8.35e-04", "matrices_per_s": "895,387"}),
        Row("training", "peak memory", None, target="<= 2 GB", met=False, extra={"peak_mb": 2100}),
    ]
    table = markdown(_result(rows)).splitlines()
    assert table[2] == ("| sinkhorn: 3072 x 4x4 | 3.43 (3.29–3.63) ms | hyper-connections: 10.7 (10.5–42.6) ms | "
                        "0.32× | <= 0.8x | yes | col_error 8.35e-04 |")
    assert table[3] == "| training: peak memory | - | - | - | <= 2 GB | **no** | peak_mb 2100 |"
    assert table[-1].startswith("Machine: 2 CPUs (x86_64), Linux, Python 3.11.7, torch 2.13.0+cpu (2 threads), "
                                "GPU: none; whole suite 296 s")

    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(_result(rows)))
    assert main(["--markdown", str(saved)]) == 0
    assert capsys.readouterr().out.splitlines() == table
