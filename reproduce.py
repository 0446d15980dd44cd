#!/usr/bin/env python
"""Run a benchmark suite (scenarios x algorithms x seeds) and render its report.

Thin CLI over suites/ (manifests, run store, orchestrator, backends) and reports/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import warnings

EXAMPLES = """\
examples:
  python reproduce.py                              # the quick suite on this machine, then its report
  python reproduce.py --suite smoke --workers 2    # the tiny suite CI uses
  python reproduce.py --suite ddn_smax --dry-run   # list the run matrix and what is already done
  python reproduce.py --suite bidist_quick         # policy learners, held-out co-players, cross-play
  python reproduce.py --suite ddn_smac --backend docker              # StarCraft II maps in the image
  python reproduce.py --suite ddn_smax --backend ray --address auto  # an existing Ray cluster
  python reproduce.py --suite quick --only scenario=3m --seeds 0     # a slice of a suite
  python reproduce.py --suite ddn_smac --skip-unavailable            # run what this machine can
  python reproduce.py --suite quick --report-only  # re-render the report from finished runs
  python reproduce.py --list                       # suites, algorithms, scenarios, backends
  python reproduce.py --list ddn                   # every config field of DDN, choices marked
  python reproduce.py --algorithm qmix --scenario smax/3m --set lr=0.001 --env-steps 200000
                                                   # one run, no manifest (store folder run_qmix_smax_3m)
  make reproduce ARGS="--suite smoke"

Rerunning a command resumes it: finished runs are skipped, interrupted ones resume from their last
checkpoint. Suites with a 'heldout' section then evaluate every focal policy run in cross-play
against each co-player kind (round robin, held-out checkpoints, uniform random, self-play) on one
partner schedule for every method (crossplay.json in its run dir; skipped when up to date). Ctrl-C stops at the next safe point; a second Ctrl-C stops at once.
exit codes: 0 all runs done, 1 some run failed or a run dir is corrupt, 2 bad input or refused
(manifest, flags, unavailable backends, output dir locked), 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reproduce.py",
        description=__doc__.strip().splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--suite", default=None, help="shipped suite name (see --list) or path to a manifest .yaml (default: quick)"
    )
    p.add_argument(
        "--backend", default="local", choices=("local", "ray", "docker"), help="where runs execute (default: local)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="runs at once (local/docker: worker processes/containers; ray: CPUs of the local cluster); "
        "default: this machine's CPU count",
    )
    p.add_argument("--out", default="results", help="output directory of the run store (default: results)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs with their state; write nothing")
    p.add_argument(
        "--list",
        nargs="?",
        const="",
        default=None,
        metavar="ALGORITHM",
        help="list suites, algorithms, scenarios and available backends; with ALGORITHM, every field "
        "of its config: type, default, meaning, reconstructed choices marked",
    )
    p.add_argument("--report-only", action="store_true", help="only render the report from the runs on disk")
    p.add_argument("--seeds", default=None, help="comma-separated subset of the manifest's seeds, e.g. 0,1")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TERM",
        help="keep runs matching TERM: key=value[,value] (keys: family, scenario, algorithm, label, group, "
        "seed, id) or a bare scenario/algorithm/label/group name; repeatable (all must match)",
    )
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="skip runs whose backend is missing here instead of refusing the whole suite",
    )
    p.add_argument("--retries", type=int, default=2, help="extra attempts for a failed run (default: 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: the manifest's cpus per run, 1 unless it says otherwise)",
    )
    p.add_argument("--address", default=None, help="ray: address of an existing cluster (default: start a local one)")
    p.add_argument("--image", default=None, help="docker: image to run (default: the manifest's image)")
    p.add_argument("--no-report", action="store_true", help="do not render the report at the end")
    p.add_argument(
        "--no-crossplay",
        action="store_true",
        help="train only: skip the cross-play phase (a campaign whose co-players finish on several machines "
        "runs it once, on the last; docs/run-store.md)",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="keep TensorBoard event files (<run dir>/tb/) in step with each run's metrics.csv while "
        "the suite runs; view with tensorboard --logdir <out>/<suite>/runs",
    )
    one = p.add_argument_group("one run, without a manifest (instead of --suite)")
    one.add_argument("--algorithm", default=None, help="train this algorithm (see --list) on --scenario")
    one.add_argument("--scenario", default=None, metavar="FAMILY/NAME", help="e.g. smax/3m, predator_prey/stag_hunt")
    one.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="sets",
        help="override a learner config field (lr=0.001) or, as env.KEY=VALUE, an environment "
        "option; repeatable; values are YAML",
    )
    for flag in ("env-steps", "eval-interval", "eval-episodes", "checkpoint-interval"):
        one.add_argument(
            f"--{flag}",
            type=int,
            default=None,
            help=f"budget {flag.replace('-', '_')} (default: the family's paper suite's)",
        )
    return p


