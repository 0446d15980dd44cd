"""Compact run records shipped with the repository: ``records/<kind>/<suite>/`` in the run-store layout.

A record is what a finished run leaves that is worth sharing (docs/run-store.md): spec.json,
status.json, provenance.json, metrics.csv and, where present, crossplay.json, plus the suite's
manifest.yaml; never checkpoints or replay. A policy learner's run also keeps its policy artifacts
(``policy.pt`` and the ``policy_at_<f>.pt`` snapshots: the actor's weights, about 0.2 MB on Melting
Pot's stag hunt): they are the co-players of the cross-play phase, which needs every member's policy
on the machine that evaluates. The report reads a record folder like any suite directory, so
``python reproduce.py --suite NAME --out records/reference --report-only`` renders it.

A campaign too long for one machine spans several: ``import`` copies a record folder's runs into a
run store (never over a run dir already there), where the orchestrator counts them as finished, so
the same suite command trains only what is missing and, once every member's policy is there, runs
the cross-play phase over the whole population; ``export`` then brings the new runs and every
crossplay.json back into the records.

Once a campaign's cross-play phase is complete, its policies have served their purpose and weigh
most of the folder: ``drop-policies`` removes them from the tree (never from git history) and writes
``policies.yaml`` beside the manifest with the commit that still holds them, which ``import`` and
the index report. It refuses while any focal run lacks a complete cross-play evaluation, unless
``--superseded WHY`` says the campaign is replaced and will not be cross-played, and always while
the policies are not committed (they would be lost).

``records/index.yaml`` lists each exported suite: its kind (``reference``: the papers' headline
comparisons at their budgets, seeds 0-4; ``tuning``: runs on seeds 100+ that chose a default), the
commits and machines its runs came from, the dates, and each run's final score.

    python -m suites.records export /path/to/out/ddn_tuning --kind tuning
    python -m suites.records import records/reference/bidist_stag_hunt --out /path/to/out
    python -m suites.records drop-policies records/reference/bidist_stag_hunt
    python -m suites.records drop-policies records/reference/bidist_stag_hunt --superseded "rerun at ..."
    python -m suites.records table reference_ddn     # every run: arm x seed, run id and final score
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from marl.policy.population import POLICY_FILE, POLICY_SNAPSHOT_GLOB
from marl.run_io import atomic_write_text
from reports.collect import FINAL_EVALS, index_entries, metric_for, unplayed_entries
from suites.crossplay_worker import BATCHES, CROSSPLAY, FLOOR_DIR
from suites.manifest import HELDOUT_GROUP

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDS = REPO_ROOT / "records"
KINDS = ("reference", "tuning")
COMPACT = ("spec.json", "status.json", "provenance.json", "metrics.csv", CROSSPLAY, BATCHES)
POLICY_ARTIFACTS = (POLICY_FILE, POLICY_SNAPSHOT_GLOB)
DROPPED = "policies.yaml"  # beside a record folder's manifest once its policies left the tree


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def final_score(metrics: Path, family: str, column: str | None = None) -> float | None:
    """Mean of the last FINAL_EVALS evaluations of the family's metric (docs/evaluation.md), or of
    ``column`` of metrics.csv. None where metrics.csv has no such values (a Melting Pot run's metric
    comes from its cross-play phase, not from metrics.csv)."""
    column = column or metric_for(family).column
    with open(metrics, newline="") as f:
        values = [float(row[column]) for row in csv.DictReader(f) if row.get(column) not in (None, "")]
    return round(sum(values[-FINAL_EVALS:]) / len(values[-FINAL_EVALS:]), 4) if values else None


def finished_runs(suite_dir: Path) -> list[Path]:
    """Run directories of ``suite_dir`` whose status is done and that have metrics."""
    out = []
    for run_dir in sorted((suite_dir / "runs").glob("*")):
        status = run_dir / "status.json"
        if status.is_file() and (run_dir / "metrics.csv").is_file() and _read_json(status).get("state") == "done":
            out.append(run_dir)
    return out


def record_files(run_dir: Path) -> list[Path]:
    """The files of ``run_dir`` that belong in its record: the compact files and policy artifacts."""
    files = [run_dir / name for name in COMPACT if (run_dir / name).is_file()]
    return files + sorted({p for pattern in POLICY_ARTIFACTS for p in run_dir.glob(pattern) if p.is_file()})


def run_entry(run_dir: Path) -> dict[str, Any]:
    spec, status = _read_json(run_dir / "spec.json"), _read_json(run_dir / "status.json")
    prov = _read_json(run_dir / "provenance.json") if (run_dir / "provenance.json").is_file() else {}
    return {
        "id": spec["id"],
        "label": spec.get("label"),
        "algorithm": spec["algorithm"],
        "scenario": f"{spec['family']}/{spec['scenario']}",
        "seed": spec["seed"],
        **({"group": spec["group"]} if spec.get("group") else {}),
        "env_steps": spec["budget"]["env_steps"],
        "final_score": final_score(run_dir / "metrics.csv", spec["family"]),
        **_final_test_return(run_dir, spec["family"]),
        "commit": (prov.get("git") or {}).get("commit"),
        "cpu": prov.get("cpu"),
        "finished_at": status.get("finished_at"),
    }


def _final_test_return(run_dir: Path, family: str) -> dict[str, float | None]:
    """Where the family's score comes from cross-play (Melting Pot), the index also gives the run's
    own test return (metrics.csv's learning curve, mean of its last FINAL_EVALS evaluations), so a
    record whose cross-play phase has not run yet is not blank."""
    metric = metric_for(family)
    if metric.source != "crossplay":
        return {}
    return {"final_test_return": final_score(run_dir / "metrics.csv", family, metric.curve_column)}


def export(suite_dir: Path, kind: str, records: Path = RECORDS) -> list[str]:
    """Copy the compact record of every finished run of ``suite_dir`` into
    ``records/<kind>/<suite>/`` (existing records of the same runs are replaced; others kept) and
    rewrite the index. Returns the exported run ids."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    suite_dir = Path(suite_dir)
    dest = records / kind / suite_dir.name
    exported = []
    for run_dir in finished_runs(suite_dir):
        target = dest / "runs" / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in record_files(run_dir):
            shutil.copyfile(path, target / path.name)
        exported.append(run_dir.name)
    # The cross-play table's floor rows (suites/crossplay_phase.py), once evaluated.
    for floor_dir in sorted((suite_dir / FLOOR_DIR).glob("*")):
        record = floor_dir / CROSSPLAY
        if not (floor_dir / "spec.json").is_file() or not record.is_file():
            continue
        if (_read_json(record) or {}).get("state") != "done":
            continue
        target = dest / FLOOR_DIR / floor_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("spec.json", CROSSPLAY, BATCHES):
            if (floor_dir / name).is_file():
                shutil.copyfile(floor_dir / name, target / name)
    if exported and (suite_dir / "manifest.yaml").is_file():
        shutil.copyfile(suite_dir / "manifest.yaml", dest / "manifest.yaml")
    write_index(records)
    return exported


def write_index(records: Path = RECORDS) -> dict[str, Any]:
    """records/index.yaml from the records on disk: per suite its kind, commits, CPUs, dates, runs."""
    suites = []
    for kind in KINDS:
        for suite_dir in sorted(p for p in (records / kind).glob("*") if p.is_dir()):
            runs = [run_entry(d) for d in sorted((suite_dir / "runs").glob("*")) if (d / "spec.json").is_file()]
            dates = sorted(r["finished_at"] for r in runs if r["finished_at"])
            dropped = yaml.safe_load((suite_dir / DROPPED).read_text()) if (suite_dir / DROPPED).is_file() else None
            suites.append(
                {
                    "suite": suite_dir.name,
                    "kind": kind,
                    "path": str(suite_dir.relative_to(records)),
                    "commits": sorted({r["commit"] for r in runs if r["commit"]}),
                    "cpus": sorted({r["cpu"] for r in runs if r["cpu"]}),
                    "first_finished": dates[0] if dates else None,
                    "last_finished": dates[-1] if dates else None,
                    "runs": [{k: v for k, v in r.items() if k not in ("commit", "cpu")} for r in runs],
                }
                | ({"policies_removed": dropped} if dropped else {})
            )
    index = {"format": 1, "suites": suites}
    records.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        records / "index.yaml",
        "# Written by `python -m suites.records`; do not edit by hand.\n"
        + yaml.safe_dump(index, sort_keys=False, width=120),
    )
    return index


