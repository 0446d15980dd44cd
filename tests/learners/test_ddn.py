"""DDN: fusion transform, distillation losses, gradient isolation, IDM masking and reward, learning."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from marl.config import ConfigError
from algorithms.ddn import (
    Config,
    PersonalizationFusion,
    RandomNetworkDistillation,
    idm_sample_mask,
    intrinsic_reward,
    masked_policy_kl,
    weighted_mse,
)
from envs import make_env
from marl.registry import get_algorithm
from marl.value.learner import previous_actions
from marl.trainer import Budget, train_run


# The seed's plain form of the teacher-student pair (the student acts; every entry of L_B, L_Q
# (MSE) and L_F is a target; the online teacher), which the tuning seeds replaced as the default.
SEED_FORM = {
    "acting": "student",
    "distill_q_loss": "mse",
    "distill_mask": "all",
    "distill_from": "online",
    "student_td_weight": 0.0,
}


@pytest.fixture(scope="module")
def spec():
    return make_env("predator_prey", "stag_hunt_small", num_envs=1).spec


def make_learner(spec, **overrides):
    alg = get_algorithm("ddn")
    torch.manual_seed(0)
    return alg.make_learner(alg.make_config(overrides), spec)


def random_batch(spec, C: int = 3, T: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Episodes of lengths T, T-1, ... (sorted longest first, as the buffer samples them)."""
    g = torch.Generator().manual_seed(seed)
    N, A = spec.n_agents, spec.n_actions
    lengths = torch.tensor([max(T - i, 1) for i in range(C)])
    filled = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    return {
        "obs": torch.rand(C, T + 1, N, *spec.obs_shape, generator=g),
        "state": torch.rand(C, T + 1, *spec.state_shape, generator=g),
        "avail_actions": torch.ones(C, T + 1, N, A, dtype=torch.bool),
        "actions": torch.randint(0, A, (C, T, N), generator=g),
        "reward": torch.randn(C, T, generator=g) * filled,
        "terminated": filled & (torch.arange(T).unsqueeze(0) == lengths.unsqueeze(1) - 1),
        "filled": filled,
    }


def test_registry_and_config_choices():
    alg = get_algorithm("ddn")
    assert alg.config_cls is Config and alg.kind == "value"
    cfg = alg.make_config({"profile": "pymarl2"})
    assert cfg.personalize and cfg.idm and cfg.distill_losses == ["B", "Q", "F"]
    assert (cfg.fusion_dim, cfg.idm_mask_prob, cfg.optimizer, cfg.batch_size) == (64, 0.75, "adam", 128)


def test_bad_ablation_values_are_rejected(spec):
    with pytest.raises(ValueError, match="distill_losses.*B, Q, F"):
        make_learner(spec, distill_losses=["B", "X"])
    with pytest.raises(ValueError, match="idm_mask_prob"):
        make_learner(spec, idm_mask_prob=1.5)
    with pytest.raises(ValueError, match="acting.*student, teacher, mixed"):
        make_learner(spec, acting="critic")


def test_fusion_equals_explicit_matrix_product():
    torch.manual_seed(0)
    fusion = PersonalizationFusion(local_dim=7, state_dim=5, out_dim=4, hyper_hidden=3)
    local = torch.randn(2, 6, 3, 7)  # [C, T, N, L]
    state = torch.randn(2, 6, 5)
    W, B = fusion.matrices(local)  # [C, T, N, S, d], [C, T, N, d]
    assert W.shape == (2, 6, 3, 5, 4)
    explicit = torch.einsum("cts,ctnsd->ctnd", state, W) + B
    assert torch.allclose(fusion(local, state), explicit, atol=1e-5)
    # Hand check of one entry: sum_s S_s W[s, k] + B[k].
    c, t, n, k = 1, 2, 0, 3
    manual = sum(float(state[c, t, s]) * float(W[c, t, n, s, k].detach()) for s in range(5)) + float(
        B[c, t, n, k].detach()
    )
    assert float(fusion(local, state)[c, t, n, k].detach()) == pytest.approx(manual, abs=1e-5)
    # W depends on the agent's local inputs: two agents at the same step get different matrices.
    assert not torch.allclose(W[0, 0, 0], W[0, 0, 1])


def test_weighted_mse_hand_values():
    student = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]]])  # [C=1, T=2, N=1, F=2]
    teacher = torch.tensor([[[[0.0, 0.0]], [[5.0, 5.0]]]])
    weight = torch.tensor([[[1.0], [0.0]]])  # second step is padding
    assert float(weighted_mse(student, teacher, weight)) == pytest.approx((1 + 4) / 2)


def dense_outputs(learner, agent, batch, obs):
    """The agent over whole padded episodes on the dense path (no packing): an independent
    reference for the learner's packed computation. Returns q, hidden, embedding [C, T+1, N, *]."""
    C, T1, N = obs.shape[:3]
    inputs = learner.controller.inputs(obs.reshape(C, T1, N, -1), previous_actions(batch["actions"]))
    out = agent(inputs.transpose(0, 1).reshape(T1, C * N, -1))
    return dict(zip(("q", "hidden", "embedding"), (x.view(T1, C, N, -1).transpose(0, 1) for x in out)))


