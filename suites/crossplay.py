"""Cross-play phase: every finished focal policy run against the held-out co-players of its scenario.

BiDist's metric is generalisation to co-players never met in training (methods.md, "Melting Pot
evaluation"). After the training phase, for each finished focal run of a policy learner (not a
held-out run) the driver builds a *request*:

* the held-out population: the finished runs of the manifest's ``heldout`` section on the same
  scenario (other seeds, maybe other algorithms; never in any focal run's training), by run id;
* on Melting Pot, the listed Melting Pot scenarios of the run's substrate whose bots are installed
  where the jobs run (DeepMind's background bots are then the co-players);
* episodes, focal slots per episode and an evaluation seed derived from the run id.

Each request runs as a ``crossplay`` job of the same backends as training (``python -m
suites.worker RUN_DIR --task crossplay --request JSON``), so it runs wherever training does (in the
Docker image, where the bots are). The job writes ``crossplay.json`` atomically into the focal run
dir, with the request and its hash: a rerun skips runs whose crossplay.json is done for the same
request, and re-evaluates when the population changed (a held-out run finished, the manifest
changed). A failed evaluation is recorded in crossplay.json and retried on the next invocation;
it never stops the other runs.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping, TextIO

from marl.population import POLICY_FILE
from marl.run_io import atomic_write_json
from suites.backends import Backend
from suites.manifest import RunSpec, Suite, algorithm_kind, content_id
from suites.orchestrator import Outcome, PlanItem, Summary, run_jobs
from suites.progress import Progress
from suites.store import SPEC, SuiteStore, now, read_json_file
from suites.worker import EventSink, StopRequested, _lock_run_dir

CROSSPLAY = "crossplay.json"
FORMAT = 1
HELDOUT, BOTS = "heldout_population", "meltingpot_scenario"
POPULATION_KIND_BOTS = "DeepMind's Melting Pot scenario bots (background population of the asset bundle)"
# Request fields that define the evaluation (their hash decides whether crossplay.json is up to date).
HASHED = ("format", "focal", "population", "episodes", "n_focal", "seed", "bot_scenarios")


# Driver side ------------------------------------------------------------------------------------


@dataclass
class CrossplayPlan:
    jobs: list[tuple[RunSpec, dict[str, Any]]]  # (focal run, request) to evaluate
    up_to_date: list[RunSpec]
    waiting: list[tuple[RunSpec, str]]  # focal runs that cannot be evaluated yet, and why


def request_hash(request: Mapping[str, Any]) -> str:
    return content_id({k: request.get(k) for k in HASHED})


def read_crossplay(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json_file(run_dir / CROSSPLAY)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_focal_policy_run(spec: RunSpec) -> bool:
    return not spec.is_heldout and not spec.unavailable and algorithm_kind(spec.algorithm)[0] == "policy"


def build_request(spec: RunSpec, suite: Suite, store: SuiteStore) -> tuple[dict[str, Any], int]:
    """The request for one focal run and how many held-out runs its scenario has in the suite."""
    from marl.train import derive_seed

    assert suite.heldout is not None
    members = [r for r in suite.runs if r.is_heldout and (r.family, r.scenario) == (spec.family, spec.scenario)]
    done = [m for m in members if store.inspect(m).kind == "done" and (store.run_dir(m.id) / POLICY_FILE).is_file()]
    bots = [b for b in suite.heldout.bot_scenarios if spec.family == "meltingpot" and b.substrate == spec.scenario]
    request = {
        "format": FORMAT,
        "focal": spec.id,
        "population": [{"run_id": m.id, "algorithm": m.algorithm, "label": m.label, "seed": m.seed}
                       for m in sorted(done, key=lambda m: (m.algorithm, m.label, m.seed, m.id))],
        "population_expected": len(members),
        "episodes": suite.heldout.episodes or int(spec.budget["eval_episodes"]),
        "n_focal": suite.heldout.n_focal,
        "seed": derive_seed(int(spec.id, 16), 0xC0FFEE),
        "bot_scenarios": [b.name for b in bots if not b.unavailable],
        # Why the others are not evaluated (the gist: the full text, with what to do, is in --dry-run).
        "bot_scenarios_unavailable": {b.name: b.unavailable.split(": ")[0] for b in bots if b.unavailable},
    }
    return request, len(members)


def plan_crossplay(items: list[PlanItem], suite: Suite, store: SuiteStore) -> CrossplayPlan:
    """Which focal runs of ``items`` (the selection) need a cross-play evaluation now."""
    plan = CrossplayPlan([], [], [])
    if suite.heldout is None:
        return plan
    for it in items:
        spec = it.spec
        if not is_focal_policy_run(spec) or store.inspect(spec).kind != "done":
            continue
        request, expected = build_request(spec, suite, store)
        if not request["population"] and not request["bot_scenarios"]:
            why = (f"none of the {expected} held-out run(s) of {spec.family}/{spec.scenario} has finished "
                   f"(run them: --only group=heldout)" if expected else
                   f"the suite has no held-out run on {spec.family}/{spec.scenario}")
            plan.waiting.append((spec, why))
            continue
        existing = read_crossplay(store.run_dir(spec.id))
        if existing and existing.get("state") == "done" and existing.get("request_hash") == request_hash(request):
            plan.up_to_date.append(spec)
        else:
            plan.jobs.append((spec, request))
    return plan


def describe_plan(plan: CrossplayPlan) -> str:
    return (f"cross-play: {len(plan.jobs)} focal run(s) to evaluate, {len(plan.up_to_date)} up to date, "
            f"{len(plan.waiting)} waiting for a held-out population")


def execute_crossplay_phase(items: list[PlanItem], store: SuiteStore, backend: Backend, suite: Suite,
                            provenance: dict[str, Any], retries: int = 2, threads: int | None = None,
                            stream: TextIO | None = None) -> Summary:
    """Evaluate every focal run of ``items`` that needs it, through ``backend`` (the caller holds
    the store's lock). Outcomes: done / failed / skipped (up to date) / waiting / interrupted."""
    started = time.monotonic()
    plan = plan_crossplay(items, suite, store)
    summary = Summary(title="cross-play", noun="focal runs")
    summary.outcomes += [Outcome(spec, "skipped") for spec in plan.up_to_date]
    summary.outcomes += [Outcome(spec, "waiting", error=why) for spec, why in plan.waiting]
    if not plan.jobs:
        summary.elapsed = time.monotonic() - started
        return summary
    requests = {spec.id: request for spec, request in plan.jobs}
    specs = [spec for spec, _ in plan.jobs]
    totals = {spec.id: max(1, (1 if requests[spec.id]["population"] else 0) + len(requests[spec.id]["bot_scenarios"]))
              for spec in specs}
    progress = Progress(specs, already_done=0, total_runs=len(specs), stream=stream, totals=totals, unit="eval",
                        what="cross-play")
    progress.line(describe_plan(plan))
    submitted: dict[str, int] = {}

    def prepare(spec: RunSpec) -> Path:
        submitted[spec.id] = submitted.get(spec.id, 0) + 1
        return store.run_dir(spec.id)

    def on_failed(spec: RunSpec, error: str | None) -> None:
        record = read_crossplay(store.run_dir(spec.id))
        if not record or record.get("request_hash") != request_hash(requests[spec.id]) or record.get("state") != "failed":
            # The worker died before recording its failure (killed, crashed): record it here.
            atomic_write_json(store.run_dir(spec.id) / CROSSPLAY, {
                "format": FORMAT, "state": "failed", "error": error, "request": requests[spec.id],
                "request_hash": request_hash(requests[spec.id]), "finished_at": now(), "evaluations": []})

    final, stopping = run_jobs(specs, backend, suite, provenance, retries, threads, progress,
                               prepare=prepare, on_failed=on_failed, attempts=lambda spec: submitted.get(spec.id, 0),
                               task="crossplay", requests=requests)
    progress.close()
    summary.outcomes += [final[s.id] for s in specs if s.id in final]
    summary.interrupted = stopping and any(o.state in ("interrupted", "pending") for o in summary.outcomes)
    summary.elapsed = time.monotonic() - started
    return summary


# Worker side ------------------------------------------------------------------------------------


def evaluate_on_bot_scenario(focal_path: Path, scenario: str, env_options: Mapping[str, Any], episodes: int,
                             seed: int, num_envs: int, greedy: bool, device: str) -> dict[str, Any]:
    """The focal policy in every focal slot of a Melting Pot scenario (DeepMind's bots in the others):
    the scenario's agents are exactly its focal players, so their mean return is the focal per-capita
    return."""
    import envs
    from marl.crossplay import focal_return_summary
    from marl.policy_runner import SelfPlayPlayers, play_episodes
    from marl.population import load_policy

    # max_episode_frames shortens substrates only; a scenario keeps Melting Pot's episode rules.
    options = {k: v for k, v in env_options.items() if k != "max_episode_frames"}
    num_envs = max(1, min(num_envs, episodes))
    env = envs.make_env("meltingpot", scenario, num_envs=num_envs, seed=seed, device=device, **options)
    try:
        focal = load_policy(focal_path, device, expect=env.spec)
        # A scenario's agents are exactly its focal players: the focal policy holds every one.
        eps = play_episodes(env, SelfPlayPlayers(focal.actor), math.ceil(episodes / num_envs), seed, greedy, device)
        n_agents = env.spec.n_agents
    finally:
        env.close()
    return {
        **focal_return_summary(eps.returns.mean(-1)),  # every agent of a scenario is a focal player
        "n_focal": n_agents,
        "actions": "greedy" if greedy else "sampled",
        "population_kind": POPULATION_KIND_BOTS,
    }


def _acting(focal_path: Path) -> tuple[bool, int]:
    """(greedy, parallel copies) as the focal run's own test evaluation chose them."""
    import torch

    from marl.policy_train import greedy_eval

    blob = torch.load(focal_path, map_location="cpu", weights_only=False)
    cfg, spec = blob.get("config", {}), blob.get("spec", {})
    greedy = greedy_eval(SimpleNamespace(eval_actions=cfg.get("eval_actions", "auto")),
                         SimpleNamespace(has_won=bool(spec.get("has_won", False))))
    return greedy, int(cfg.get("eval_num_envs", 4))


def execute_crossplay(run_dir: Path, sink: EventSink, request: dict[str, Any], threads: int = 1,
                      device: str = "cpu") -> tuple[str, str | None]:
    """The ``crossplay`` task of suites/worker.py: evaluate, write crossplay.json, report events."""
    lock_fd = _lock_run_dir(run_dir)
    try:
        spec = read_json_file(run_dir / SPEC)
        run_id = spec["id"]
        if request.get("focal") != run_id:
            error = f"cross-play request for run {request.get('focal')!r} sent to run dir {run_id!r}"
            sink.emit({"event": "end", "run": run_id, "state": "failed", "error": error})
            return "failed", error
        sink.emit({"event": "start", "run": run_id, "attempt": 1, "pid": os.getpid()})
        try:
            record = _evaluate(run_dir, spec, sink, request, threads, device)
        except StopRequested:
            sink.emit({"event": "end", "run": run_id, "state": "interrupted", "error": None})
            return "interrupted", None
        except BaseException as exc:  # recorded; the driver decides on retries
            error = f"{type(exc).__name__}: {exc}"
            atomic_write_json(run_dir / CROSSPLAY, {
                "format": FORMAT, "state": "failed", "error": error, "traceback": traceback.format_exc(limit=-4),
                "request": request, "request_hash": request_hash(request), "finished_at": now(), "evaluations": []})
            sink.emit({"event": "end", "run": run_id, "state": "failed", "error": error})
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            return "failed", error
        atomic_write_json(run_dir / CROSSPLAY, record)
        sink.emit({"event": "end", "run": run_id, "state": record["state"], "error": record["error"]})
        return record["state"], record["error"]
    finally:
        os.close(lock_fd)


def _evaluate(run_dir: Path, spec: Mapping[str, Any], sink: EventSink, request: Mapping[str, Any], threads: int,
              device: str) -> dict[str, Any]:
    import torch

    from marl.crossplay import evaluate_crossplay

    torch.set_num_threads(max(1, threads))
    focal_path = run_dir / POLICY_FILE
    if not focal_path.is_file():
        raise FileNotFoundError(f"{focal_path} is missing: the run finished without its policy artifact")
    greedy, num_envs = _acting(focal_path)
    targets = ([(HELDOUT, spec["scenario"])] if request["population"] else []) + \
              [(BOTS, name) for name in request["bot_scenarios"]]
    evaluations: list[dict[str, Any]] = []
    for i, (kind, scenario) in enumerate(targets):
        if sink.should_stop():
            raise StopRequested
        seed = int(request["seed"]) + i
        entry: dict[str, Any] = {"kind": kind, "scenario": scenario}
        try:
            if kind == HELDOUT:
                members = [run_dir.parent / m["run_id"] / POLICY_FILE for m in request["population"]]
                result = evaluate_crossplay(focal_path, members, spec["family"], spec["scenario"], spec["env_options"],
                                            episodes=int(request["episodes"]), seed=seed, num_envs=num_envs,
                                            n_focal=request.get("n_focal"), greedy=greedy, device=device)
                # Members by run id (not by path: a docker job sees the run store under another root).
                for described, member in zip(result["population"], request["population"]):
                    described.update(member)
                    described.pop("path", None)
                result["focal"].pop("path", None)
            else:
                result = evaluate_on_bot_scenario(focal_path, scenario, spec["env_options"], int(request["episodes"]),
                                                  seed, num_envs, greedy, device)
            entry.update(state="done", **result)
        except StopRequested:
            raise
        except Exception as exc:  # one failing evaluation does not lose the others
            entry.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        evaluations.append(entry)
        sink.emit({"event": "progress", "run": spec["id"], "t": i + 1, "total": len(targets), "row": None})
    for name, reason in (request.get("bot_scenarios_unavailable") or {}).items():
        evaluations.append({"kind": BOTS, "scenario": name, "state": "unavailable", "reason": reason})
    failed = [e for e in evaluations if e["state"] == "failed"]
    headline = next((e for e in evaluations if e["kind"] == HELDOUT and e["state"] == "done"), None)
    return {
        "format": FORMAT,
        "state": "failed" if failed else "done",
        "error": "; ".join(f"{e['scenario']}: {e['error']}" for e in failed) or None,
        "focal_run": spec["id"],
        "request": dict(request),
        "request_hash": request_hash(request),
        "population": list(request["population"]),
        "population_expected": request.get("population_expected"),
        # The headline: the focal per-capita return against the suite's held-out population.
        "focal_per_capita_return": headline["focal_per_capita_return"] if headline else None,
        "population_kind": headline["population_kind"] if headline else (
            POPULATION_KIND_BOTS if any(e["kind"] == BOTS and e["state"] == "done" for e in evaluations) else None),
        "evaluations": evaluations,
        "host": socket.gethostname(),
        "finished_at": now(),
    }
