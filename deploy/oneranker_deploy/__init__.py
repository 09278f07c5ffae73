"""Deployment helpers: shared-memory sizing, model version rollout (promote, retire, load).

python -m oneranker_deploy shm | promote | retire | latest | load   (--help on each)
"""

# The oldest NGC release (YY.MM) the repository runs on. NGC 24.06 (Triton 2.47) is the first
# whose Python backend takes an answer sent through a request's response sender in its default
# (non-decoupled) mode: the fused model answers a lone request that way, before its counters' IPC.
OLDEST_NGC_RELEASE = "24.06"
