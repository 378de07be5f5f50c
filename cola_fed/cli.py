"""The ``cola-fed`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from cola_fed.centralized import DemoConfig, run_demo

    config = DemoConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    result = run_demo(config)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(f"accuracy before {result.accuracy_before:.3f} -> after {result.accuracy_after:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola-fed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="centralized ColA fine-tune of MiniLM-L6 on Rotten Tomatoes")
    demo.add_argument("--steps", type=int, default=150)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", help="write the result as JSON here")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
