"""CI regression gate on learning: run the regression suite, compare each cell's final scores with
its stored band, print a table, exit non-zero on a regression.

    python -m ci.check                        # runs ci/regression.yaml into results/ci, compares
    python -m ci.check --derive               # re-measure and rewrite the bands (see ci/bands.yaml)

Rule (per cell = scenario x label): the final score of a run is the mean of its last 3 greedy
evaluations; over the suite's seeds we take the median and its 95% percentile bootstrap CI. The
cell REGRESSES when the whole CI lies below the band's lower edge (the learner is worse with 95%
confidence), or when any of its runs failed. A CI entirely above the upper edge is reported as
"above band" (improved: consider re-deriving), not a failure.

The runs go through the orchestrator (``reproduce.py --suite ... --out ... --skip-unavailable``), so CI
exercises the same path as users. ``--override key=value`` adds learner overrides to every algorithm
(e.g. ``lr=0`` for the weakened-learner test): they change the run ids, so the runs never mix.

Exit status: 0 pass, 1 regression, 2 the checker itself could not run (bad input, orchestrator error).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reports.collect import collect
from reports.stats import aggregate

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "ci" / "regression.yaml"
BANDS = ROOT / "ci" / "bands.yaml"
REPS = 2000


@dataclass
class Result:
    key: str
    n: int
    n_failed: int
    median: float
    lo: float
    hi: float
    values: list[float]
    band: dict[str, Any] | None

    @property
    def status(self) -> str:
        if self.n_failed:
            return "REGRESSION (run failed)"
        if self.band is None:
            return "no band (not gated)"
        if self.n == 0:
            return "REGRESSION (no finished run)"
        if self.hi < self.band["lower"]:
            return "REGRESSION"
        if self.lo > self.band["upper"]:
            return "above band"
        return "ok"

    @property
    def failed(self) -> bool:
        return self.status.startswith("REGRESSION")


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"override {text!r} must look like key=value")
    return key, yaml.safe_load(value)


def effective_manifest(manifest: Path, overrides: dict[str, Any], out: Path) -> Path:
    """The manifest with ``overrides`` on every algorithm entry (the highest override layer)."""
    if not overrides:
        return manifest
    data = yaml.safe_load(manifest.read_text())
    entries = [{"name": a} if isinstance(a, str) else a for a in data["algorithms"]]
    for entry in entries:
        entry["overrides"] = {**(entry.get("overrides") or {}), **overrides}
    data["algorithms"] = entries
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{manifest.stem}.effective.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_suite(manifest: Path, out: Path, workers: int, report: bool) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "reproduce.py"),
        "--suite",
        str(manifest),
        "--out",
        str(out),
        "--skip-unavailable",
        "--workers",
        str(workers),
        "--retries",
        "0",
    ]
    if not report:
        cmd.append("--no-report")
    proc = subprocess.run(cmd, cwd=ROOT)
    # A failed run is the checker's business (it is a regression), not a reason to stop here.
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"the orchestrator exited with status {proc.returncode}: {' '.join(cmd)}")


def suite_name(manifest: Path) -> str:
    return str(yaml.safe_load(manifest.read_text())["name"])


def load_bands(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("bands") or {}


def compare(suite_dir: Path, bands: dict[str, dict[str, Any]], reps: int = REPS) -> list[Result]:
    data = collect(suite_dir)
    results = []
    runs = data.runs
    for (family, scenario, label), cell in runs.groupby(["family", "scenario", "label"], sort=True):
        done = cell[(cell["state"] == "done") & (cell["n_evals"] > 0)]
        agg = aggregate(done["final_score"], reps=reps)
        key = f"{family}/{scenario}/{label}"
        results.append(
            Result(
                key,
                agg.n,
                int((cell["state"] == "failed").sum()),
                agg.median,
                agg.median_lo,
                agg.median_hi,
                [round(float(v), 4) for v in done["final_score"]],
                bands.get(key),
            )
        )
    return results


def print_table(results: list[Result]) -> None:
    header = f"{'cell':<42} {'n':>2}  {'median [95% CI]':<26} {'band':<16} status"
    print(header)
    print("-" * len(header))
    for r in results:
        ci = f"{r.median:7.3f} [{r.lo:7.3f}, {r.hi:7.3f}]" if r.n else "n/a"
        band = f"[{r.band['lower']:g}, {r.band['upper']:g}]" if r.band else "-"
        print(f"{r.key:<42} {r.n:>2}  {ci:<26} {band:<16} {r.status}")


def derive_bands(real: list[Result], weak: list[Result], manifest: Path, command: str) -> dict[str, Any]:
    """Lower edge halfway between the weakened learner's median and the real learner's worst seed
    (so a learner that stops learning falls below it, and normal seed noise does not); upper edge
    the best possible score when known from the task (win rates: 1), else the real best seed
    plus the real spread."""
    weak_by_key = {r.key: r for r in weak}
    bands = {}
    for r in real:
        if not r.n:
            continue
        w = weak_by_key.get(r.key)
        floor = w.median if w and w.n else min(r.values) - (max(r.values) - min(r.values)) - 1e-6
        lower = (floor + min(r.values)) / 2
        upper = max(r.values) + (max(r.values) - min(r.values))
        bands[r.key] = {
            "lower": round(float(lower), 4),
            "upper": round(float(upper), 4),
            "measured": r.values,
            "weakened_lr0": w.values if w else None,
        }
    return {
        "derived": {
            "manifest": str(manifest.relative_to(ROOT)),
            "command": command,
            "rule": "lower = (median of the lr=0 learner + worst seed of the real learner) / 2; "
            "upper = best seed + (best - worst seed)",
        },
        "bands": bands,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the CI regression suite and gate on its stored bands.")
    parser.add_argument("--manifest", type=Path, default=MANIFEST, help="regression manifest (default: %(default)s)")
    parser.add_argument("--bands", type=Path, default=BANDS, help="stored bands (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "ci", help="run store (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (default: %(default)s)")
    parser.add_argument(
        "--override",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="learner override for every algorithm, e.g. lr=0 (repeatable)",
    )
    parser.add_argument("--report", action="store_true", help="also render the suite's HTML/PDF report")
    parser.add_argument(
        "--derive", action="store_true", help="measure the real and the lr=0 learner and rewrite --bands from them"
    )
    parser.add_argument("--reps", type=int, default=REPS, help="bootstrap resamples (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        manifest = effective_manifest(args.manifest, dict(args.override), args.out)
        run_suite(manifest, args.out, args.workers, args.report)
        results = compare(args.out / suite_name(manifest), load_bands(args.bands), args.reps)
        if args.derive:
            weak_manifest = effective_manifest(args.manifest, {**dict(args.override), "lr": 0.0}, args.out / "weak")
            run_suite(weak_manifest, args.out / "weak", args.workers, False)
            weak = compare(args.out / "weak" / suite_name(weak_manifest), {}, args.reps)
            derived = derive_bands(
                results,
                weak,
                args.manifest.resolve(),
                " ".join(["python -m ci.check", *(sys.argv[1:] if argv is None else argv)]),
            )
            header = (
                "# Expected bands of the CI regression suite (ci/regression.yaml), written by\n"
                "# `python -m ci.check --derive` from measured runs: the real learners and the same\n"
                "# learners with lr = 0 (which cannot learn), on the manifest's seeds. `derived` gives\n"
                "# the rule; `measured` / `weakened_lr0` the final scores per seed (mean of the last 3\n"
                "# evaluations). The gate (ci/check.py): a cell regresses when the 95% bootstrap CI of\n"
                "# its median over seeds lies entirely below `lower`, or when one of its runs failed.\n"
            )
            args.bands.write_text(header + yaml.safe_dump(derived, sort_keys=False))
            results = compare(args.out / suite_name(manifest), load_bands(args.bands), args.reps)
            print(f"bands written to {args.bands}")
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"ci.check: {exc}", file=sys.stderr)
        return 2
    print_table(results)
    failed = [r for r in results if r.failed]
    if not results:
        print("ci.check: no runs were found", file=sys.stderr)
        return 2
    print(
        f"\nci.check: {len(failed)} regression(s) in {len(results)} cell(s)"
        if failed
        else f"\nci.check: all {len(results)} cell(s) within their bands"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
