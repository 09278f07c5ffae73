"""The two semantic-ID decoders (`oneranker.decoders`) and their numpy mirrors
(`oneranker_serving.decoders`): the numpy reference beam search at unlimited width scores every
legal path exactly as teacher forcing does, the mirrors compute the same logits as the modules,
and only the prefix-conditioned decoder can fit a user x prefix interaction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oneranker.decoders import ConditionedDecoder, FactorizedDecoder
from oneranker.tokenizer import build_trie
from oneranker_serving.decoders import decoder_from_prefixed, decoder_tables
from oneranker_serving.selection import beam_search, stream_matrix
from oneranker_serving.tables import GenerationTables

DECODERS = ["factorized", "conditioned"]


def make_decoder(kind: str, depth: int, codes: int, d_task: int, user_width: int, level_sizes, seed: int = 0):
    torch.manual_seed(seed)
    features = torch.randn(depth, codes, user_width - d_task) if user_width > d_task else None
    if kind == "factorized":
        return FactorizedDecoder(depth, codes, d_task, user_width, features, level_sizes)
    return ConditionedDecoder(depth, codes, d_task, user_width, features, level_sizes, hidden=8)


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_exhaustive_beam_search_equals_path_log_probs(kind, seed):
    """Beam width >= every legal path: each stream's log-prob of each ad equals teacher-forced
    `path_log_probs` (interest heads; mean of the value heads), on a random decoder whose last
    level has fewer valid codes than K (the padding mask is exercised)."""
    depth, codes, hi, hv = 3, 5, 3, 2
    sizes = [5, 5, 4]
    decoder = make_decoder(kind, depth, codes, 4, 7, sizes, seed)
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0, 1.0)
    rng = np.random.default_rng(seed)
    paths = np.unique(np.stack([rng.integers(0, s, 90) for s in sizes], 1), axis=0)
    trie = [np.asarray(t) for t in build_trie(paths, codes)]
    tables = GenerationTables(decoder_tables(kind, decoder.numpy_arrays()), trie, hi, hv)
    with torch.no_grad():
        e_user = torch.randn(1, hi + hv, 7)
        state = decoder.state(e_user, hi + hv)
        per_head = decoder.path_log_probs(state, torch.from_numpy(paths[None]))[0].numpy()  # [H, A]
    ads, logp = beam_search(state[0].numpy(), tables, beam_width=len(paths))
    expected = stream_matrix(hi, hv) @ per_head  # [S, A]
    for stream in range(expected.shape[0]):
        got = np.full(len(paths), np.nan)
        got[ads[stream][ads[stream] >= 0]] = logp[stream][ads[stream] >= 0]
        assert np.all(np.isfinite(got)), "every ad must be reachable"
        np.testing.assert_allclose(got, expected[stream], atol=1e-4)
    # per-head paths ([B, H, P, D]) give the same numbers as shared paths for the matching head
    own = decoder.path_log_probs(state, torch.from_numpy(paths[None, None]).expand(1, hi + hv, -1, -1))
    np.testing.assert_allclose(own[0].detach().numpy(), per_head, atol=1e-5)


@pytest.mark.parametrize("kind", DECODERS)
def test_numpy_mirror_round_trips_through_the_table_file(kind):
    """decoder -> numpy arrays -> `decoder.<name>` keys -> the same kind and the same logits."""
    decoder = make_decoder(kind, 3, 4, 4, 6, [4, 4, 3])
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0, 1.0)
    mirror = decoder_from_prefixed({f"decoder.{k}": v for k, v in decoder.numpy_arrays().items()})
    assert mirror.kind == kind
    state = decoder.state(torch.randn(1, 2, 6), 2).detach()
    prefix = torch.tensor([[[[1, 2], [3, 0]], [[0, 0], [2, 1]]]])  # [1, H=2, w=2, level=2]
    want = decoder.level_logits(state, 2, prefix).detach().numpy()[0]
    got = mirror.level_logits(state[0].numpy(), 2, prefix[0].numpy())
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=1e-4, atol=1e-4)
    assert np.all(got[..., 3] < -1e8)  # level 2 has 3 valid codes: code 3 is masked


def xor_world(n_users: int = 256, seed: int = 0):
    """One head, depth 2, two codes per level. Users of type t in {0, 1} (their user vector is a
    noisy one-hot of t); level 1 is A (0) or B (1) at random; level 2 is x (0) if (t == 0) == (level
    1 == A), else y (1). Given the user and level 1, level 2 is determined; given either alone it
    is a fair coin, so no sum of a user term and a prefix term can fit it."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 2, (n_users,), generator=g)
    first = torch.randint(0, 2, (n_users,), generator=g)
    second = (kind != first).long()
    e_user = torch.nn.functional.one_hot(kind, 4).float() * 3 + 0.1 * torch.randn(n_users, 4, generator=g)
    return e_user.unsqueeze(1), torch.stack([first, second], 1).view(n_users, 1, 1, 2)


