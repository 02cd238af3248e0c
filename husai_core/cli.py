"""The ``husai`` command: run phase notebooks, the main job, and rebuild the report index."""

from __future__ import annotations

import argparse
import sys

from .errors import HusaiError

# Every subcommand's default profile: full, the project's results (`make run`); smoke is the quick check.
PROFILE = "full"
PROFILE_HELP = f"parameter profile under params/ (default: {PROFILE}; smoke is the quick check)"


def _example(*lines: str) -> dict:
    """``add_parser`` keywords that end a subcommand's --help with examples."""
    return {"epilog": "examples:\n" + "\n".join(f"  {line}" for line in lines),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="husai", description="HUSAI workbench: SAE seed-consistency research phases.",
                                     **_example("husai pipeline            # the main job (make run), full profile",
                                                "husai run 01 --profile smoke", "husai <command> --help"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one phase notebook through papermill",
                         **_example("husai run 01_transformer --profile smoke -p steps=500",
                                    "husai run 03_sae_training --seeds 42,123,456 --resume"))
    run.add_argument("notebook", help="e.g. 01_transformer, 01 or transformer")
    run.add_argument("--profile", default=PROFILE, help=PROFILE_HELP)
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (YAML value); repeatable")
    run.add_argument("--seeds", help="comma-separated seeds: one run per seed (e.g. 42,123,456)")
    run.add_argument("--run-id", help="name of the run folder (default: profile and timestamp)")
    run.add_argument("--resume", action="store_true",
                     help="skip when the newest finished run has the same parameters, code and upstream runs")
    run.add_argument("--no-index", action="store_true",
                     help="do not rebuild the profile's report index (reports/index.html for full, "
                          "reports/<profile>/index.html otherwise)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="do not show the notebook's progress bars and printed lines")

    pipe = sub.add_parser("pipeline", help="run the main job (every phase of `make run`) and build the index",
                          **_example("husai pipeline --resume", "husai pipeline --profile smoke --quiet"))
    pipe.add_argument("--profile", default=PROFILE, help=PROFILE_HELP)
    pipe.add_argument("-q", "--quiet", action="store_true",
                      help="only the per-phase lines, not the notebooks' progress bars and printed lines")
    pipe.add_argument("--resume", action="store_true",
                      help="skip phases whose parameters, code and upstream runs are unchanged (a rerun phase "
                           "reruns everything after it); prints why each phase was skipped or rerun")

    sub.add_parser("index", help="rebuild the report indexes from the latest runs: reports/index.html (full "
                                 "profile only) and reports/<profile>/index.html for every other profile",
                   **_example("husai index",
                              "HUSAI_RUNS_DIR=/data/runs husai index   # reports from another runs folder"))

    gate = sub.add_parser("gate", help="print a run's acceptance gates (its results.json or run folder)",
                          description="Print a run's acceptance gates; default: the newest 14_release_gate run "
                                      "of --profile. Example: husai gate --profile full --fail-on-gate-fail")
    gate.add_argument("results", nargs="?",
                      help="runs/<notebook>/<run>/results.json or the run folder (default: the newest "
                           "14_release_gate run of --profile)")
    gate.add_argument("--profile", default="full", help="profile whose release gate is read when no path is given "
                                                        "(default: full)")
    gate.add_argument("--fail-on-gate-fail", action="store_true", help="exit with code 2 when a required gate failed")

    cmp = sub.add_parser("compare", help="compare SAEs from anywhere (SAELens, sparsify, dictionary_learning, ours) "
                                         "across seeds against nulls (notebook 10_compare)",
                         **_example("husai compare sae_seed0/ sae_seed1/ sae_seed2/ --labels mine,mine,mine "
                                    "--activations acts/ --hook blocks.0.hook_resid_post --out compare_out/"))
    cmp.add_argument("paths", nargs="+", metavar="PATH",
                     help="SAE checkpoint folder/file, or a cached SAELens pretrained release/sae_id")
    cmp.add_argument("--labels", nargs="+", metavar="LABEL",
                     help="one label per PATH (or comma-separated); equal labels = seeds of one configuration")
    cmp.add_argument("--activations", metavar="SOURCE",
                     help="a HUSAI activation cache folder or a folder of <dataset>_<hook>.pt files")
    cmp.add_argument("--hook", help="the hook to read from --activations")
    cmp.add_argument("--out", metavar="DIR", help="also copy results.json and report.html here")
    cmp.add_argument("--profile", default=PROFILE, help=PROFILE_HELP)
    cmp.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                     help="override a notebook parameter (YAML value), e.g. -p n_resamples=2000; repeatable")
    cmp.add_argument("--run-id", help="name of the run folder (default: profile and timestamp)")
    cmp.add_argument("--no-index", action="store_true", help="do not rebuild the profile's report index")

    ver = sub.add_parser("verify", help="recompute every headline number of a profile's index and results.json from "
                                        "the artifacts; exit 1 with one line per number that no longer follows",
                         **_example("husai verify", "husai verify --profile smoke --runs /tmp/runs"))
    ver.add_argument("--profile", default="full", help="profile whose index and latest runs to check (default: full)")
    ver.add_argument("--runs", metavar="DIR", help="runs folder (default: runs/ or $HUSAI_RUNS_DIR)")
    ver.add_argument("--reports", metavar="DIR", help="reports folder (default: reports/ or $HUSAI_REPORTS_DIR)")
    ver.add_argument("--artifacts", metavar="DIR",
                     help="artifacts folder (default: the one each run recorded, re-rooted under --runs)")

    show = sub.add_parser("params", help="list the notebooks, or one notebook's parameters and profile values",
                          **_example("husai params", "husai params 03_sae_training --profile smoke"))
    show.add_argument("notebook", nargs="?")
    show.add_argument("--profile", default=PROFILE, help=PROFILE_HELP)
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
                                       resume=args.resume, log_output=not args.quiet)
        else:
            results = [runner.run_notebook(args.notebook, args.profile, overrides, run_id=args.run_id, resume=args.resume,
                                           log_output=not args.quiet)]
        for res in results:
            if res.resume:
                seed = f" seed {res.manifest['seed']}" if res.manifest.get("seed") is not None else ""
                print(f"{res.manifest['notebook']}{seed}: {res.resume}")
            headline = ", ".join(f"{k}={report._fmt(v)}" for k, v in res.results.get("headline", {}).items())
            print(f"{res.run_dir}  {headline}")
        if not args.no_index:
            print(f"index: {report.build_index(profile=args.profile)}")
    elif args.command == "pipeline":
        runner.run_main_job(args.profile, resume=args.resume, log_output=not args.quiet)
    elif args.command == "index":
        for path in report.build_indexes().values():
            print(path)
    elif args.command == "gate":
        from . import gates as g

        path = args.results or g.latest_release_results(args.profile)
        gates = g.load_gates(path)
        print(f"gates of {path}")
        print(g.format_gates(gates))
        return g.gate_exit_code(gates, args.fail_on_gate_fail)
    elif args.command == "compare":
        from .compare import run_compare

        res = run_compare(args.paths, args.labels, args.activations, args.hook, args.out, args.profile,
                          runner.parse_overrides(args.param), run_id=args.run_id, index=not args.no_index)
        headline = ", ".join(f"{k}={report._fmt(v)}" for k, v in res.results.get("headline", {}).items())
        print(f"{res.run_dir}  {headline}")
        if args.out:
            print(f"copied results.json and report.html to {args.out}")
    elif args.command == "verify":
        from .verify import verify

        outcome = verify(args.profile, args.runs, args.reports, args.artifacts)
        for line in outcome.mismatches:
            print(line)
        print(outcome.summary())
        return 0 if outcome.ok else 1
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
