"""`python -m train.tasks_sprites --embed-captions`: fill text2image's caption-embedding cache ahead of training
(the demo runs this beside the AE, which text2image's pairs need only afterwards). The command keeps its old
name; the sprites tasks themselves live in train/tasks/sprites.py."""
from __future__ import annotations

import argparse

from train.cli import add_option_flags, options_from
from train.core.common import run_cli
from train.tasks.sprites import TEXT_PRESETS, SpriteOptions, embed_training_captions


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.tasks_sprites", description=__doc__)
    ap.add_argument("--embed-captions", action="store_true", required=True)
    ap.add_argument("--preset", default="default", choices=sorted(TEXT_PRESETS))
    ap.add_argument("--seed", type=int, default=0, help="the seed text2image will be trained with")
    add_option_flags(ap, SpriteOptions, "sprites tasks")
    args = ap.parse_args(argv)
    embed_training_captions(options_from(args, SpriteOptions), args.preset, args.seed)
    return 0


if __name__ == "__main__":
    run_cli(main)
