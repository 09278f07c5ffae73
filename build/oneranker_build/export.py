"""Export the serving graphs: one `torch.export` program each, saved as `<name>.pt2` (the torch
engine's input) and converted to `<name>.onnx` (ONNX Runtime, and TensorRT on NGC hosts).

In-graph beam search (the served path; tensor names: `contract.GENERATION`, `contract.RANKING`):
    generation: tokens + beam_width [B], num_candidates [B], exclude_idx [B,E]
                -> cand_idx [B,N], cand_logp [B,N], cand_stream [B,N], kv [B,R2,S,DM]
    ranking:    kv, hist_len [B], cand_* [B,N], top_k [B]
                -> rec_item_ids, rec_scores, rec_gen_logp, rec_source_head [B,k], rec_count [B]
The trie, the decoder's tables and the item tables are constants of these graphs.

Level-logit graphs (the numpy beam search baseline and the cascade):

    generator.onnx: user_features [B,F], hist_sids [B,L,D], hist_actions [B,L], hist_dt [B,L],
                    hist_len [B] -> decoder_state [B,H,Z], kv [B,R2,S,DM]   (S = F + L + T2)
    ranker.onnx:    kv [B,R2,S,DM], hist_len [B], cand_sids [B,n,D], cand_attrs [B,n,2],
                    cand_bid [B,n] -> scores [B,n]
Names and dtypes come from `oneranker_client.contract`; B, L and n are dynamic. Item tables and
the decoder's tables are written beside the graphs (`generation_tables.safetensors`), stamped with
the checkpoint hash in `export_info.json`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import onnx
import torch
from safetensors.numpy import save_file
from torch import nn

from oneranker.beam_search import NEG, StreamDecoder, TrieBeamSearch, stream_matrix
from oneranker.reference import generation_tables
from oneranker_client import contract
from oneranker_serving.tables import generation_table_arrays

OPSET = 20  # torch 2.13's dynamo exporter default; TensorRT 10.x parses opset <= 22


class GeneratorGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, user_features, hist_sids, hist_actions, hist_dt, hist_len):
        enc = self.model.encode_user(user_features, hist_sids, hist_actions, hist_dt, hist_len)
        return enc.decoder_state, enc.kv


class RankerGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, kv, hist_len, cand_sids, cand_attrs, cand_bid):
        kv_valid = self.model.kv_valid_from_lengths(hist_len, kv.shape[2])
        return self.model.rank(kv, kv_valid, cand_sids, cand_attrs, cand_bid)


class GenerationGraph(nn.Module):
    """Steps 1-2 + KV projection + trie-constrained beam search (`oneranker.beam_search`)."""

    def __init__(self, model, sids):
        super().__init__()
        gen = generation_tables(model, sids)
        streams = stream_matrix(gen.num_interest_heads, gen.num_value_heads)
        self.model = model
        self.search = TrieBeamSearch(StreamDecoder(model.decoder, streams), gen.trie_children)

    def forward(
        self, user_features, hist_sids, hist_actions, hist_dt, hist_len, beam_width, num_candidates, exclude_idx
    ):
        enc = self.model.encode_user(user_features, hist_sids, hist_actions, hist_dt, hist_len)
        cand_idx, cand_logp, cand_stream = self.search(enc.decoder_state, beam_width, num_candidates, exclude_idx)
        return cand_idx, cand_logp, cand_stream, enc.kv


class RankingGraph(nn.Module):
    """Step 3 over the generation graph's KV and candidates, then top-k by value score (ties: the
    candidate with the better generation log-prob, i.e. the lower position, first)."""

    def __init__(self, model, tables):
        super().__init__()
        self.model = model
        self.register_buffer("ad_ids", torch.as_tensor(tables.ad_ids, dtype=torch.int64))
        self.register_buffer("ad_codes", torch.as_tensor(tables.ad_codes, dtype=torch.int64))
        attrs = torch.stack([torch.as_tensor(tables.ad_advertiser), torch.as_tensor(tables.ad_category)], -1)
        self.register_buffer("ad_attrs", attrs.to(torch.int64))
        self.register_buffer("ad_bid", torch.as_tensor(tables.ad_bid, dtype=torch.float32))

    def forward(self, kv, hist_len, cand_idx, cand_logp, cand_stream, top_k):
        valid = cand_idx >= 0
        safe = cand_idx.clamp(min=0)
        kv_valid = self.model.kv_valid_from_lengths(hist_len, kv.shape[2])
        scores = self.model.rank(kv, kv_valid, self.ad_codes[safe], self.ad_attrs[safe], self.ad_bid[safe])
        scores = torch.where(valid, scores, NEG)
        wanted = top_k.max().item()
        torch._check(wanted >= 1)
        k = torch.sym_min(wanted, cand_idx.shape[1])
        top, pos = torch.topk(scores, k, dim=-1)
        keep = (torch.arange(k, device=top.device) < top_k.view(-1, 1)) & (top > NEG / 2)
        chosen = torch.gather(safe, 1, pos)
        item_ids = torch.where(keep, self.ad_ids[chosen], -1)
        gen_logp = torch.where(keep, torch.gather(cand_logp, 1, pos), 0.0)
        head = torch.where(keep, torch.gather(cand_stream, 1, pos), -1).to(torch.int32)
        return item_ids, torch.where(keep, top, 0.0), gen_logp, head, keep.sum(-1)


def dims_for(model) -> contract.ContractDims:
    cfg = model.cfg
    return contract.ContractDims(
        F=model.num_prefix,
        D=model.depth,
        K=model.codes,
        H=cfg.num_task_tokens,
        R2=2 * cfg.r_layers,
        DM=cfg.d_model,
        Z=model.decoder.state_width,
    )


def example_generator_inputs(model, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random but legal generator inputs (true lengths 1..length)."""
    g = torch.Generator().manual_seed(seed)
    d = dims_for(model)
    lengths = torch.randint(1, length + 1, (batch,), generator=g)
    lengths[0] = length
    return {
        "user_features": torch.randint(0, model.feature_cardinality, (batch, d.F), generator=g),
        "hist_sids": torch.randint(0, 2, (batch, length, d.D), generator=g),
        "hist_actions": torch.randint(1, 5, (batch, length), generator=g),
        "hist_dt": torch.rand(batch, length, generator=g) * 1e6,
        "hist_len": lengths,
    }