@torch.no_grad()
def dense_student_and_teacher(learner, batch):
    """Student and teacher outputs computed independently of the learner's training path: dense
    agents, and the fusion Ŝ = S W + B with W materialized."""
    C, T1, N = batch["obs"].shape[:3]
    student = dense_outputs(learner, learner.student, batch, batch["obs"])
    local = learner.controller.inputs(batch["obs"].reshape(C, T1, N, -1), previous_actions(batch["actions"]))
    W, B = learner.fusion.matrices(local)
    fused = torch.einsum("cts,ctnsd->ctnd", batch["state"], W) + B
    teacher = dense_outputs(learner, learner.agent, batch, torch.cat([fused, batch["obs"]], -1))
    return student, teacher


def test_policy_kl_hand_values_and_unavailable_actions():
    import math

    def kl_two_actions(gap: float) -> float:  # KL(softmax(gap, 0) || uniform)
        p = math.exp(gap) / (math.exp(gap) + 1)
        return p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)

    # Teacher Q (1, 0, 5), student Q (0, 0, -3); the third action is unavailable, so it is ignored.
    teacher, student = torch.tensor([[[[1.0, 0.0, 5.0]]]]), torch.tensor([[[[0.0, 0.0, -3.0]]]])
    avail = torch.tensor([[[[True, True, False]]]])
    one = torch.ones(1, 1)
    assert float(masked_policy_kl(student, teacher, avail, one, 1.0)) == pytest.approx(kl_two_actions(1.0), rel=1e-6)
    assert float(masked_policy_kl(student, teacher, avail, one, 0.5)) == pytest.approx(kl_two_actions(2.0), rel=1e-6)
    # A shift of all Q-values leaves the policy, hence the loss, unchanged.
    assert float(masked_policy_kl(teacher + 2.0, teacher, avail, one, 1.0)) == pytest.approx(0.0, abs=1e-6)
    # A padded second step (mask 0) does not count.
    two_t, two_s = torch.cat([teacher, teacher * 7], 1), torch.cat([student, student - 4], 1)
    assert float(
        masked_policy_kl(two_s, two_t, avail.expand(1, 2, 1, 3), torch.tensor([[1.0, 0.0]]), 1.0)
    ) == pytest.approx(kl_two_actions(1.0), rel=1e-6)


def test_kl_form_of_the_q_distillation_is_the_learners_l_q(spec):
    learner = make_learner(spec, idm=False, distill_losses=["Q"], distill_q_loss="kl", distill_temperature=0.2)
    batch = random_batch(spec)
    loss, stats = learner.compute_loss(batch)
    student, teacher = dense_student_and_teacher(learner, batch)
    expected = masked_policy_kl(
        student["q"][:, :-1], teacher["q"][:, :-1], batch["avail_actions"][:, :-1], batch["filled"].float(), 0.2
    )
    assert stats["distill_Q"] == pytest.approx(float(expected), rel=1e-4)
    with pytest.raises(ValueError, match="distill_q_loss.*mse, centred_mse, kl"):
        make_learner(spec, distill_q_loss="huber")
    with pytest.raises(ValueError, match="distill_temperature"):
        make_learner(spec, distill_q_loss="kl", distill_temperature=0.0)


def test_distillation_losses_match_hand_computation(spec):
    learner = make_learner(spec, idm=False, **SEED_FORM)
    batch = random_batch(spec)
    _, stats = learner.compute_loss(batch)
    N = batch["obs"].shape[2]
    student, teacher = dense_student_and_teacher(learner, batch)
    m = batch["filled"].float()
    for name, field in (("B", "embedding"), ("Q", "q"), ("F", "hidden")):
        s, t = student[field][:, :-1], teacher[field][:, :-1]
        expected = (((s - t) ** 2).mean(-1) * m.unsqueeze(-1)).sum() / (m.sum() * N)
        assert stats[f"distill_{name}"] == pytest.approx(float(expected), rel=1e-4)


def grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("overrides", [{}, SEED_FORM], ids=["default", "seed_form"])
def test_distillation_sends_no_gradient_into_the_teacher(spec, overrides):
    batch = with_dead_agent(spec, random_batch(spec))
    full = make_learner(spec, idm=False, **overrides)
    plain = copy.deepcopy(full)
    plain.cfg = dataclasses.replace(full.cfg, distill_losses=[], student_td_weight=0.0)
    full.compute_loss(batch)[0].backward()
    plain.compute_loss(batch)[0].backward()
    # Teacher (fusion, agent, mixer) gradients are identical with and without the student's
    # losses (distillation, and the student's TD term where it is on) ...
    for a, b in ((full.agent, plain.agent), (full.fusion, plain.fusion), (full.mixer, plain.mixer)):
        for ga, gb in zip(grads(a), grads(b)):
            assert ga is not None and torch.allclose(ga, gb, atol=1e-6)
    # ... while the student is trained only by them.
    assert all(g is not None and g.abs().sum() > 0 for g in grads(full.student))
    assert all(g is None or g.abs().sum() == 0 for g in grads(plain.student))


def test_only_listed_distillation_losses_are_used(spec):
    learner = make_learner(spec, idm=False, distill_losses=["B"])
    _, stats = learner.compute_loss(random_batch(spec))
    assert "distill_B" in stats and "distill_Q" not in stats and "distill_F" not in stats


