"""Cross-play phase, driver side: every finished focal policy run against the co-players of its
scenario (the evaluation itself, the worker side, is suites/crossplay_worker.py).

BiDist's metric is generalisation to co-players never met in training (methods.md, "Melting Pot
evaluation"; docs/evaluation.md). After the training phase, for each finished focal run of a policy
learner (not a held-out run) the driver builds a *request*:

* the members of each co-player kind of the manifest's ``heldout.coplayers`` (suites/manifest.py):
  ``round_robin``, every focal policy run of the scenario's main comparison (group ``main``; an
  ablation variant is no co-player; those of the focal run's own algorithm listed with
  ``available`` None and skipped); ``heldout``, every held-out run at every fraction of
  ``heldout.checkpoints`` (``policy_at_<f>.pt``, ``policy.pt``); ``random``; ``self_play``. The
  lists are the manifest's runs, finished or not, so they are the same for every focal run;
* on Melting Pot, the listed Melting Pot scenarios of the run's substrate whose bots are installed
  where the jobs run (DeepMind's background bots are then the co-players);
* episodes per kind, focal slots, parallel copies, and the schedule seed, derived from the suite and
  the scenario, never from the focal run: with the member lists it fixes the partner schedule
  (marl/policy/crossplay.py ``partner_schedule``), identical for every method (common random numbers).

Each request runs as a ``crossplay`` job of the same backends as training (``python -m
suites.worker RUN_DIR --task crossplay --request JSON``), so it runs wherever training does (in the
Docker image, where the bots are). The job writes ``crossplay.json`` atomically into the focal run
dir, with the request and its hash, one evaluation per co-player kind, the score (mean over the
unseen kinds) and the generalisation gap: a rerun skips runs whose crossplay.json is done for the
same request, and re-evaluates when the population changed (a member finished, the manifest
changed). A failed evaluation is recorded in crossplay.json and retried on the next invocation; it
never stops the other runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from marl.policy.population import POLICY_FILE
from marl.run_io import atomic_write_json
from suites.backends.base import Backend
from suites.crossplay_worker import CROSSPLAY, FLOOR_DIR, FORMAT, request_hash
from suites.manifest import MAIN_GROUP, RunSpec, Suite, algorithm_kind, content_id

from suites.orchestrator import Outcome, PlanItem, Summary, run_jobs
from suites.progress import Progress
from suites.store import SPEC, SuiteStore, now, read_json_file

# Driver side ------------------------------------------------------------------------------------


@dataclass
class CrossplayPlan:
    jobs: list[tuple[RunSpec, dict[str, Any]]]  # (focal run, request) to evaluate
    up_to_date: list[RunSpec]
    waiting: list[tuple[RunSpec, str]]  # focal runs that cannot be evaluated yet, and why


def read_crossplay(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json_file(run_dir / CROSSPLAY)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_focal_policy_run(spec: RunSpec) -> bool:
    return not spec.is_heldout and not spec.unavailable and algorithm_kind(spec.algorithm)[0] == "policy"


FLOOR_GROUP = "floor"
FLOOR_LABEL = "uniform random (floor)"


def floor_spec(suite: Suite, focal: RunSpec) -> RunSpec:
    """The floor row of ``focal``'s scenario: a uniform-random focal player evaluated on the same
    partner schedule as every focal run (never trained; its dir is ``<suite>/floor/<id>``)."""
    from marl.policy.crossplay import FLOOR_FOCAL

    return RunSpec(
        suite=suite.name,
        paper=suite.paper,
        family=focal.family,
        scenario=focal.scenario,
        env_options=dict(focal.env_options),
        algorithm=FLOOR_FOCAL,
        label=FLOOR_LABEL,
        group=FLOOR_GROUP,
        overrides={},
        seed=0,
        budget={},
    )


def is_floor(spec: RunSpec) -> bool:
    return spec.group == FLOOR_GROUP


def evaluation_dir(store: SuiteStore, spec: RunSpec) -> Path:
    """Where ``spec``'s crossplay.json lies: its run dir, or the floor's dir."""
    return store.root / FLOOR_DIR / spec.id if is_floor(spec) else store.run_dir(spec.id)


def schedule_seed(suite: Suite, family: str, scenario: str) -> int:
    """The partner schedule's seed: the suite and the scenario, never the focal run (common random
    numbers: every method meets the same co-players in the same seats on the same env seeds)."""
    from marl.trainer import derive_seed

    return derive_seed(int(content_id({"suite": suite.name, "family": family, "scenario": scenario}), 16), 0xC0FFEE)


def coplayer_members(spec: RunSpec, suite: Suite, store: SuiteStore) -> dict[str, list[dict[str, Any]]]:
    """The members of each co-player kind the manifest asks for, the same lists for every focal run
    of the scenario (the schedule is built from them): round robin, every focal policy run of the
    scenario's main comparison (those of the focal run's own algorithm are listed, and skipped when
    it plays, with ``available`` None); held-out, every held-out run at every checkpoint fraction."""
    from marl.policy.population import policy_file

    assert suite.heldout is not None
    same = [r for r in suite.runs if (r.family, r.scenario) == (spec.family, spec.scenario)]

    def order(r: RunSpec) -> tuple[Any, ...]:
        return (r.algorithm, r.label, r.seed, r.id)

    def finished(r: RunSpec, file: str) -> bool:
        return store.inspect(r).kind == "done" and (store.run_dir(r.id) / file).is_file()

    out: dict[str, list[dict[str, Any]]] = {}
    for kind in suite.heldout.coplayers:
        if kind == "round_robin":
            focal = [r for r in same if is_focal_policy_run(r)]
            # The methods' main comparison only: an ablation variant (its own table group) is
            # evaluated like any focal run but is no co-player, or one method's variants would
            # fill the population (and it could not be complete before every ablation trained).
            compared = [r for r in focal if any(g == MAIN_GROUP for g, _ in r.memberships)]
            runs = sorted({r.id: r for r in compared or focal}.values(), key=order)
            out[kind] = [
                {
                    "run_id": r.id,
                    "algorithm": r.algorithm,
                    "label": r.label,
                    "seed": r.seed,
                    "fraction": 1.0,
                    "file": POLICY_FILE,
                    "available": None if r.algorithm == spec.algorithm else finished(r, POLICY_FILE),
                }
                for r in runs
            ]
        elif kind == "heldout":
            runs = sorted((r for r in same if r.is_heldout), key=order)
            out[kind] = [
                {
                    "run_id": r.id,
                    "algorithm": r.algorithm,
                    "label": r.label,
                    "seed": r.seed,
                    "fraction": f,
                    "file": policy_file(f),
                    "available": finished(r, policy_file(f)),
                }
                for r in runs
                for f in suite.heldout.checkpoints
            ]
        elif kind == "random":
            out[kind] = [{"name": "uniform_random", "available": True}]
        else:  # self_play
            out[kind] = [{"name": "self", "available": True}]
    return out


def build_request(spec: RunSpec, suite: Suite, store: SuiteStore) -> tuple[dict[str, Any], int]:
    """The request for one focal run and how many held-out runs its scenario has in the suite."""
    assert suite.heldout is not None
    members = [r for r in suite.runs if r.is_heldout and (r.family, r.scenario) == (spec.family, spec.scenario)]
    done = [m for m in members if store.inspect(m).kind == "done" and (store.run_dir(m.id) / POLICY_FILE).is_file()]
    bots = [b for b in suite.heldout.bot_scenarios if spec.family == "meltingpot" and b.substrate == spec.scenario]
    request = {
        "format": FORMAT,
        "focal": spec.id,
        "focal_algorithm": spec.algorithm,
        "coplayers": list(suite.heldout.coplayers),
        "members": coplayer_members(spec, suite, store),
        # The held-out runs whose final policy exists (what the report lists as the population).
        "population": [
            {"run_id": m.id, "algorithm": m.algorithm, "label": m.label, "seed": m.seed}
            for m in sorted(done, key=lambda m: (m.algorithm, m.label, m.seed, m.id))
        ],
        "population_expected": len(members),
        "episodes": suite.heldout.episodes or int(spec.budget["eval_episodes"]),
        "n_focal": suite.heldout.n_focal,
        "num_envs": suite.heldout.num_envs,
        "seed": schedule_seed(suite, spec.family, spec.scenario),
        "bot_scenarios": [b.name for b in bots if not b.unavailable],
        # Why the others are not evaluated (the gist: the full text, with what to do, is in --dry-run).
        "bot_scenarios_unavailable": {b.name: b.unavailable.split(": ")[0] for b in bots if b.unavailable},
    }
    return request, len(members)


def plan_crossplay(items: list[PlanItem], suite: Suite, store: SuiteStore) -> CrossplayPlan:
    """Which focal runs of ``items`` (the selection) need a cross-play evaluation now, and the
    floor row of each of their scenarios (a uniform-random focal player, same schedule)."""
    plan = CrossplayPlan([], [], [])
    if suite.heldout is None:
        return plan
    floors: dict[tuple[str, str], RunSpec] = {}
    for it in items:
        spec = it.spec
        if not is_focal_policy_run(spec) or store.inspect(spec).kind != "done":
            continue
        floors.setdefault((spec.family, spec.scenario), floor_spec(suite, spec))
        _plan_one(plan, spec, *build_request(spec, suite, store), store)
    for spec in floors.values():
        request, expected = build_request(spec, suite, store)
        # The floor is a row of the co-player table: the substrate's schedule only, no bot scenarios.
        request.update(bot_scenarios=[], bot_scenarios_unavailable={})
        _plan_one(plan, spec, request, expected, store)
    return plan


def _plan_one(plan: CrossplayPlan, spec: RunSpec, request: dict[str, Any], expected: int, store: SuiteStore) -> None:
    if "heldout" in request["coplayers"] and not request["population"] and not request["bot_scenarios"]:
        why = (
            f"none of the {expected} held-out run(s) of {spec.family}/{spec.scenario} has finished "
            f"(run them: --only group=heldout)"
            if expected
            else f"the suite has no held-out run on {spec.family}/{spec.scenario}"
        )
        plan.waiting.append((spec, why))
        return
    existing = read_crossplay(evaluation_dir(store, spec))
    if existing and existing.get("state") == "done" and existing.get("request_hash") == request_hash(request):
        plan.up_to_date.append(spec)
    else:
        plan.jobs.append((spec, request))


def describe_plan(plan: CrossplayPlan) -> str:
    floors = sum(is_floor(spec) for spec, _ in plan.jobs)
    return (
        f"cross-play: {len(plan.jobs) - floors} focal run(s)"
        + (f" and {floors} floor row(s)" if floors else "")
        + f" to evaluate, {len(plan.up_to_date)} up to date, {len(plan.waiting)} waiting for a held-out population"
    )


def execute_crossplay_phase(
    items: list[PlanItem],
    store: SuiteStore,
    backend: Backend,
    suite: Suite,
    provenance: dict[str, Any],
    retries: int = 2,
    threads: int | None = None,
    stream: TextIO | None = None,
) -> Summary:
    """Evaluate every focal run of ``items`` that needs it, through ``backend`` (the caller holds
    the store's lock). Outcomes: done / failed / skipped (up to date) / waiting / interrupted."""
    started = time.monotonic()
    plan = plan_crossplay(items, suite, store)
    summary = Summary(title="cross-play", noun="evaluations")
    summary.outcomes += [Outcome(spec, "skipped") for spec in plan.up_to_date]
    summary.outcomes += [Outcome(spec, "waiting", error=why) for spec, why in plan.waiting]
    if not plan.jobs:
        summary.elapsed = time.monotonic() - started
        return summary
    requests = {spec.id: request for spec, request in plan.jobs}
    specs = [spec for spec, _ in plan.jobs]
    totals = {spec.id: 1 + len(requests[spec.id]["bot_scenarios"]) for spec in specs}
    progress = Progress(
        specs, already_done=0, total_runs=len(specs), stream=stream, totals=totals, unit="eval", what="cross-play"
    )
    progress.line(describe_plan(plan))
    submitted: dict[str, int] = {}

    def prepare(spec: RunSpec) -> Path:
        submitted[spec.id] = submitted.get(spec.id, 0) + 1
        where = evaluation_dir(store, spec)
        if is_floor(spec) and not (where / SPEC).is_file():
            atomic_write_json(where / SPEC, spec.to_json())  # what the worker reads: scenario, options
        return where

    def on_failed(spec: RunSpec, error: str | None) -> None:
        record = read_crossplay(evaluation_dir(store, spec))
        if (
            not record
            or record.get("request_hash") != request_hash(requests[spec.id])
            or record.get("state") != "failed"
        ):
            # The worker died before recording its failure (killed, crashed): record it here.
            atomic_write_json(
                evaluation_dir(store, spec) / CROSSPLAY,
                {
                    "format": FORMAT,
                    "state": "failed",
                    "error": error,
                    "request": requests[spec.id],
                    "request_hash": request_hash(requests[spec.id]),
                    "finished_at": now(),
                    "evaluations": [],
                },
            )

    final, stopping = run_jobs(
        specs,
        backend,
        suite,
        provenance,
        retries,
        threads,
        progress,
        prepare=prepare,
        on_failed=on_failed,
        attempts=lambda spec: submitted.get(spec.id, 0),
        task="crossplay",
        requests=requests,
    )
    progress.close()
    summary.outcomes += [final[s.id] for s in specs if s.id in final]
    summary.interrupted = stopping and any(o.state in ("interrupted", "pending") for o in summary.outcomes)
    summary.elapsed = time.monotonic() - started
    return summary