def example_candidates(model, batch: int, n: int, num_advertisers: int, num_categories: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed + 1)
    return {
        "cand_sids": torch.randint(0, 2, (batch, n, model.depth), generator=g),
        "cand_attrs": torch.stack(
            [
                torch.randint(0, num_advertisers, (batch, n), generator=g),
                torch.randint(0, num_categories, (batch, n), generator=g),
            ],
            -1,
        ),
        "cand_bid": torch.rand(batch, n, generator=g) * 5,
    }


def _export(
    module: nn.Module, args: tuple, names_in, names_out, dynamic_shapes, path: Path, onnx_too: bool = True
) -> None:
    """path.pt2 (exported program) and path.onnx from ONE torch.export trace, in eval mode
    (`onnx_too=False`: the program only, all the torch engine reads)."""
    module = module.eval()
    program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    torch.export.save(program, str(path.with_suffix(".pt2")))
    if not onnx_too:
        return
    onnx_program = torch.onnx.export(
        program,
        args,
        dynamo=True,
        input_names=list(names_in),
        output_names=list(names_out),
        opset_version=OPSET,
        external_data=False,
        verbose=False,
    )
    onnx_program.save(str(path.with_suffix(".onnx")), external_data=False)


def _dims(max_history: int) -> dict:
    return {
        "B": torch.export.Dim("batch", min=1, max=1024),
        "L": torch.export.Dim("hist", min=1, max=max_history),
        "N": torch.export.Dim("cands", min=1, max=4096),
        "S": torch.export.Dim("kv_len", min=1, max=max_history + 4096),
        "E": torch.export.Dim("excluded", min=1, max=65536),
    }


def _history_shapes(d: dict) -> dict:
    B, L = d["B"], d["L"]
    return {
        "user_features": {0: B},
        "hist_sids": {0: B, 1: L},
        "hist_actions": {0: B, 1: L},
        "hist_dt": {0: B, 1: L},
        "hist_len": {0: B},
    }


def _describe(out_dir: Path, names, info: dict) -> None:
    for name in names:
        info[f"{name}_program_bytes"] = (out_dir / f"{name}.pt2").stat().st_size
        path = out_dir / f"{name}.onnx"
        if not path.exists():  # exported without ONNX (torch engine only)
            continue
        onnx.checker.check_model(str(path))
        info[f"{name}_bytes"] = path.stat().st_size
        info[f"{name}_ops"] = sorted({node.op_type for node in onnx.load(str(path)).graph.node})