def test_l_b_alone_trains_only_the_students_first_layer(spec):
    # The report's ablation caption says so: L_B aligns the first layer's embedding, so the GRU and
    # the Q head get no gradient and the single-level student's greedy policy stays at its init.
    learner = make_learner(spec, idm=False, distill_losses=["B"])
    learner.compute_loss(random_batch(spec))[0].backward()
    first = {id(p) for p in learner.student.fc1.parameters()}
    for name, p in learner.student.named_parameters():
        trained = p.grad is not None and p.grad.abs().sum() > 0
        assert trained == (id(p) in first), name


def test_idm_mask_keeps_each_real_sample_with_probability_mu():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(400, 500, generator=g) < 0.8
    for mu in (0.1, 0.75):
        keep = idm_sample_mask(real, mu, generator=g)
        assert not (keep & ~real).any()  # padding never enters the loss
        frac = float(keep.sum() / real.sum())
        assert abs(frac - mu) < 0.005  # 160k Bernoulli draws: std ~0.001


def test_intrinsic_reward_formula_and_predictor_training(spec):
    learner = make_learner(spec, idm_scale=0.5, idm_mask_prob=1.0, distill_losses=[])
    batch = random_batch(spec)
    _, stats = learner.compute_loss(batch)
    rnd: RandomNetworkDistillation = learner.rnd
    filled = batch["filled"]
    with torch.no_grad():
        nxt = batch["state"][:, 1:]  # r_I rewards the state the transition reaches, s_{t+1}
        err = ((rnd.predictor(nxt) - rnd.target(nxt)) ** 2).mean(-1)
    expected = 0.5 * err[filled].mean()
    assert stats["intrinsic_reward_mean"] == pytest.approx(float(expected), rel=1e-5)
    assert stats["idm_loss"] == pytest.approx(float(err[filled].mean()), rel=1e-5)  # mu = 1: every sample
    assert torch.equal(intrinsic_reward(torch.tensor([2.0, 4.0]), 0.25), torch.tensor([0.5, 1.0]))

    # r_I enters the teacher's TD target: the target mean moves by exactly the intrinsic reward for
    # terminal one-step episodes.
    no_idm = make_learner(spec, idm=False, distill_losses=[])
    no_idm.agent.load_state_dict(learner.agent.state_dict())
    no_idm.mixer.load_state_dict(learner.mixer.state_dict())
    one_step = {k: v[:, :2] if k in ("obs", "state", "avail_actions") else v[:, :1] for k, v in batch.items()}
    one_step["terminated"] = torch.ones_like(one_step["terminated"])
    with_r = learner.compute_loss(one_step)[1]
    without = no_idm.compute_loss(one_step)[1]
    assert with_r["target_mean"] - without["target_mean"] == pytest.approx(with_r["intrinsic_reward_mean"], rel=1e-4)

    # Training moves the predictor and leaves the random target fixed.
    target_before = copy.deepcopy(rnd.target.state_dict())
    pred_before = copy.deepcopy(rnd.predictor.state_dict())
    learner.train_step(batch, episode=0)
    assert all(torch.equal(v, rnd.target.state_dict()[k]) for k, v in target_before.items())
    assert any(not torch.equal(v, rnd.predictor.state_dict()[k]) for k, v in pred_before.items())


def test_idm_mask_prob_zero_gives_the_predictor_no_gradient(spec):
    learner = make_learner(spec, idm_mask_prob=0.0, distill_losses=[])
    learner.compute_loss(random_batch(spec))[0].backward()
    assert all(g is None or g.abs().sum() == 0 for g in grads(learner.rnd.predictor))


def test_raw_state_ablation_builds_and_acts_with_the_student(spec):
    learner = make_learner(spec, personalize=False)
    assert learner.fusion is None
    assert learner.agent.fc1.in_features == spec.state_shape[0] + spec.obs_shape[0] + spec.n_actions + spec.n_agents
    assert learner.controller.agent is learner.student
    loss, _ = learner.compute_loss(random_batch(spec))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("personalize", [True, False])
def test_acting_teacher_uses_the_training_path_inputs_and_the_student_is_still_evaluated(spec, personalize):
    """With ``acting: teacher`` the behaviour policy is the teacher on the personalized state: its
    one-step Q-values equal the training computation's at t = 0; evaluation keeps the student."""
    from algorithms.ddn import TeacherController
    from marl.value.learner import active_rows, observed

    learner = make_learner(spec, acting="teacher", personalize=personalize)
    assert isinstance(learner.behaviour_controller, TeacherController)
    assert learner.controller.agent is learner.student and learner.behaviour_controller.agent is learner.agent
    student_acts = make_learner(spec, acting="student")
    assert student_acts.behaviour_controller is student_acts.controller

    batch = random_batch(spec, C=2, T=3)
    C, T1, N = batch["obs"].shape[:3]
    local = learner.controller.inputs(
        batch["obs"].reshape(C, T1, N, -1).transpose(0, 1), previous_actions(batch["actions"]).transpose(0, 1)
    )
    state_tm = batch["state"].reshape(C, T1, -1).transpose(0, 1)
    inputs = learner.teacher_inputs(learner.fusion, local, state_tm, observed(batch["filled"]).t())
    expected = learner.run_agent(learner.agent, inputs, active_rows(batch["filled"], N)).q[:, 0]  # [C, N, A]

    controller = learner.behaviour_controller
    with torch.no_grad():
        step_inputs = controller.step_inputs(batch["obs"][:, 0], torch.full((C, N), -1), batch["state"][:, 0])
        q = learner.agent(step_inputs.reshape(1, C * N, -1), torch.zeros(C * N, learner.agent.hidden_dim)).q
    assert torch.allclose(q.view(C, N, -1), expected, atol=1e-5)
    actions, hidden = controller.act(
        batch["obs"][:, 0],
        batch["avail_actions"][:, 0],
        torch.full((C, N), -1),
        controller.init_hidden(C, torch.device("cpu")),
        0.0,
        torch.Generator(),
        state=batch["state"][:, 0],
    )
    assert torch.equal(actions, expected.argmax(-1)) and hidden.shape == (C * N, learner.agent.hidden_dim)
    with pytest.raises(ValueError, match="global state"):
        controller.act(
            batch["obs"][:, 0],
            batch["avail_actions"][:, 0],
            torch.full((C, N), -1),
            controller.init_hidden(C, torch.device("cpu")),
            0.0,
            torch.Generator(),
        )


