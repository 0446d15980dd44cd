"""The policy networks (marl/policy/networks.py): image preprocessing, the observation encoder's
shapes, GRU resets at episode starts, and the actor's sequence pass equal to stepping it."""

import pytest
import torch
from torch import nn

from envs.base import EnvSpec
from marl.policy.config import PolicyLearnerConfig
from marl.policy.networks import NEG_INF, ActInput, ObsEncoder, RecurrentActor, preprocess_image, run_gru

# Encoders and the recurrent actor ----------------------------------------------------------------


def test_preprocess_image_block_means_rounded_channels_first():
    x = torch.zeros(2, 16, 8, 3, dtype=torch.uint8)  # two images, 2 x 1 blocks of 8 x 8
    x[0, :8, :, 0] = 10  # block (0, 0), channel 0: constant
    x[0, :2, :, 1] = 255  # 16 of 64 pixels at 255: mean 63.75 -> 64
    x[0, 8:, :, 2] = 100
    x[0, 8, 0, 2] = 120  # one pixel +20: mean 100.3125 -> 100
    x[1, 8:, :4, 0] = 1  # half the pixels at 1 ... and 3 at 2: mean (32 + 3) / 64 = 0.547 -> 1
    x[1, 8, :3, 0] = 2
    out = preprocess_image(x, 8)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 2, 1)
    expected = torch.zeros(2, 3, 2, 1, dtype=torch.uint8)
    expected[0, 0, 0, 0], expected[0, 1, 0, 0], expected[0, 2, 1, 0] = 10, 64, 100
    expected[1, 0, 1, 0] = 1
    assert torch.equal(out, expected)

    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 256, (3, 4, 16, 24, 3), dtype=torch.uint8, generator=g)
    out = preprocess_image(big, 8)
    assert out.shape == (3, 4, 3, 2, 3)
    blocks = big.double().reshape(3, 4, 2, 8, 3, 8, 3).mean(dim=(3, 5))  # [.., 2, 3, C]
    assert torch.equal(out, blocks.round().to(torch.uint8).permute(0, 1, 4, 2, 3))
    assert torch.equal(preprocess_image(big, 1), big.permute(0, 1, 4, 2, 3))


def test_obs_encoder_shapes_for_images_with_extras_and_ids_and_for_vectors():
    torch.manual_seed(0)
    enc = ObsEncoder((40, 48, 3), extra_dim=2, id_dim=3, hidden_dim=8, downsample=8, channels=(4, 5), kernel=3)
    # stored 5 x 6 cells; two unpadded 3x3 convolutions: 3 x 4, then 1 x 2
    assert enc.stored_shape == (3, 5, 6) and enc.fc.in_features == 5 * 1 * 2 + 2 + 3
    raw = torch.randint(0, 256, (5, 40, 48, 3), dtype=torch.uint8)
    stored = enc.preprocess(raw)
    assert stored.shape == (5, 3, 5, 6) and stored.dtype == torch.uint8
    ids = torch.tensor([0, 1, 2, 0, 1])
    out = enc(stored, torch.randn(5, 2), ids)
    assert out.shape == (5, 8) and (out >= 0).all()
    # the one-hot id reaches the output
    with torch.no_grad():
        enc.fc.bias.fill_(10.0)  # all units active, so any input change shows
    extra = torch.randn(5, 2)
    assert not torch.allclose(enc(stored, extra, ids), enc(stored, extra, (ids + 1) % 3))
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        ObsEncoder((16, 24, 3), extra_dim=0, id_dim=0, hidden_dim=8, downsample=8, channels=(4,), kernel=3)

    vec = ObsEncoder((7,), extra_dim=0, id_dim=0, hidden_dim=6)
    assert vec.cnn is None and vec.stored_shape == (7,) and vec.fc.in_features == 7
    assert vec(vec.preprocess(torch.randn(4, 7)), None, None).shape == (4, 6)


def test_run_gru_resets_exactly_at_episode_starts():
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 4)
    L, M = 6, 3
    feats, h0 = torch.randn(L, M, 3), torch.randn(M, 4)
    starts = torch.tensor(
        [
            [False, True, False],
            [False, False, False],
            [True, False, False],
            [False, False, True],
            [True, True, False],
            [False, False, False],
        ]
    )
    got = run_gru(cell, feats, h0, starts)
    for m in range(M):
        h = h0[m : m + 1]
        for t in range(L):
            if starts[t, m]:
                h = torch.zeros_like(h)
            h = cell(feats[t, m : m + 1], h)
            assert torch.allclose(got[t, m], h[0], atol=1e-6), (t, m)


def _vector_spec(n_agents=2, n_actions=4, obs_dim=6, state_dim=5) -> EnvSpec:
    return EnvSpec(
        family="test",
        scenario="vec",
        num_envs=1,
        n_agents=n_agents,
        n_actions=n_actions,
        obs_shape=(obs_dim,),
        state_shape=(state_dim,),
        episode_limit=10,
    )


def test_actor_sequence_equals_stepping_act_with_resets():
    torch.manual_seed(0)
    spec = _vector_spec()
    cfg = PolicyLearnerConfig(hidden_dim=8, actor_agent_id=True)
    actor = RecurrentActor(spec, cfg)
    with torch.no_grad():  # a visible policy head (MAPPO's initial gain 0.01 makes logits ~0)
        actor.head.weight.mul_(100.0)
    L, M = 7, 3
    obs, state = torch.randn(L, M, 6), torch.randn(L, M, 5)
    ids = torch.tensor([0, 1, 0]).expand(L, M)
    avail = torch.rand(L, M, 4) < 0.7
    avail[..., 0] = True
    starts = torch.rand(L, M) < 0.3
    starts[0] = True
    inp = ActInput(obs, torch.zeros(L, M, 0), ids, avail, state)
    seq = actor.sequence(inp, torch.randn(M, 8), starts)  # h0 is ignored where starts[0] is true
    h = actor.initial_hidden(M)
    for t in range(L):
        h = h * (~starts[t]).unsqueeze(-1).float()
        logits, h = actor.act(ActInput(obs[t], torch.zeros(M, 0), ids[t], avail[t], state[t]), h)
        assert torch.allclose(seq["logits"][t], logits, atol=1e-5)
        assert torch.allclose(seq["hidden"][t], h, atol=1e-6)
        assert (logits[~avail[t]] == NEG_INF).all()
    assert seq["logits"][avail].std() > 0.1  # not near-uniform: the comparison has teeth
