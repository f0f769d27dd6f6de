"""`python -m slmops.bench [NAME ...] [--out DIR] [--only NAME] [--list]`: run the registered benchmarks.

With names (positional or `--only`), only those run, in the order given.
"""

from __future__ import annotations

import argparse
import sys

import slmops.bench.conversion  # noqa: F401  (registers its benchmarks)
import slmops.bench.decode  # noqa: F401  (registers its benchmark)
import slmops.bench.llamacpp  # noqa: F401  (registers its benchmarks)
import slmops.bench.seed  # noqa: F401  (registers its benchmarks)
import slmops.bench.serving  # noqa: F401  (registers its benchmarks)
import slmops.bench.synthesis  # noqa: F401  (registers its benchmarks)
import slmops.bench.training  # noqa: F401  (registers its benchmarks)
from slmops.bench.registry import REGISTRY, run_benchmarks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slmops.bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--out", default="build/bench", help="folder for results.json and report.md")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this benchmark")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for bench in REGISTRY.values():
            print(f"{bench.name}: {bench.description}")
        return 0
    names = list(dict.fromkeys(args.names + args.only))
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    chosen = [REGISTRY[name] for name in (names or REGISTRY)]
    document = run_benchmarks(chosen, args.out)
    print(f"wrote {args.out}/results.json and {args.out}/report.md ({len(document['results'])} results)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
