"""Command-line options that every resumable training command of `edge export` shares."""
from __future__ import annotations

import argparse


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from OUT/last.pt if it exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