# Learning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddn_student_learns_small_stag_hunt():
    """The student (the evaluated, decentralized network) learns to catch the stag in the 5x5,
    2-agent task, at DDN's defaults (teacher and student each collect half the episodes).
    Uniformly random play returns ~0.09 per episode (a +10 capture in ~1% of episodes); with this
    seed the greedy student is at 1.25 / 2.50 / 4.06 / 4.69 at 25k / 50k / 75k / 100k steps and the
    training episodes at 5.0 (at 60k the greedy student is still unsteady: 0.0-1.6)."""
    rows = train_run(
        "ddn",
        "predator_prey",
        "stag_hunt_small",
        seed=0,
        budget=Budget(env_steps=100_000, eval_interval=25_000, eval_episodes=32),
        overrides={"num_envs": 8, "batch_size": 32, "epsilon_anneal_time": 20_000, "optimizer": "adam", "lr": 1e-3},
    )
    assert rows[-1]["test_return_mean"] >= 1.5  # greedy student: >15x random
    assert rows[-1]["train_return_mean"] >= 1.0  # epsilon-greedy training episodes: >10x random


# Options of the teacher-student pair and their instruments (issue: DDN that holds its win rate) --


def test_live_agents_and_q_regression_forms_hand_values():
    from algorithms.ddn import live_agents, q_distill_mse

    avail = torch.tensor([[[[True, True, False], [True, False, False]]]])  # [1, 1, N=2, A=3]; agent 1 dead
    assert live_agents(avail).tolist() == [[[True, False]]]
    student = torch.tensor([[[[1.0, 3.0, 9.0], [0.0, 0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]]]])
    every = torch.ones(1, 1, 2)
    # All actions, all agents: agent 0 (1 + 9 + 81) / 3, agent 1 (4 + 16 + 36) / 3.
    assert float(q_distill_mse(student, teacher, None, every)) == pytest.approx(((91 / 3) + (56 / 3)) / 2)
    # Available actions only: agent 0 (1 + 9) / 2, agent 1 (4) / 1; live agents only: agent 0.
    assert float(q_distill_mse(student, teacher, avail, every)) == pytest.approx((5 + 4) / 2)
    live = live_agents(avail).float()
    assert float(q_distill_mse(student, teacher, avail, live)) == pytest.approx(5.0)
    # Centred: agent 0 student (1, 3) -> (-1, 1), teacher (0, 0): 1; agent 1 has one action: 0.
    assert float(q_distill_mse(student, teacher, avail, every, centred=True)) == pytest.approx(0.5)
    # Centring makes the loss blind to a per-agent shift of the values and to unavailable actions.
    shifted = teacher + torch.tensor([5.0, -3.0]).view(1, 1, 2, 1)
    shifted[..., 2] = 100.0
    assert float(q_distill_mse(teacher, shifted, avail, every, centred=True)) == pytest.approx(0.0, abs=1e-6)


def test_student_lr_scale_scales_only_the_students_first_adam_step(spec):
    """Adam's first step is lr * g / (|g| + eps) per entry: with the student's rate scaled, the
    student moves by exactly that fraction of the unscaled step and every other network as before;
    at 1.0 the optimizer keeps one parameter group (PyMARL's, and every earlier run's)."""
    batch = random_batch(spec, C=3, T=4)
    moved = {}
    for scale in (1.0, 0.25):
        learner = make_learner(spec, student_lr_scale=scale, grad_norm_clip=1e9)
        before = {name: [p.detach().clone() for p in ps] for name, ps in learner.param_groups().items()}
        learner.train_step(batch, episode=0)
        moved[scale] = {
            name: [p.detach() - b for p, b in zip(ps, before[name])] for name, ps in learner.param_groups().items()
        }
        assert len(learner.optimizer.param_groups) == (1 if scale == 1.0 else 2)
    for name in moved[1.0]:
        factor = 0.25 if name == "student" else 1.0
        for full, scaled in zip(moved[1.0][name], moved[0.25][name]):
            assert torch.allclose(scaled, factor * full, rtol=1e-3, atol=1e-7), name  # p - p0 in float32
    assert any(float(d.abs().max()) > 0 for d in moved[1.0]["student"])
    with pytest.raises(ConfigError):
        make_learner(spec, student_lr_scale=0.0)


