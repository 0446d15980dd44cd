"""Peak resident memory of one value run with its replay full, per paper-suite configuration.

Each case runs in a fresh child process (so the peak is that run's alone, not the test session's):
it builds the run's trainer as the suite does (learner config, environment), collects real
episodes until it has a few, fills the replay to its capacity with copies of them (the same bytes
a full replay holds: every row is padded to the episode limit), saving a checkpoint just before it
is full, marks every episode as lasting to the limit (the longest batches, as a run meets once its
policy survives: the update's activations at their largest), runs updates, saves a checkpoint
into a temporary run directory, and reports the kernel's high-water mark (VmHWM) at each stage:

* ``replay_gb``: the replay's storage (its compact dtypes), the figure suites/memory.py checks;
* ``peak_after_partial_checkpoint_gb``: after a checkpoint of a replay not yet full (a run's first
  checkpoints): its filled rows are written from the replay's own memory, not from a copy;
* ``rss_full_replay_gb``: resident memory once the replay is full (before any update);
* ``peak_after_updates_gb``: high-water mark after ``UPDATES`` updates (activations, allocator)
  and one greedy evaluation of the suite's ``eval_episodes`` (the test environment's copies, and
  DDN's teacher test);
* ``peak_after_checkpoint_gb``: after one checkpoint (a run's peak: checkpoints recur every
  ``checkpoint_interval`` env steps);
* ``base_gb``: the peak minus the replay: what suites/memory.py's ``BASE_BYTES`` stands for.

Maps this machine cannot hold a full replay of are not measured here; their replay size follows
from the config alone (suites/memory.py's ``replay_bytes``, on the meta device).

Run: ``.venv/bin/python -m pytest tests/benchmarks/test_bench_memory.py --benchmark-only``
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UPDATES = 5

# (algorithm, family, scenario, profile, eval episodes): the paper suites' value runs this
# machine can build.
CASES = [
    ("ddn", "smax", "3s_vs_5z", "pymarl2", 32),  # reference_ddn, ddn_tuning
    ("ddn", "smax", "3s_vs_5z", "pymarl", 32),  # ddn_smax (the paper's profile)
    ("ddn", "predator_prey", "stag_hunt", "pymarl", 16),  # ddn_predator_prey
    ("qmix", "predator_prey", "stag_hunt", "pymarl", 16),
]

CHILD = r"""
import json, sys, torch
from marl.trainer import Budget
from marl.value.trainer import ValueTrainer

def status_gb(field="VmHWM"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20

algorithm, family, scenario, profile, updates, eval_episodes, run_dir = sys.argv[1:8]
torch.set_num_threads(1)
trainer = ValueTrainer(algorithm, family, scenario, seed=0, run_dir=run_dir,
                       budget=Budget(env_steps=10**9, eval_episodes=int(eval_episodes)), overrides={"profile": profile})
buf = trainer.buffer
episodes = []
while sum(e.count for e in episodes) < 8:
    episodes.append(trainer.runner.collect(1, trainer.epsilon, 0))

def fill(size):
    while len(buf) < size:
        for e in episodes:
            buf.insert(e.data, e.lengths)

fill(buf.capacity - 8)
trainer._save_checkpoint()  # a checkpoint before the replay is full (its filled rows only)
partial_checkpoint = status_gb()
fill(buf.capacity)
# Every episode as long as the limit: the batches of a trained policy (which survives to the time
# limit), and the update's activations at their largest; the replay's bytes are the same.
buf.data["filled"][:] = True
buf.lengths[:] = buf.data["filled"].shape[1]
replay = sum(t.numel() * t.element_size() for t in buf.data.values()) / 2**30
full = status_gb("VmRSS")
for _ in range(int(updates)):
    trainer.learner.train_step(buf.sample(trainer.cfg.batch_size, trainer.generator), trainer.episode)
trainer.evaluation_metrics()
after_updates = status_gb()
trainer._save_checkpoint()
after_checkpoint = status_gb()
print(json.dumps({"replay_gb": replay, "peak_after_partial_checkpoint_gb": partial_checkpoint,
                  "rss_full_replay_gb": full, "peak_after_updates_gb": after_updates,
                  "peak_after_checkpoint_gb": after_checkpoint, "base_gb": after_checkpoint - replay}))
trainer.close()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
@pytest.mark.parametrize(
    "algorithm,family,scenario,profile,eval_episodes", CASES, ids=["-".join(map(str, c[:4])) for c in CASES]
)
def test_peak_memory_of_a_full_replay_run(benchmark, algorithm, family, scenario, profile, eval_episodes):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def child() -> dict:
        # The run's checkpoints (about 1 GB with the replay full) go to a directory removed here,
        # whether or not the child succeeds.
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as run_dir:
            args = [algorithm, family, scenario, profile, str(UPDATES), str(eval_episodes), run_dir]
            out = subprocess.run(
                [sys.executable, "-c", CHILD, *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(child, rounds=1, iterations=1)
    benchmark.extra_info.update(
        {
            "algorithm": algorithm,
            "family": family,
            "scenario": scenario,
            "profile": profile,
            "eval_episodes": eval_episodes,
        }
        | {k: round(v, 3) for k, v in result.items()}
    )
    print(f"\n{algorithm} {family}/{scenario} ({profile}): " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()))
