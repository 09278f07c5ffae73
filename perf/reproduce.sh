#!/usr/bin/env bash
# Reproduce every figure in perf/results/ (one command):   bash perf/reproduce.sh [preset]
#   1. train the preset (default small) and its cascade baseline (same semantic IDs), render the
#      onnxruntime + torch repositories with both (oneranker_cascade beside the unified model)
#   2. serving topologies, served vs in-process, RSS, unified vs cascade served,
#      compute floor                                            -> perf/results/topology/
#      the same with the PyTorch engine in the same slots         -> perf/results/topology_torch/
#      dynamic batching delay 0 / 100 / 500 us, side by side      -> perf/results/queue_delay/
#      one preferred engine instance vs instances in turn          -> perf/results/instance_layout/
#   3. cost vs history length x candidates, ORT vs torch,
#      unified vs cascade ranking, fraction of matmul peak,
#      the whole request with in-graph vs numpy beam search      -> perf/results/scaling/
#   4. perf_analyzer sweep on the public model                  -> perf/results/perf_analyzer/
#      (and pinned: server and perf_analyzer on separate cores)    -> perf/results/perf_analyzer_pinned/
#   5. headless locust                                          -> perf/results/locust/
#   6. training throughput                                      -> perf/results/train/
#   7. 10-minute soak, good + malformed calls over gRPC and HTTP,
#      server + stub memory over time                           -> perf/results/soak/
# Server and client share this machine's cores: absolute CPU numbers are floors; compare ratios
# measured in one run. Absolute latencies are only meaningful from a GPU host (docs/deployment.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PRESET="${1:-small}"
bash scripts/bootstrap.sh
# PASSIVE: torch's GNU OpenMP threads sleep at barriers instead of spinning (with 2 intra-op threads on
# shared cores the spinning starved the working thread: perf/results/topology_torch/README.md).
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
PY="${ONERANKER_VENV:-.venv}/bin/python"
RUN=artifacts/runs/$PRESET
OUT=artifacts/model_repository/$PRESET
RES=perf/results

CASCADE=artifacts/runs/$PRESET-cascade
[ -f "$RUN/manifest.json" ] || "$PY" -m oneranker.cli train --preset "$PRESET" --run-dir "$RUN"
[ -f "$CASCADE/cascade.json" ] || "$PY" -m oneranker.cli train-cascade --preset "$PRESET" --unified-run "$RUN" --run-dir "$CASCADE"
"$PY" -m oneranker.cli build --preset "$PRESET" --run-dir "$RUN" --cascade-run "$CASCADE" --engine onnxruntime --out "$OUT"
"$PY" -m oneranker.cli build --preset "$PRESET" --run-dir "$RUN" --cascade-run "$CASCADE" --engine torch --out "$OUT"
"$PY" -m oneranker_perf.topology_bench --run-dir "$RUN" --repository "$OUT/onnxruntime" --out "$RES/topology"
"$PY" -m oneranker_perf.topology_bench --run-dir "$RUN" --repository "$OUT/torch" --out "$RES/topology_torch"
"$PY" -m oneranker_perf.queue_delay_bench --run-dir "$RUN" --export "$OUT/export" --delays 0,100,500 --seconds 20 --out "$RES/queue_delay"
"$PY" -m oneranker_perf.instance_layout_bench --run-dir "$RUN" --export "$OUT/export" --out "$RES/instance_layout"
"$PY" -m oneranker_perf.scaling_bench --preset paper --out "$RES/scaling"
"$PY" -m oneranker_perf.make_inputs --run-dir "$RUN" --n 64 --out-dir artifacts/perf
"$PY" -m oneranker_perf.serve_and_load --repository "$OUT/onnxruntime" --inputs artifacts/perf --out "$RES" --run-dir "$RUN" --pin
"$PY" -m oneranker_perf.train_bench --out "$RES/train"
"$PY" -m oneranker_perf.soak --repository "$OUT/onnxruntime" --requests artifacts/perf/requests.jsonl --out "$RES/soak"