def test_embedding_rms_hand_values():
    from algorithms.ddn import TeacherStudentStats

    x = torch.zeros(1, 3, 2, 2)  # [C=1, T+1=3, N=2, D=2]
    x[0, 0] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    x[0, 1] = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    x[0, 2] = 100.0  # outside the episode: never counted
    where = torch.tensor([[True, True, False]])
    assert TeacherStudentStats.rms(x, where) == pytest.approx(((4 + 9 + 1) / 8) ** 0.5)
    assert math.isnan(TeacherStudentStats.rms(x, torch.zeros(1, 3, dtype=torch.bool)))
    assert TeacherStudentStats.rms_all(torch.tensor([[3.0, 4.0]])) == pytest.approx((25 / 2) ** 0.5)
    assert math.isnan(TeacherStudentStats.rms_all(torch.zeros(0, 4)))


def test_greedy_agreement_and_realised_returns_hand_values():
    from algorithms.ddn import TeacherStudentStats, discounted_returns

    avail = torch.tensor(
        [[[[True, True, True], [True, False, False]], [[True, True, False], [True, True, True]]]]
    )  # [1, T=2, N=2, A=3]
    student = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], [[5.0, 0.0, 9.0], [1.0, 0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]]])
    # Live agent-steps: (t0, a0) agree; (t1, a0) student 0 (9 is unavailable) vs teacher 1; (t1, a1) agree.
    mask = torch.ones(1, 2)
    assert TeacherStudentStats.greedy_agreement(student, teacher, avail, mask) == pytest.approx(2 / 3)
    assert TeacherStudentStats.greedy_agreement(student, teacher, avail, torch.tensor([[1.0, 0.0]])) == 1.0

    reward = torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0]])
    filled = torch.tensor([[True, True, False], [True, True, True]])
    terminated = torch.tensor([[False, True, False], [False, False, False]])  # row 1 cut by the time limit
    bootstrap = torch.tensor([[0.0, 0.0, 7.0, 0.0], [0.0, 0.0, 0.0, 10.0]])
    g = discounted_returns(reward, terminated, filled, bootstrap, gamma=0.5)
    assert g[0, :2].tolist() == pytest.approx([1 + 0.5 * 2, 2])  # terminal: no bootstrap
    assert g[1].tolist() == pytest.approx([1 + 0.5 + 0.25 + 0.125 * 10, 1 + 0.5 + 0.25 * 10, 1 + 0.5 * 10])


def dense_teacher(learner, batch, agent, fusion):
    """The teacher network ``agent`` with fusion block ``fusion`` on the dense path (W materialized)."""
    C, T1, N = batch["obs"].shape[:3]
    local = learner.controller.inputs(batch["obs"].reshape(C, T1, N, -1), previous_actions(batch["actions"]))
    W, B = fusion.matrices(local)
    fused = torch.einsum("cts,ctnsd->ctnd", batch["state"], W) + B
    return dense_outputs(learner, agent, batch, torch.cat([fused, batch["obs"]], -1))


def with_dead_agent(spec, batch):
    """Agent 1 has only the first action available at every step (a dead unit)."""
    avail = batch["avail_actions"].clone()
    avail[:, :, 1] = False
    avail[:, :, 1, 0] = True
    return {**batch, "avail_actions": avail}


def live_masked_case(spec, **overrides):
    """A live-masked learner whose online and target teachers differ, its losses on a batch with
    a dead agent (agent 1), and the dense student and source teacher (the one ``distill_from``
    names) of agent 0, the only live agent, over the real steps; ``m`` the real-step mask [C, T]."""
    learner = make_learner(spec, idm=False, **overrides)
    with torch.no_grad():  # make online and target teachers differ
        for p in learner.agent.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batch = with_dead_agent(spec, random_batch(spec))
    _, stats = learner.compute_loss(batch)
    with torch.no_grad():
        student = dense_outputs(learner, learner.student, batch, batch["obs"])
        if learner.cfg.distill_from == "target":
            teacher = dense_teacher(learner, batch, learner.target_agent, learner.target_fusion)
        else:
            teacher = dense_teacher(learner, batch, learner.agent, learner.fusion)
    live = {key: (student[key][:, :-1, 0], teacher[key][:, :-1, 0]) for key in ("embedding", "hidden", "q")}
    return learner, batch, stats, live, batch["filled"].float()


def assert_feature_terms_on_the_live_agent(stats, live, m):
    for name, key in (("B", "embedding"), ("F", "hidden")):
        s, t = live[key]
        per_step = ((s - t) ** 2).mean(-1)
        assert stats[f"distill_{name}"] == pytest.approx(float((per_step * m).sum() / m.sum()), rel=1e-4)


@pytest.mark.parametrize("distill_from", ["online", "target"])
def test_live_masked_distillation_from_either_teacher_matches_hand_computation(spec, distill_from):
    _, batch, stats, live, m = live_masked_case(
        spec, distill_mask="live", distill_q_loss="mse", distill_from=distill_from
    )
    assert_feature_terms_on_the_live_agent(stats, live, m)
    avail0 = batch["avail_actions"][:, :-1, 0].float()
    s, t = live["q"]
    per_step = ((s - t) ** 2 * avail0).sum(-1) / avail0.sum(-1)
    assert stats["distill_Q"] == pytest.approx(float((per_step * m).sum() / m.sum()), rel=1e-4)


