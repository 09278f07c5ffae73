# syntax=docker/dockerfile:1
# The oneranker perf image: the NGC tritonserver SDK (perf_analyzer, same release as the
# server) plus the perf suite and locust in their own package folder.
#
# perf_analyzer comes with the SDK image. The Python side (locust, a current tritonclient,
# numpy<2) goes into /opt/perfenv with `pip install --target`, first on PYTHONPATH, so it never
# fights the SDK's own Python packages (shared/docs/platform.md: tritonclient's and locust's
# pins clash when they share an environment).
ARG NGC_TAG
FROM nvcr.io/nvidia/tritonserver:${NGC_TAG}-py3-sdk
ARG NGC_TAG
ENV ONERANKER_NGC_TAG=${NGC_TAG} \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

COPY deploy/requirements-perf.txt /tmp/requirements-perf.txt
RUN python3 -m pip install --target /opt/perfenv -r /tmp/requirements-perf.txt

# The project's torch-free packages, used from source the way the CPU machines run them.
WORKDIR /opt/oneranker
COPY training training
COPY build build
COPY client client
COPY perf perf
ENV PYTHONPATH=/opt/perfenv:/opt/oneranker/training:/opt/oneranker/build:/opt/oneranker/client:/opt/oneranker/perf \
    PATH=/opt/perfenv/bin:${PATH} \
    ONERANKER_PA_DIR=/opt/pa

# oneranker_perf.perf_analyzer_bin looks for perf_analyzer as scripts/bootstrap.sh installs it on the
# CPU machines: $ONERANKER_PA_DIR/bin/perf_analyzer plus lib/libb64.so.0d and lib/libcudart.so.12
# (the 2.50 wheel's binary loads those). Point that layout at the SDK image's own binary, which
# finds its own libraries; the lib/ links are the ones it resolves (or /dev/null when it links
# none: they only satisfy perf_analyzer_bin's existence check, nothing loads them under that name).
RUN set -eu; \
    pa="$(command -v perf_analyzer)"; \
    mkdir -p /opt/pa/bin /opt/pa/lib; \
    ln -s "$pa" /opt/pa/bin/perf_analyzer; \
    for pair in libb64:libb64.so.0d libcudart:libcudart.so.12; do \
      found="$(ldd "$pa" | awk -v l="${pair%%:*}" '$1 ~ l {print $3; exit}')"; \
      ln -s "${found:-/dev/null}" "/opt/pa/lib/${pair#*:}"; \
    done; \
    locust --version; \
    python3 -c "import numpy, tritonclient.grpc, oneranker_client, oneranker_perf.perf_analyzer_bin as t; \
print(t.perf_analyzer_command()[0])"
