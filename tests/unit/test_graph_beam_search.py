"""The in-graph beam search (`oneranker.beam_search`, what the generation graph runs) against
the numpy reference (`oneranker_serving.selection`) on random tables: same candidates, same
order, same log-probs and streams, for every knob at its edges; the ONNX export answers the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oneranker.beam_search import FactorizedDecoder, TrieBeamSearch, stream_matrix
from oneranker.tokenizer import build_trie
from oneranker_serving.selection import beam_search, merge_candidates
from oneranker_serving.tables import GenerationTables

HI, HV = 6, 2


def random_world(seed: int, depth: int = 3, codes: int = 6, ads: int = 120):
    rng = np.random.default_rng(seed)
    paths = np.unique(rng.integers(0, codes, (ads * 3, depth)), axis=0)
    paths = paths[rng.permutation(len(paths))[:ads]]
    trie = [np.asarray(t) for t in build_trie(paths, codes)]
    lower = np.tril(np.ones((depth, depth)), -1)[:, :, None, None]
    transitions = (rng.standard_normal((depth, depth, codes, codes)) * lower).astype(np.float32)
    tables = GenerationTables(transitions, trie, HI, HV)
    search = TrieBeamSearch(FactorizedDecoder(torch.from_numpy(transitions), stream_matrix(HI, HV)), trie).eval()
    return rng, tables, search, len(paths)


def reference(state: np.ndarray, tables, beam_width: int, num_candidates: int, exclude: np.ndarray):
    return merge_candidates(*beam_search(state, tables, beam_width), num_candidates, exclude[exclude >= 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graph_search_equals_the_reference_at_every_knob_edge(seed):
    rng, tables, search, n_ads = random_world(seed)
    knobs = [(1, 1), (1, 64), (3, 5), (8, 20), (256, 1), (256, 1024), (17, 1024)]  # (beam width, candidates)
    batch = len(knobs)
    state = torch.from_numpy(rng.standard_normal((batch, HI + HV, 3, 6)).astype(np.float32) * 2)
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
        np.testing.assert_allclose(logp[row, : len(got)].numpy(), lp, atol=1e-5)
        np.testing.assert_array_equal(stream[row, : len(got)].numpy(), head)
        assert not np.isin(got, exclude[row][exclude[row] >= 0]).any()
        assert (cand[row, len(got) :] == -1).all()  # padding after the request's own count


def test_width_beyond_the_trie_finds_every_ad_once_with_its_exact_log_prob():
    """Unlimited beams: each stream reaches every legal path, the merge keeps every ad once."""
    rng, tables, search, n_ads = random_world(3, ads=60)
    state = torch.from_numpy(rng.standard_normal((1, HI + HV, 3, 6)).astype(np.float32))
    with torch.no_grad():
        cand, logp, _ = search(state, torch.tensor([256]), torch.tensor([1024]), torch.full((1, 1), -1))
    got = cand[0][cand[0] >= 0].numpy()
    assert sorted(got.tolist()) == list(range(n_ads))
    ads, lp, _ = reference(state[0].numpy(), tables, 256, 1024, np.array([-1]))
    np.testing.assert_allclose(logp[0, : len(got)].numpy(), lp, atol=1e-5)


def test_exported_onnx_search_answers_like_eager(tmp_path):
    import onnxruntime as ort

    rng, tables, search, n_ads = random_world(4)
    args = (
        torch.from_numpy(rng.standard_normal((3, HI + HV, 3, 6)).astype(np.float32)),
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
    state = rng.standard_normal((2, HI + HV, 3, 6)).astype(np.float32)
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