def test_default_distillation_matches_hand_computation(spec):
    """At the defaults (chosen on the tuning seeds: teacher and student each act in half the
    episodes, L_Q as the policy KL, live agents only, from the target teacher) each distillation
    term is its hand-computed value against a dense, independently computed target teacher; a
    dead agent contributes nothing."""
    cfg = Config()
    assert (cfg.acting, cfg.distill_q_loss, cfg.distill_mask, cfg.distill_from) == ("mixed", "kl", "live", "target")
    assert cfg.acting_teacher_prob == 0.5
    _, batch, stats, live, m = live_masked_case(spec)
    assert_feature_terms_on_the_live_agent(stats, live, m)
    # L_Q: KL(softmax(Q_T / tau) || softmax(Q_S / tau)) of agent 0 over its available actions.
    tau, avail0 = cfg.distill_temperature, batch["avail_actions"][:, :-1, 0]
    s, t = live["q"]
    log_t = (t / tau).masked_fill(~avail0, -float("inf")).log_softmax(-1)
    log_s = (s / tau).masked_fill(~avail0, -float("inf")).log_softmax(-1)
    kl = torch.where(avail0, log_t.exp() * (log_t - log_s), torch.zeros_like(log_t)).sum(-1)
    assert stats["distill_Q"] == pytest.approx(float((kl * m).sum() / m.sum()), rel=1e-4)


def test_centred_q_distillation_is_the_learners_l_q(spec):
    from algorithms.ddn import q_distill_mse

    learner = make_learner(
        spec, idm=False, distill_losses=["Q"], distill_q_loss="centred_mse", distill_mask="all", distill_from="online"
    )
    batch = with_dead_agent(spec, random_batch(spec))
    _, stats = learner.compute_loss(batch)
    student, teacher = dense_student_and_teacher(learner, batch)
    weight = batch["filled"].float().unsqueeze(-1).expand(-1, -1, spec.n_agents)
    expected = q_distill_mse(student["q"][:, :-1], teacher["q"][:, :-1], batch["avail_actions"][:, :-1], weight, True)
    assert stats["distill_Q"] == pytest.approx(float(expected), rel=1e-4)


def test_student_td_term_trains_only_the_student_on_the_teachers_target(spec):
    from algorithms.ddn import student_td
    from marl.value.learner import mix_where

    batch = random_batch(spec)
    base = make_learner(spec, idm=False, distill_losses=[], student_td_weight=0.0)
    with_td = copy.deepcopy(base)
    with_td.cfg = dataclasses.replace(base.cfg, student_td_weight=0.5)
    loss0, stats0 = base.compute_loss(batch)
    loss1, stats1 = with_td.compute_loss(batch)
    # The term is the student's chosen Q mixed by the teacher's mixer against the teacher's y.
    with torch.no_grad():
        student = dense_outputs(base, base.student, batch, batch["obs"])
        chosen = student["q"][:, :-1].gather(-1, batch["actions"].unsqueeze(-1)).squeeze(-1)
        mixed = mix_where(base.mixer, chosen, batch["state"][:, :-1], batch["filled"])
        # y as the learner computes it: TD(lambda) of r on the target teacher (td_lambda = 0 here).
        expected_y = base.targets(batch, _target_tot(base, batch))
        expected = student_td(mixed, expected_y, batch["filled"].float())
    assert stats1["student_td_loss"] == pytest.approx(float(expected), rel=1e-4)
    assert float((loss1 - loss0).detach()) == pytest.approx(0.5 * float(expected), rel=1e-4)
    loss0.backward()
    loss1.backward()
    for a, b in ((base.agent, with_td.agent), (base.mixer, with_td.mixer)):  # teacher and mixer untouched
        for ga, gb in zip(grads(a), grads(b)):
            assert ga is not None and torch.allclose(ga, gb, atol=1e-6)
    assert all(g is None or g.abs().sum() == 0 for g in grads(base.student))
    assert all(g is not None and g.abs().sum() > 0 for g in grads(with_td.student))


@torch.no_grad()
def _target_tot(learner, batch):
    from marl.value.learner import mix_where, observed

    online = dense_teacher(learner, batch, learner.agent, learner.fusion)["q"]
    target = dense_teacher(learner, batch, learner.target_agent, learner.target_fusion)["q"]
    values = learner.greedy_target_values(online, target, batch["avail_actions"])
    return mix_where(learner.target_mixer, values, batch["state"], observed(batch["filled"]))


