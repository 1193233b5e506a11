"""`python -m services.node_agent.shim build` compiles the CUDA shim and prints its path."""

from __future__ import annotations

import argparse
import sys

from services.node_agent.shim import ShimBuildError, build_shim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.node_agent.shim")
    parser.add_argument("command", choices=["build"], help="compile the shim")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    args = parser.parse_args(argv)
    try:
        print(build_shim(force=args.force, strict=args.strict))
    except ShimBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
