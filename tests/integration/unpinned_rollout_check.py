"""Shows that the rollout test can fail: it runs `test_rollout.py` with every ensemble step left
UNPINNED (`model_version: -1`, the latest loaded version of each composing model) instead of
pinned to its release. Not collected by pytest (the name does not start with `test_`); by hand:

    PYTHONPATH=training:perf:serving:client:build:deploy:tests ONERANKER_REQUIRE_TRITON=1 \
        .venv/bin/python tests/integration/unpinned_rollout_check.py

Expected: the test FAILS with "N of M answers match no single release" (a multi-step ensemble
fed one release's tokens to the other's graphs while the rollout loaded models one at a time);
exit status 1. With pinning (what the rollout tooling does) the same test passes in CI.
"""

import re
import sys

import pytest

import oneranker_deploy.rollout as rollout

_pinned = rollout.pin_release


def _unpinned(config_text: str, version: int) -> str:
    return re.sub(r"(?m)^(\s*model_version:\s*)-?\d+\s*$", r"\g<1>-1", _pinned(config_text, version))


if __name__ == "__main__":
    rollout.pin_release = _unpinned
    test = __file__.replace("unpinned_rollout_check", "test_rollout")
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-x", test]))