def export_decoder_state_graphs(
    model, out_dir: Path, num_advertisers: int, num_categories: int, max_history: int, onnx_too: bool = True
) -> dict:
    """generator.{pt2,onnx} (decoder state + kv) and ranker.{pt2,onnx} (scores): the numpy beam
    search baseline's graphs, and the cascade's."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    batch, length, n = 2, min(8, max_history), 5
    gen_in = example_generator_inputs(model, batch, length)
    d = _dims(max_history)
    info = {}
    t0 = time.time()
    gen_names = [t.name for t in contract.GENERATOR.inputs]
    _export(
        GeneratorGraph(model),
        tuple(gen_in[k] for k in gen_names),
        gen_names,
        [t.name for t in contract.GENERATOR.outputs],
        _history_shapes(d),
        out_dir / "generator",
        onnx_too,
    )
    info["generator_export_s"] = time.time() - t0
    with torch.no_grad():
        _, kv = GeneratorGraph(model)(*(gen_in[k] for k in gen_names))
    cands = example_candidates(model, batch, n, num_advertisers, num_categories)
    rank_names = [t.name for t in contract.RANKER.inputs]
    rank_args = {"kv": kv, "hist_len": gen_in["hist_len"], **cands}
    t0 = time.time()
    B, N = d["B"], d["N"]
    _export(
        RankerGraph(model),
        tuple(rank_args[k] for k in rank_names),
        rank_names,
        [t.name for t in contract.RANKER.outputs],
        {
            "kv": {0: B, 2: d["S"]},
            "hist_len": {0: B},
            "cand_sids": {0: B, 1: N},
            "cand_attrs": {0: B, 1: N},
            "cand_bid": {0: B, 1: N},
        },
        out_dir / "ranker",
        onnx_too,
    )
    info["ranker_export_s"] = time.time() - t0
    _describe(out_dir, ("generator", "ranker"), info)
    info["opset"] = OPSET
    return info


def export_beam_search_graphs(model, sids, tables, out_dir: Path, max_history: int, onnx_too: bool = True) -> dict:
    """generation.{pt2,onnx} and ranking.{pt2,onnx}: the in-graph beam search path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    gen_in = example_generator_inputs(model, 2, min(8, max_history))
    d = _dims(max_history)
    B, N = d["B"], d["N"]
    info = {}
    knobs = {
        "beam_width": torch.tensor([3, 2]),
        "num_candidates": torch.tensor([4, 6]),
        "exclude_idx": torch.tensor([[0, -1], [-1, -1]]),
    }
    gen_names = [t.name for t in contract.GENERATION.inputs]
    gen_args = tuple({**gen_in, **knobs}[k] for k in gen_names)
    generation = GenerationGraph(model, sids).eval()
    t0 = time.time()
    _export(
        generation,
        gen_args,
        gen_names,
        [t.name for t in contract.GENERATION.outputs],
        {**_history_shapes(d), "beam_width": {0: B}, "num_candidates": {0: B}, "exclude_idx": {0: B, 1: d["E"]}},
        out_dir / "generation",
        onnx_too,
    )
    info["generation_export_s"] = time.time() - t0
    with torch.no_grad():
        cand_idx, cand_logp, cand_stream, kv = generation(*gen_args)
    rank_args = {
        "kv": kv,
        "hist_len": gen_in["hist_len"],
        "cand_idx": cand_idx,
        "cand_logp": cand_logp,
        "cand_stream": cand_stream,
        "top_k": torch.tensor([2, 3]),
    }
    rank_names = [t.name for t in contract.RANKING.inputs]
    t0 = time.time()
    _export(
        RankingGraph(model, tables).eval(),
        tuple(rank_args[k] for k in rank_names),
        rank_names,
        [t.name for t in contract.RANKING.outputs],
        {
            "kv": {0: B, 2: d["S"]},
            "hist_len": {0: B},
            "cand_idx": {0: B, 1: N},
            "cand_logp": {0: B, 1: N},
            "cand_stream": {0: B, 1: N},
            "top_k": {0: B},
        },
        out_dir / "ranking",
        onnx_too,
    )
    info["ranking_export_s"] = time.time() - t0
    _describe(out_dir, ("generation", "ranking"), info)
    return info


def write_generation_tables(model, sids, tables, out_dir: Path) -> None:
    """Everything the Python models need beside the graphs, as one safetensors file."""
    save_file(
        generation_table_arrays(generation_tables(model, sids), tables),
        str(Path(out_dir) / "generation_tables.safetensors"),
    )


def write_export_info(out_dir: Path, manifest: dict, info: dict, dims: contract.ContractDims, cfg) -> dict:
    payload = {
        "checkpoint_sha256": manifest["checkpoint_sha256"],
        "sid_version": manifest["sid_version"],
        "oov_code": manifest.get("oov_code"),  # the history OOV token's code; None: the model has none
        "item_tables_sha256": manifest.get("item_tables_sha256"),
        "dims": {k: getattr(dims, k) for k in ("F", "D", "K", "H", "R2", "DM")},
        "num_interest_heads": cfg.model.num_interest_tokens,
        "num_value_heads": cfg.model.num_value_tokens,
        "num_step2_tokens": cfg.model.num_step2_tokens,
        "feature_cardinality": max(cfg.data.profile_cardinality, cfg.data.context_cardinality),
        "serve": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.serve.__dict__.items()},
        "contract_version": contract.CONTRACT_VERSION,
        **info,
    }
    (Path(out_dir) / "export_info.json").write_text(json.dumps(payload, indent=2))
    return payload
