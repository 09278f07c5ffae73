"""Deployment helpers: shared-memory sizing, model version rollout (promote, retire, load).

python -m oneranker_deploy shm | promote | retire | latest | load   (--help on each)
"""

# The oldest NGC release (YY.MM) the repository runs on. Triton 2.48 (NGC 24.07) is the first
# whose Python backend takes answers sent through a request's response sender in its default
# (non-decoupled) mode: the fused model answers that way, before its counters' IPC.
OLDEST_NGC_RELEASE = "24.07"