@pytest.mark.parametrize("scope", ["joint", "per_group"])
def test_gradient_clip_scope_and_logged_group_norms(spec, scope):
    learner = make_learner(spec, grad_clip=scope, grad_norm_clip=1e-3)
    loss, _ = learner.compute_loss(random_batch(spec))
    learner.optimizer.zero_grad()
    loss.backward()
    groups = learner.param_groups()
    before = {
        name: float(torch.cat([p.grad.flatten() for p in ps if p.grad is not None]).norm())
        for name, ps in groups.items()
    }
    stats = learner.clip_gradients()
    after = {
        name: float(torch.cat([p.grad.flatten() for p in ps if p.grad is not None]).norm())
        for name, ps in groups.items()
    }
    assert set(groups) == {"teacher", "mixer", "student", "idm"}
    for name in groups:
        assert stats[f"grad_norm_{name}"] == pytest.approx(before[name], rel=1e-5)
    assert stats["grad_norm"] == pytest.approx(sum(v**2 for v in before.values()) ** 0.5, rel=1e-5)
    if scope == "joint":  # one coefficient: the groups keep their proportions, the total hits the clip
        assert stats["grad_clip_fired"] == 1.0
        assert sum(v**2 for v in after.values()) ** 0.5 == pytest.approx(1e-3, rel=1e-3)
        ratio = {name: after[name] / before[name] for name in groups}
        assert max(ratio.values()) == pytest.approx(min(ratio.values()), rel=1e-4)
    else:  # each group at the clip by itself
        assert stats["grad_clip_fired"] == 4.0
        assert all(v == pytest.approx(1e-3, rel=1e-3) for v in after.values())


def test_default_clip_equals_pytorchs_global_clip(spec):
    batch = random_batch(spec)
    ours = make_learner(spec, grad_norm_clip=1e-3, idm_mask_prob=1.0)  # no random IDM mask: equal losses
    ref = copy.deepcopy(ours)
    for learner in (ours, ref):
        learner.compute_loss(batch)[0].backward()
    ours.clip_gradients()
    torch.nn.utils.clip_grad_norm_(ref.params, 1e-3)
    for a, b in zip(ours.params, ref.params):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-9)


def test_mixed_acting_draws_the_acting_network_once_per_episode(spec):
    from algorithms.ddn import MixedController, TeacherController

    for prob, expect in ((1.0, "teacher"), (0.0, "student")):
        learner = make_learner(spec, acting="mixed", acting_teacher_prob=prob)
        mixed = learner.behaviour_controller
        assert isinstance(mixed, MixedController)
        batch = random_batch(spec, C=4, T=3)
        obs, state, avail = batch["obs"][:, 0], batch["state"][:, 0], batch["avail_actions"][:, 0]
        C, N = obs.shape[:2]
        start, h0 = torch.full((C, N), -1), mixed.init_hidden(C, torch.device("cpu"))
        reference = TeacherController(learner) if expect == "teacher" else learner.controller
        q_ref, h_ref = reference.q_step(obs, start, h0, state)
        actions, hidden = mixed.act(obs, avail, start, h0, 0.0, torch.Generator(), state=state)
        assert torch.equal(actions, q_ref.argmax(-1)) and torch.allclose(hidden, h_ref)

    # p = 0.5: the draw happens at an episode start and holds until the next start of that copy.
    learner = make_learner(spec, acting="mixed", acting_teacher_prob=0.5)
    mixed, g = learner.behaviour_controller, torch.Generator().manual_seed(0)
    B, N, A = 512, spec.n_agents, spec.n_actions
    obs = torch.rand(B, N, *spec.obs_shape)
    state, avail = torch.rand(B, *spec.state_shape), torch.ones(B, N, A, dtype=torch.bool)
    hidden = mixed.init_hidden(B, torch.device("cpu"))
    mixed.act(obs, avail, torch.full((B, N), -1), hidden, 0.0, g, state=state)
    first = mixed.teacher_rows.clone()
    assert 0.4 < float(first.float().mean()) < 0.6
    mid_episode = torch.zeros(B, N, dtype=torch.long)
    mid_episode[:256] = -1  # only the first half of the copies starts a new episode
    mixed.act(obs, avail, mid_episode, hidden, 0.0, g, state=state)
    assert torch.equal(mixed.teacher_rows[256:], first[256:])
    assert not torch.equal(mixed.teacher_rows[:256], first[:256])
    # Copies split between the networks: each copy gets exactly its own network's step.
    rows, no_start = mixed.teacher_rows.clone(), torch.zeros(B, N, dtype=torch.long)
    actions, new_hidden = mixed.act(obs, avail, no_start, hidden, 0.0, g, state=state)
    q_t, h_t = TeacherController(learner).q_step(obs, no_start, hidden, state)
    q_s, h_s = learner.controller.q_step(obs, no_start, hidden, state)
    assert torch.equal(actions, torch.where(rows.view(B, 1), q_t.argmax(-1), q_s.argmax(-1)))
    assert torch.equal(
        new_hidden.view(B, N, -1), torch.where(rows.view(B, 1, 1), h_t.view(B, N, -1), h_s.view(B, N, -1))
    )
    with pytest.raises(ValueError, match="acting_teacher_prob"):
        make_learner(spec, acting="mixed", acting_teacher_prob=1.5)


@pytest.mark.parametrize("overrides", [{}, {"distill_mask": "live", "distill_q_loss": "centred_mse"}])
def test_bad_option_values_are_rejected(spec, overrides):
    for key, bad in (("distill_mask", "dead"), ("distill_from", "slow"), ("grad_clip", "none")):
        with pytest.raises(ValueError, match=key):
            make_learner(spec, **{**overrides, key: bad})
    with pytest.raises(ValueError, match="student_td_weight"):
        make_learner(spec, **overrides, student_td_weight=-1.0)


