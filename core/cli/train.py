"""``python -m core train [--config FILE] [--preset small|gpu] [key=value ...]``: pretrain or fine-tune an ST model.

With no data path it trains on the demo: ``data.kwargs.dataset=atlas`` pretrains a base on the demo atlas, the
default burn/sham fine-tunes; ``model.init_from=demo`` starts from the demo base model (pretrained once, cached).
Examples:
    python -m core train training.max_epochs=1
    python -m core train model.init_from=demo model.kwargs.use_mhc=true run.name=st-lora-mhc
    python -m core train data.kwargs.dataset=atlas model.kwargs.lora.enable=false run.name=my-base
"""

import json
from pathlib import Path

COMMAND = "train"
HELP = "train an ST model (pretrain, or fine-tune with LoRA / mHC / velocity alignment)"


def add_arguments(parser):
    parser.add_argument("--config", type=Path, default=None, help="a YAML config; key=value overrides apply on top")
    parser.add_argument("--preset", choices=["small", "gpu"], default=None,
                        help="model and training sizes: small (default: seconds on a CPU) or gpu (Arc's state_sm)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="e.g. model.kwargs.use_mhc=true training.max_epochs=3 model.kwargs.lora.r=16")


def run(args) -> int:
    from core.api import train

    run_dir = train(args.overrides, config=args.config, preset=args.preset).path  # a progress bar on a terminal
    summary = run_dir / "train_summary.json"
    if summary.exists():
        print(json.dumps({"run_dir": str(run_dir), **json.loads(summary.read_text())}, indent=2))
    return 0
