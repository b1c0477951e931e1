"""``python -m core train [--config FILE] [key=value ...]``: pretrain or fine-tune an ST model.

With no data path it trains on the demo: ``data.kwargs.dataset=atlas`` pretrains a base on the atlas,
the default burn/sham fine-tunes; ``model.init_from=demo`` starts from the demo base model.
"""

from pathlib import Path

COMMAND = "train"
HELP = "train an ST model (pretrain, or fine-tune with LoRA / mHC / velocity alignment)"


def add_arguments(parser):
    parser.add_argument("--config", type=Path, default=None, help="a YAML config; overrides apply on top")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="e.g. model.kwargs.use_mhc=true training.max_epochs=3")


def run(args) -> int:
    from core.config import load_config
    from core.training.run import print_run, train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg)
    print_run(run_dir)
    return 0