def score_table(suite: dict[str, Any]) -> str:
    """One index entry's runs as a markdown table: a row per label (scenario-qualified when a suite
    has several), a column per seed, each cell the run id and its final score (or, for a Melting Pot
    run without cross-play, its own test return in brackets; "-" where no run finished)."""

    def score(run: dict[str, Any]) -> str:
        if run.get("final_score") is not None:
            return f"{run['final_score']:.3f}"
        if run.get("final_test_return") is not None:
            return f"({run['final_test_return']:.2f})"
        return "n/a"

    runs = suite["runs"]
    several = len({r["scenario"] for r in runs}) > 1
    rows: dict[str, dict[int, str]] = {}
    for run in runs:
        row = f"{run['label']} on {run['scenario']}" if several else run["label"]
        if run.get("group") == HELDOUT_GROUP:
            row += " (held-out population)"
        rows.setdefault(row, {})[run["seed"]] = f"{run['id']} {score(run)}"
    seeds = sorted({r["seed"] for r in runs})
    lines = ["| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(rows[row].get(s, "-") for s in seeds) + " |" for row in sorted(rows)]
    return "\n".join(lines)


def import_records(record_dir: Path, out: Path) -> tuple[list[str], list[str]]:
    """Copy the runs of the record folder ``record_dir`` (``records/<kind>/<suite>``) into the run
    store ``out/<suite>``, each through a temporary dir renamed into place (a kill leaves no half
    run dir). A run dir already in the store is never touched (it may hold a run in progress or a
    newer result). The floor rows' evaluations (``floor/<id>``) come along under the same rule, so a
    store resumed elsewhere does not evaluate them again. Returns (imported ids, ids kept as they were)."""
    record_dir = Path(record_dir)
    runs = finished_runs(record_dir)
    if not runs:
        raise ValueError(f"{record_dir} holds no finished run records (expected runs/<id>/status.json 'done')")
    dest = Path(out) / record_dir.name / "runs"
    dest.mkdir(parents=True, exist_ok=True)
    imported, kept = [], []
    for run_dir in runs:
        target = dest / run_dir.name
        if target.exists():
            kept.append(run_dir.name)
            continue
        staging = dest / f".import-{run_dir.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in record_files(run_dir):
            shutil.copyfile(path, staging / path.name)
        staging.rename(target)
        imported.append(run_dir.name)
    for floor_dir in sorted((record_dir / FLOOR_DIR).glob("*")):
        target = dest.parent / FLOOR_DIR / floor_dir.name
        if target.exists() or not (floor_dir / "spec.json").is_file():
            continue
        staging = target.parent / f".import-{floor_dir.name}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in sorted(p for p in floor_dir.iterdir() if p.is_file()):
            shutil.copyfile(path, staging / path.name)
        staging.rename(target)
    return imported, kept


def _crossplay_incomplete(run_dir: Path) -> str | None:
    """Why the focal run's cross-play evaluation is not final, or None when it is."""
    path = run_dir / CROSSPLAY
    if not path.is_file():
        return "no crossplay.json"
    result = _read_json(path)
    if result.get("state") != "done":
        return f"cross-play state {result.get('state')!r}"
    skipped = unplayed_entries(result)
    return f"{skipped} scheduled episodes skipped (co-players not finished)" if skipped else None


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def drop_policies(record_dir: Path, superseded: str | None = None) -> tuple[list[Path], str]:
    """Remove the policy artifacts of a record folder whose every focal run has a complete cross-play
    evaluation, or, with ``superseded`` (why), of a campaign that will not be cross-played (replaced
    by a rerun); they must be committed and unchanged, so the commit returned (HEAD) still holds
    them. Writes ``policies.yaml`` (that commit, how many files, how to restore them, why) and
    rewrites the index. Raises ValueError, touching nothing, when a condition fails."""
    record_dir = Path(record_dir).resolve()
    runs = finished_runs(record_dir)
    if not runs:
        raise ValueError(f"{record_dir} holds no finished run records (expected runs/<id>/status.json 'done')")
    if superseded is not None and not superseded.strip():
        raise ValueError("--superseded needs the reason (what replaces these runs), e.g. 'rerun with new networks'")
    focal = [d for d in runs if _read_json(d / "spec.json").get("group") != HELDOUT_GROUP]
    waiting = {} if superseded else {d.name: why for d in focal if (why := _crossplay_incomplete(d))}
    if waiting:
        listed = "; ".join(f"{k}: {v}" for k, v in sorted(waiting.items()))
        raise ValueError(
            f"{len(waiting)} focal run(s) have no complete cross-play evaluation ({listed}); run the suite's "
            "cross-play phase over the whole population and export again first (or, for a campaign that "
            "will not be cross-played, give --superseded 'why')"
        )
    files = sorted(p for d in runs for pattern in POLICY_ARTIFACTS for p in d.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"{record_dir} holds no policy artifacts")
    top = _git(record_dir, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise ValueError(f"{record_dir} is not inside a git work tree: its policies would be lost")
    repo = Path(top.stdout.strip())
    rel = [str(p.relative_to(repo)) for p in files]
    untracked = _git(repo, "ls-files", "--error-unmatch", "--", *rel)
    changed = _git(repo, "diff", "--quiet", "HEAD", "--", *rel)
    if untracked.returncode != 0 or changed.returncode != 0:
        raise ValueError("commit the policy artifacts first (some are untracked or changed): they would be lost")
    commit = _git(repo, "rev-parse", "HEAD").stdout.strip()
    folder = str(record_dir.relative_to(repo))
    for path in files:
        path.unlink()
    atomic_write_text(
        record_dir / DROPPED,
        yaml.safe_dump(
            {
                "commit": commit,
                "files": len(files),
                "restore": f"git checkout {commit} -- {folder}",
                "why": f"superseded: {superseded.strip()}"
                if superseded
                else "cross-play complete for every focal run; the policies are needed only to rerun it",
            },
            sort_keys=False,
            width=200,
        ),
    )
    write_index(record_dir.parent.parent)
    return files, commit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m suites.records", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="copy a suite's finished runs' compact records into records/")
    ex.add_argument("suite_dir", type=Path, help="a suite directory of a run store, e.g. results/ddn_smax")
    ex.add_argument("--kind", choices=KINDS, required=True)
    ex.add_argument("--records", type=Path, default=RECORDS, help="records folder (default: the repository's)")
    im = sub.add_parser("import", help="copy a record folder's runs into a run store (to resume a campaign there)")
    im.add_argument("record_dir", type=Path, help="a record folder, e.g. records/reference/bidist_stag_hunt")
    im.add_argument("--out", type=Path, required=True, help="the run store's root (reproduce.py --out)")
    dp = sub.add_parser("drop-policies", help="remove a record folder's policies once its cross-play is complete")
    dp.add_argument("record_dir", type=Path, help="a record folder, e.g. records/reference/bidist_stag_hunt")
    dp.add_argument(
        "--superseded",
        metavar="WHY",
        help="drop them although cross-play is incomplete: the campaign is replaced (say by what) and will not be cross-played",
    )
    sub.add_parser("index", help="rewrite records/index.yaml from the records on disk")
    tb = sub.add_parser("table", help="print a suite's runs as an arm x seed table of run ids and final scores")
    tb.add_argument("suite", help="a suite in records/index.yaml, e.g. reference_ddn")
    tb.add_argument("--records", type=Path, default=RECORDS, help="records folder (default: the repository's)")
    args = parser.parse_args(argv)
    if args.command == "table":
        entries = index_entries(args.records)
        found = [s for s in entries if s["suite"] == args.suite]
        if not found:
            names = ", ".join(s["suite"] for s in entries) or "none"
            print(
                f"records: no suite {args.suite!r} in {args.records / 'index.yaml'} (suites there: {names})",
                file=sys.stderr,
            )
            return 2
        for entry in found:
            print(
                f"{entry['kind']}/{entry['suite']} (commits {', '.join(c[:7] for c in entry['commits'])}; {', '.join(entry['cpus'])})"
            )
            print(score_table(entry))
        return 0
    if args.command == "drop-policies":
        try:
            files, commit = drop_policies(args.record_dir, args.superseded)
        except ValueError as exc:
            print(f"records: {exc}", file=sys.stderr)
            return 2
        print(
            f"records: removed {len(files)} policy file(s) of {args.record_dir.name}; commit {commit[:12]} "
            f"holds them (restore: git checkout {commit[:12]} -- {args.record_dir})"
        )
        return 0
    if args.command == "index":
        write_index()
        return 0
    if args.command == "import":
        try:
            imported, kept = import_records(args.record_dir, args.out)
        except ValueError as exc:
            print(f"records: {exc}", file=sys.stderr)
            return 2
        print(
            f"records: imported {len(imported)} run(s) of {args.record_dir.name} into "
            f"{args.out / args.record_dir.name}" + (f"; {len(kept)} already there, left as they were" if kept else "")
        )
        if (args.record_dir / DROPPED).is_file():
            dropped = yaml.safe_load((args.record_dir / DROPPED).read_text())
            print(
                f"records: these records hold no policies ({dropped.get('why')}); to rerun "
                f"cross-play, restore them first ({dropped.get('restore')}) and import into a store without these runs"
            )
        return 0
    if not (args.suite_dir / "runs").is_dir():
        print(f"records: {args.suite_dir} is not a suite directory (no runs/ inside)", file=sys.stderr)
        return 2
    ids = export(args.suite_dir, args.kind, args.records)
    print(
        f"records: exported {len(ids)} finished run(s) of {args.suite_dir.name} to "
        f"{args.records / args.kind / args.suite_dir.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
