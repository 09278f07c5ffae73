"""The in-graph beam search (`oneranker.beam_search`, what the generation graph runs) against
the numpy reference (`oneranker_serving.selection`) on random decoders of both kinds (factorized,
prefix-conditioned): same candidates, same order, same log-probs and streams, for every knob at
its edges; the ONNX export answers the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oneranker.beam_search import StreamDecoder, TrieBeamSearch, stream_matrix
from oneranker.decoders import ConditionedDecoder, FactorizedDecoder
from oneranker.tokenizer import build_trie
from oneranker_serving.decoders import decoder_tables
from oneranker_serving.selection import beam_search, merge_candidates
from oneranker_serving.tables import GenerationTables

HI, HV = 6, 2
DECODERS = ["factorized", "conditioned"]
D_TASK, U = 4, 6  # decoder widths of the random worlds (task channel, user vector)


def random_decoder(kind: str, depth: int, codes: int, seed: int):
    """A decoder of either kind with every weight random (the prefix terms far from zero)."""
    torch.manual_seed(seed)
    features = torch.randn(depth, codes, U - D_TASK)
    if kind == "factorized":
        decoder = FactorizedDecoder(depth, codes, D_TASK, U, features, [codes] * depth)
    else:
        decoder = ConditionedDecoder(depth, codes, D_TASK, U, features, [codes] * depth, hidden=8)
    with torch.no_grad():
        for param in decoder.parameters():
            param.normal_(0, 1.0)
    return decoder.eval()


def random_state(rng, decoder, batch: int) -> torch.Tensor:
    """A decoder state [B, H, Z]: level logits (factorized) or user vectors (conditioned)."""
    z = decoder.state_width
    return torch.from_numpy(rng.standard_normal((batch, HI + HV, z)).astype(np.float32) * 2)


def random_world(seed: int, kind: str = "factorized", depth: int = 3, codes: int = 6, ads: int = 120):
    rng = np.random.default_rng(seed)
    paths = np.unique(rng.integers(0, codes, (ads * 3, depth)), axis=0)
    paths = paths[rng.permutation(len(paths))[:ads]]
    trie = [np.asarray(t) for t in build_trie(paths, codes)]
    decoder = random_decoder(kind, depth, codes, seed)
    tables = GenerationTables(decoder_tables(kind, decoder.numpy_arrays()), trie, HI, HV)
    search = TrieBeamSearch(StreamDecoder(decoder, stream_matrix(HI, HV)), trie).eval()
    return rng, tables, search, len(paths)


def reference(state: np.ndarray, tables, beam_width: int, num_candidates: int, exclude: np.ndarray):
    return merge_candidates(*beam_search(state, tables, beam_width), num_candidates, exclude[exclude >= 0])


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graph_search_equals_the_reference_at_every_knob_edge(seed, kind):
    rng, tables, search, n_ads = random_world(seed, kind)
    knobs = [(1, 1), (1, 64), (3, 5), (8, 20), (256, 1), (256, 1024), (17, 1024)]  # (beam width, candidates)
    batch = len(knobs)
    state = random_state(rng, search.decoder.decoder, batch)
    exclude = np.full((batch, 4), -1, dtype=np.int64)
    exclude[2, :2] = rng.choice(n_ads, 2, replace=False)
    exclude[5] = rng.choice(n_ads, 4, replace=False)
    with torch.no_grad():
        cand, logp, stream = search(
            state, torch.tensor([w for w, _ in knobs]), torch.tensor([n for _, n in knobs]), torch.from_numpy(exclude)
        )
    assert cand.shape[1] == min(1024, search.decoder.streams.shape[0] * 256)  # the batch's largest request
    for row, (width, n) in enumerate(knobs):
        ads, lp, head = reference(state[row].numpy(), tables, width, n, exclude[row])
        got = cand[row][cand[row] >= 0].numpy()
        np.testing.assert_array_equal(got, ads, err_msg=f"beam {width}, candidates {n}")
        np.testing.assert_allclose(logp[row, : len(got)].numpy(), lp, atol=1e-4)
        np.testing.assert_array_equal(stream[row, : len(got)].numpy(), head)
        assert not np.isin(got, exclude[row][exclude[row] >= 0]).any()
        assert (cand[row, len(got) :] == -1).all()  # padding after the request's own count


@pytest.mark.parametrize("kind", DECODERS)
def test_width_beyond_the_trie_finds_every_ad_once_with_its_exact_log_prob(kind):
    """Unlimited beams: each stream reaches every legal path, the merge keeps every ad once."""
    rng, tables, search, n_ads = random_world(3, kind, ads=60)
    state = random_state(rng, search.decoder.decoder, 1)
    with torch.no_grad():
        cand, logp, _ = search(state, torch.tensor([256]), torch.tensor([1024]), torch.full((1, 1), -1))
    got = cand[0][cand[0] >= 0].numpy()
    assert sorted(got.tolist()) == list(range(n_ads))
    ads, lp, _ = reference(state[0].numpy(), tables, 256, 1024, np.array([-1]))
    np.testing.assert_allclose(logp[0, : len(got)].numpy(), lp, atol=1e-4)


@pytest.mark.parametrize("kind", DECODERS)
def test_exported_onnx_search_answers_like_eager(tmp_path, kind):
    import onnxruntime as ort

    rng, tables, search, n_ads = random_world(4, kind)
    args = (
        random_state(rng, search.decoder.decoder, 3),
        torch.tensor([2, 9, 4]),
        torch.tensor([3, 30, 7]),
        torch.tensor([[0, -1], [5, 6], [-1, -1]]),
    )
    batch, excluded = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("excluded", min=1, max=512)
    program = torch.export.export(
        search, args, strict=False, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}, {0: batch, 1: excluded})
    )
    path = tmp_path / "search.onnx"
    torch.onnx.export(program, args, dynamo=True, opset_version=20, verbose=False).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # other shapes and knobs than the export example
    state = random_state(rng, search.decoder.decoder, 2).numpy()
    feeds = dict(
        zip(
            [i.name for i in session.get_inputs()],
            (state, np.array([1, 64]), np.array([64, 2]), np.array([[-1, -1, -1], [1, 2, 3]])),
        )
    )
    got = session.run(None, feeds)
    with torch.no_grad():
        want = search(*(torch.from_numpy(v) for v in feeds.values()))
    np.testing.assert_array_equal(got[0], want[0].numpy())
    np.testing.assert_allclose(got[1], want[1].numpy(), atol=1e-5)