def level2_accuracy(kind: str, steps: int = 300) -> float:
    """Train the decoder alone by teacher-forced NLL; -> mean probability of the right level-2
    code given the user and the true level-1 code, on fresh users."""
    decoder = make_decoder(kind, 2, 2, 4, 4, [2, 2], seed=0)
    e_user, paths = xor_world()
    optimizer = torch.optim.Adam(decoder.parameters(), lr=0.05)
    for _ in range(steps):
        loss = -decoder.path_log_probs(decoder.state(e_user, 1), paths).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    e_test, p_test = xor_world(seed=1)
    with torch.no_grad():
        logits = decoder.level_logits(decoder.state(e_test, 1), 1, p_test[..., :1])  # [U, 1, 1, 2]
        prob = torch.softmax(logits, -1)[..., 0, :].squeeze(1)  # [U, 2]
    return float(prob.gather(1, p_test[:, 0, 0, 1:]).mean())


@pytest.mark.parametrize("kind", DECODERS)
def test_graph_form_equals_level_logits_on_every_valid_code(kind):
    """The generation graph's form (per-node prefix rows tabulated once, per-user terms computed
    once, the item side folded into the weights) gives `level_logits` at every level for every
    prefix, on a decoder whose last level has fewer valid codes than K; a masked code stays far
    below every valid one. Fails on a prefix term added at the wrong level, a wrong split of the
    per-level user terms, or a fold that is not the same product."""
    depth, codes, heads = 4, 6, 5
    sizes = [6, 6, 6, 4]
    decoder = make_decoder(kind, depth, codes, 4, 7, sizes, seed=3)
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0, 1.0)
        state = decoder.state(torch.randn(2, heads, 7), heads)  # [B, H, Z]
        consts = decoder.graph_constants()
        terms = decoder.user_terms(state, consts)
        gen = torch.Generator().manual_seed(0)
        for level in range(depth):
            prefixes = torch.randint(0, codes, (9, level), generator=gen)  # [N, level]
            rows = None if level == 0 else decoder.prefix_rows(level, prefixes).expand(2, heads, -1, -1)
            got = decoder.node_logits(terms[level], level, rows, consts)  # [B, H, N|1, K]
            want = decoder.level_logits(state, level, prefixes.view(1, 1, 9, level), decoder.constants())
            want = want.expand_as(got)
            valid = decoder.code_valid[level]
            torch.testing.assert_close(got[..., valid], want[..., valid], atol=1e-4, rtol=1e-5)
            if not valid.all():
                assert got[..., ~valid].max() < got[..., valid].min() - 1e8


def test_only_the_conditioned_decoder_fits_a_user_by_prefix_interaction():
    conditioned, factorized = level2_accuracy("conditioned"), level2_accuracy("factorized")
    assert conditioned > 0.95, conditioned
    assert 0.4 < factorized < 0.6, factorized


@pytest.mark.parametrize("kind", DECODERS)
def test_the_configs_state_width_is_the_modules(kind):
    """`ExperimentConfig.decoder_state_width` (the contract's Z, used without building a model)
    equals the built decoder's state width."""
    from oneranker.config import preset
    from oneranker.decoders import build_decoder

    cfg = preset("tiny")
    cfg.model.decoder = kind
    t, m = cfg.tokenizer, cfg.model
    features = torch.zeros(t.sid_depth, t.max_codes, m.num_fake_items)
    decoder = build_decoder(m, t.sid_depth, t.max_codes, features, [t.max_codes] * t.sid_depth)
    assert decoder.state_width == cfg.decoder_state_width
    e_user = torch.zeros(2, m.num_task_tokens, m.user_width)
    assert decoder.state(e_user, m.num_task_tokens).shape == (2, m.num_task_tokens, cfg.decoder_state_width)


def test_table_files_without_the_decoder_prefix_load_as_factorized_and_empty_ones_fail():
    transitions = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    old = decoder_from_prefixed({"transitions": transitions, "trie_0": np.zeros((1, 3))})
    assert old.kind == "factorized" and np.array_equal(old.transitions, transitions)
    with pytest.raises(ValueError, match="no semantic-ID decoder tables"):
        decoder_from_prefixed({"trie_0": np.zeros((1, 3))})