def _fail(message: str, code: int = 2) -> int:
    print(f"reproduce.py: error: {message}", file=sys.stderr)
    return code


def _print_verdicts(report_path) -> None:
    """The claims' outcomes in the report's own words (its verdicts.json), when the full report was
    rendered (not the minimal fallback table)."""
    if report_path is None or report_path.name != "report.html":
        return
    try:
        from reports.claims import summary_lines

        records = json.loads((report_path.parent / "verdicts.json").read_text())
    except (ImportError, OSError, ValueError):
        return
    for line in summary_lines(records):
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Validation imports JAX (SMAX options); the backends then start processes with fork+exec, which
    # is safe, but Python warns about any fork in a multithreaded process.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

    from suites.backends import make_backend
    from suites.backends.base import BackendError
    from suites.manifest import ManifestError, load_suite, load_suite_text
    from suites.one_run import BUDGET_KEYS, OneRunError, one_run
    from suites.orchestrator import UsageError, eprint, execute, filter_runs, format_plan, plan, render_report
    from suites.provenance import provenance_extra
    from suites.store import StoreLockedError, SuiteStore

    problems = []
    if args.workers is not None and args.workers < 1:
        problems.append(f"--workers must be >= 1, got {args.workers}")
    if args.retries < 0:
        problems.append(f"--retries must be >= 0, got {args.retries}")
    if args.threads is not None and args.threads < 1:
        problems.append(f"--threads must be >= 1, got {args.threads}")
    if args.address is not None and args.backend != "ray":
        problems.append("--address only applies to --backend ray")
    if args.image is not None and args.backend != "docker":
        problems.append("--image only applies to --backend docker")
    if sum([args.dry_run, args.list is not None, args.report_only]) > 1:
        problems.append("--dry-run, --list and --report-only exclude each other")
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            problems.append(f"--seeds must be comma-separated integers, got {args.seeds!r}")
        else:
            if not seeds:
                problems.append("--seeds is empty")
    one_run_flags = [
        f"--{k.replace('_', '-')}"
        for k in ("env_steps", "eval_interval", "eval_episodes", "checkpoint_interval")
        if getattr(args, k) is not None
    ]
    one_run_flags += ["--set"] if args.sets else []
    if args.algorithm is None and args.scenario is None:
        if one_run_flags:
            problems.append(f"{', '.join(one_run_flags)} only apply to a one-run command (--algorithm and --scenario)")
    elif args.algorithm is None or args.scenario is None:
        problems.append("a one-run command needs both --algorithm and --scenario")
    elif args.suite is not None:
        problems.append("--suite and --algorithm/--scenario exclude each other: run a suite or one run")
    elif args.only:
        problems.append("--only filters a suite; a one-run command is already one algorithm on one scenario")
    if problems:
        return _fail("; ".join(problems))
    if args.backend == "ray" and args.address and not (args.dry_run or args.list is not None or args.report_only):
        # Like any flag, before the manifest's validation (which imports JAX, TensorFlow: many seconds):
        # an address where nothing listens would otherwise keep ray.init retrying for minutes.
        from suites.backends.ray_backend import probe_address

        try:
            probe_address(args.address)
        except BackendError as exc:
            return _fail(str(exc))

    if args.list is not None:
        from suites.listing import print_algorithm_fields, print_listing

        if args.list:
            try:
                print_algorithm_fields(args.list)
            except ValueError as exc:
                return _fail(str(exc))
        else:
            print_listing()
        return 0

    try:
        # With docker the image, not this machine, must provide StarCraft II / the Melting Pot assets.
        available = args.backend != "docker"
        if args.algorithm is not None:
            run = one_run(args.algorithm, args.scenario, args.sets, seeds, {k: getattr(args, k) for k in BUDGET_KEYS})
            origin = f"one run (--algorithm {args.algorithm} --scenario {args.scenario})"
            suite, seeds = load_suite_text(origin, run.text, check_availability=available), None
        else:
            suite = load_suite(args.suite or "quick", check_availability=available)
        specs = filter_runs(suite, seeds, args.only)
    except (ManifestError, UsageError, OneRunError) as exc:
        return _fail(str(exc))
    store = SuiteStore(args.out, suite.name)
    # Before any work: an --out that cannot hold the run store is refused now, not after the backend
    # started (a dry run only reads, so only a path that cannot be a directory is an error there).
    problem = store.unusable(write=not args.dry_run)
    if problem:
        return _fail(problem)
    items = plan(specs, store)

    if args.dry_run:
        print(format_plan(items, suite))
        if suite.heldout is not None:
            from suites.crossplay_phase import describe_plan, plan_crossplay

            print(describe_plan(plan_crossplay(items, suite, store)))
        return 0
    if args.report_only:
        if not store.runs.is_dir():
            return _fail(f"no runs of suite {suite.name!r} under {store.root}; run it first (without --report-only)")
        path = render_report(store.root, say=eprint)
        _print_verdicts(path)
        print(f"report: {path}")
        return 0

    unavailable = [it for it in items if it.spec.unavailable and it.state.kind != "done"]
    if unavailable and not args.skip_unavailable:
        reasons: dict[str, list[str]] = {}
        for it in unavailable:
            reasons.setdefault(it.spec.unavailable or "", []).append(it.spec.id)
        lines = [f"{len(unavailable)} run(s) of suite {suite.name!r} cannot run on this machine; nothing was started:"]
        for reason, ids in reasons.items():
            lines.append(f"  - {len(ids)} run(s): {reason}")
        lines.append(
            "Run the suite where these are available (e.g. --backend docker with the project's image), "
            "narrow it with --only/--seeds, or pass --skip-unavailable to run the rest."
        )
        return _fail("\n".join(lines))
    corrupt = [it for it in items if it.state.kind == "corrupt"]
    for it in corrupt:
        eprint(
            f"CORRUPT run dir {store.run_dir(it.spec.id)} ({it.spec.describe()}): {it.state.detail}. "
            "It is left untouched; move it away to rerun that run."
        )

    backend_kwargs = {
        "workers": args.workers,
        "address": args.address,
        "image": args.image or suite.image,
        "suite_root": store.root,
    }
    try:
        backend = make_backend(args.backend, **backend_kwargs)
        backend.check()
    except BackendError as exc:
        return _fail(str(exc))
    if args.backend != "ray":  # local and docker runs share this machine's memory (a cluster's nodes have their own)
        from suites.memory import memory_problem

        problem = memory_problem([it.spec for it in items if it.state.kind not in ("done", "corrupt")], backend.slots())
        if problem:
            return _fail(problem)
    # The backend starts before anything is written: a cluster that cannot be reached leaves no trace.
    try:
        backend.start()
    except BackendError as exc:
        backend.close()
        return _fail(str(exc))
    try:
        store.acquire(command=" ".join(shlex.quote(a) for a in sys.argv))
    except StoreLockedError as exc:
        backend.close()
        return _fail(str(exc))
    try:
        store.write_manifest(suite)
        if args.tensorboard:
            from suites.tensorboard import LiveSync

            eprint(f"tensorboard: event files in each run's tb/; view with: tensorboard --logdir {store.runs}")
            live = LiveSync(store.root)
        else:
            live = contextlib.nullcontext()
        try:
            with live:
                summary = execute(
                    items,
                    store,
                    backend,
                    suite,
                    provenance_extra(args.backend),
                    retries=args.retries,
                    threads=args.threads,
                )
                crossplay = None
                if suite.heldout is not None and not summary.interrupted and not args.no_crossplay:
                    # After training: the focal policies against the held-out populations (suites/crossplay_phase.py).
                    from suites.crossplay_phase import execute_crossplay_phase

                    crossplay = execute_crossplay_phase(
                        items,
                        store,
                        backend,
                        suite,
                        provenance_extra(args.backend),
                        retries=args.retries,
                        threads=args.threads,
                    )
        finally:
            backend.close()
    finally:
        store.release()
    print(summary.format())
    if crossplay is not None:
        print(crossplay.format())
    interrupted = summary.interrupted or (crossplay is not None and crossplay.interrupted)
    if not args.no_report and not interrupted:
        path = render_report(store.root, say=eprint)
        _print_verdicts(path)
        print(f"report: {path}")
    codes = [summary.exit_code] + ([crossplay.exit_code] if crossplay is not None else [])
    code = 130 if 130 in codes else max(codes)
    return code if code != 0 else (1 if corrupt else 0)


if __name__ == "__main__":
    # Run from the checkout: packages beside this file (no install step needed).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
