"""Deployment helpers: shared-memory sizing, model version rollout (promote, retire, load).

python -m oneranker_deploy shm | promote | retire | latest | load   (--help on each)
"""
