"""The ``spanline`` command: ``spanline demo``, ``spanline bench``, ``spanline --version``."""

from __future__ import annotations

import argparse
import sys

import spanline


def _cities(value: str) -> list[str]:
    cities = [c.strip() for c in value.split(",") if c.strip()]
    if not cities:
        raise argparse.ArgumentTypeError("give at least one city, e.g. Tokyo,Paris,Sydney")
    return cities


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spanline",
        description="Trace every Anthropic SDK call into MLflow as nested traces.",
    )
    parser.add_argument("--version", action="version", version=f"spanline {spanline.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="run a traced tool-calling agent and print the stored traces",
        description=(
            "Run the tool-calling agent of MLflow's Anthropic tracing example, traced by spanline, against "
            "the real Anthropic API when ANTHROPIC_API_KEY is set (else an offline fake), then read the "
            "traces back from MLflow and print them."
        ),
    )
    demo.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the current "
        "directory)",
    )
    demo.add_argument(
        "--experiment", default="spanline-demo", help="MLflow experiment (default: %(default)s)"
    )
    demo.add_argument(
        "--cities",
        type=_cities,
        default=["Tokyo", "Paris", "Sydney"],
        help="comma-separated cities to ask about (default: Tokyo,Paris,Sydney)",
    )

    sub.add_parser(
        "bench",
        help="run spanline's benchmark (arguments go to spanline.bench)",
        add_help=False,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``spanline`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()

    # Everything after "bench" belongs to spanline.bench, whatever it looks like.
    if args_list and args_list[0] == "bench":
        return _bench(args_list[1:])

    args = parser.parse_args(args_list)
    if args.command == "demo":
        from spanline import demo

        return demo.run(tracking_uri=args.tracking_uri, experiment=args.experiment, cities=args.cities)
    parser.print_help()
    return 2


def _bench(rest: list[str]) -> int:
    try:
        from spanline import bench
    except ImportError as exc:
        print(
            f"spanline bench: the benchmark module spanline.bench is not available ({exc}).",
            file=sys.stderr,
        )
        return 2
    result = bench.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
