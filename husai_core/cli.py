"""The ``husai`` command: run phase notebooks, the main job, and rebuild the report index."""

from __future__ import annotations

import argparse
import sys

from .errors import HusaiError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="husai", description="HUSAI workbench: SAE seed-consistency research phases.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one phase notebook through papermill")
    run.add_argument("notebook", help="e.g. 01_transformer, 01 or transformer")
    run.add_argument("--profile", default="smoke", help="parameter profile under params/ (smoke, full)")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (YAML value); repeatable")
    run.add_argument("--seeds", help="comma-separated seeds: one run per seed (e.g. 42,123,456)")
    run.add_argument("--run-id", help="name of the run folder (default: profile and timestamp)")
    run.add_argument("--resume", action="store_true", help="skip when a finished run with the same parameters exists")
    run.add_argument("--no-index", action="store_true", help="do not rebuild reports/index.html")

    pipe = sub.add_parser("pipeline", help="run the main job (every phase of `make run`) and build the index")
    pipe.add_argument("--profile", default="full")
    pipe.add_argument("--resume", action="store_true", help="skip phases already finished with the same parameters")

    sub.add_parser("index", help="rebuild reports/index.html from the latest runs")

    gate = sub.add_parser("gate", help="print a run's acceptance gates (its results.json or run folder)")
    gate.add_argument("results", help="runs/<notebook>/<run>/results.json or the run folder")
    gate.add_argument("--fail-on-gate-fail", action="store_true", help="exit with code 2 when a gate failed")

    show = sub.add_parser("params", help="list the notebooks, or one notebook's parameters and profile values")
    show.add_argument("notebook", nargs="?")
    show.add_argument("--profile", default="smoke")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except HusaiError as exc:
        print(f"husai: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("husai: interrupted; finished runs and artifacts are kept", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from . import report, runner

    if args.command == "run":
        overrides = runner.parse_overrides(args.param)
        if args.seeds:
            results = runner.run_seeds(args.notebook, args.profile, runner.parse_seeds(args.seeds), overrides,
                                       resume=args.resume)
        else:
            results = [runner.run_notebook(args.notebook, args.profile, overrides, run_id=args.run_id, resume=args.resume)]
        for res in results:
            headline = ", ".join(f"{k}={report._fmt(v)}" for k, v in res.results.get("headline", {}).items())
            print(f"{res.run_dir}  {headline}")
        if not args.no_index:
            print(f"index: {report.build_index()}")
    elif args.command == "pipeline":
        runner.run_main_job(args.profile, resume=args.resume)
    elif args.command == "index":
        print(report.build_index())
    elif args.command == "gate":
        from . import release

        gates = release.load_gates(args.results)
        print(release.format_gates(gates))
        return release.gate_exit_code(gates, args.fail_on_gate_fail)
    elif args.command == "params":
        if not args.notebook:
            print("\n".join(runner.list_notebooks()))
            return 0
        path = runner.resolve_notebook(args.notebook)
        declared = runner.notebook_parameters(runner.read_notebook(path))
        profile = runner.load_profile(path.stem, args.profile)
        for key, value in declared.items():
            marker = f"   [{args.profile}: {profile[key]!r}]" if key in profile else ""
            print(f"{key} = {value!r}{marker}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