def test_teacher_is_tested_beside_the_student_without_changing_the_run():
    """The teacher's greedy test columns appear in every metric row, and logging them changes
    nothing else: the student's curve is the same with the teacher test off."""
    budget = Budget(env_steps=1_200, eval_interval=600, eval_episodes=4)
    common = {"num_envs": 4, "batch_size": 4}
    on = train_run("ddn", "predator_prey", "stag_hunt_small", seed=3, budget=budget, overrides=common)
    off = train_run(
        "ddn",
        "predator_prey",
        "stag_hunt_small",
        seed=3,
        budget=budget,
        overrides={**common, "log_teacher_eval": False},
    )
    assert all("teacher_test_return_mean" in row for row in on)
    assert not any("teacher_test_return_mean" in row for row in off)
    for a, b in zip(on, off):
        assert a["test_return_mean"] == b["test_return_mean"] and a["loss"] == pytest.approx(b["loss"], nan_ok=True)
    last = on[-1]
    for key in (
        "greedy_agreement",
        "teacher_overestimation",
        "realised_return_mean",
        "grad_norm_teacher",
        "grad_norm_student",
        "grad_norm_mixer",
        "grad_norm_idm",
        "grad_clip_fired",
        "fused_state_rms",
        "teacher_embedding_rms",
        "student_embedding_rms",
    ):
        assert key in last and last[key] == last[key], key  # present and not NaN
    assert 0.0 <= last["greedy_agreement"] <= 1.0


def _loss_and_grads(learner, batch):
    for p in learner.params:
        p.grad = None
    torch.manual_seed(7)
    loss, stats = learner.compute_loss(batch)
    loss.backward()
    return (
        float(loss.detach()),
        stats,
        {name: p.grad.clone() for name, p in ((f"{i}", p) for i, p in enumerate(learner.params)) if p.grad is not None},
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"personalize": False},
        {"teacher_local_obs": False, "distill_from": "target"},
        {"distill_from": "online"},  # the online teacher's features padded for the distillation
        {"distill_mask": "live", "distill_q_loss": "kl", "student_td_weight": 0.5},
    ],
)
def test_packed_networks_pass_equals_the_padded_one(spec, overrides):
    """The shared packed pass (inputs, states and packing built once for teacher, target teacher
    and student, taken on batches sorted longest first) gives the padded path's loss, statistics
    and gradients: the same batch with its episodes reversed (unsorted) takes the padded path."""
    learner = make_learner(spec, idm_mask_prob=1.0, **overrides)
    with torch.no_grad():  # make online and target teachers (and fusion blocks) differ
        for m in (learner.agent, learner.fusion):
            for p in m.parameters() if m is not None else []:
                p.add_(0.1 * torch.randn_like(p))
    batch = with_dead_agent(spec, random_batch(spec, C=4, T=6))
    reversed_batch = {k: v.flip(0) for k, v in batch.items()}
    from marl.value.learner import active_rows

    assert active_rows(batch["filled"], spec.n_agents) is not None
    assert active_rows(reversed_batch["filled"], spec.n_agents) is None
    loss_p, stats_p, grads_p = _loss_and_grads(learner, batch)
    loss_d, stats_d, grads_d = _loss_and_grads(learner, reversed_batch)
    assert loss_p == pytest.approx(loss_d, rel=1e-5, abs=1e-6)
    assert stats_p.keys() == stats_d.keys()
    for k in stats_p:
        assert stats_p[k] == pytest.approx(stats_d[k], rel=1e-4, abs=1e-6), k
    assert grads_p.keys() == grads_d.keys() and grads_p
    for k in grads_p:
        assert torch.allclose(grads_p[k], grads_d[k], rtol=1e-4, atol=1e-6), k


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the defaults: distilled from the target teacher
        {"distill_from": "online", "personalize": False},
        {"student_td_weight": 0.5, "distill_losses": ["Q"]},
        {"distill_losses": [], "student_td_weight": 0.0},  # the student learns nothing
    ],
)
@pytest.mark.parametrize("sorted_batch", [True, False], ids=["packed", "padded"])
def test_update_in_two_halves_gives_the_single_graphs_gradients(spec, overrides, sorted_batch):
    """``backward`` (the teacher's TD and IDM losses, then the student's pass and its losses) sets
    the gradients one backward of ``compute_loss``'s sum sets, bit for bit, and logs the same
    statistics: the two halves touch disjoint parameters."""
    learner = make_learner(spec, **overrides)
    batch = with_dead_agent(spec, random_batch(spec, C=4, T=6))
    if not sorted_batch:
        batch = {k: v.flip(0) for k, v in batch.items()}
    loss, stats_one, grads_one = _loss_and_grads(learner, batch)
    learner.optimizer.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the IDM's sample mask draws as in _loss_and_grads
    stats_two = learner.backward(batch)
    grads_two = {f"{i}": p.grad.clone() for i, p in enumerate(learner.params) if p.grad is not None}
    assert stats_two == stats_one and stats_two["loss"] == loss
    student = {f"{i}" for i, p in enumerate(learner.params) if any(p is q for q in learner.student.parameters())}
    assert (student <= grads_one.keys()) == bool(learner.cfg.distill_losses or learner.cfg.student_td_weight)
    assert grads_two.keys() == grads_one.keys() and grads_one
    for k in grads_one:
        assert torch.equal(grads_two[k], grads_one[k]), k
