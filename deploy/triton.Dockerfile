# syntax=docker/dockerfile:1
# The oneranker Triton image: the NGC tritonserver release plus exactly the Python packages the
# Python models import (deploy/requirements-triton.txt) and the oneranker package itself.
#
#   docker compose --env-file deploy/.env build triton      (NGC_TAG comes from deploy/.env)
#
# NGC_TAG has no default: the image must come from the same NGC release as the builder that
# compiled the TensorRT plans it serves (docker-compose.yml passes the one NGC_TAG to both).
ARG NGC_TAG
FROM nvcr.io/nvidia/tritonserver:${NGC_TAG}-py3
ARG NGC_TAG
ENV ONERANKER_NGC_TAG=${NGC_TAG} \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# One OpenMP / BLAS thread per Python stub: each stub is one model instance whose engine threads
# come from its config (intra_op_threads); the same values as the local launcher's
# (oneranker_serving.triton_install.STUB_THREAD_ENV).
ENV OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1

# The Python backend stub embeds the image's python3 and imports from its site-packages.
COPY deploy/requirements-triton.txt /tmp/requirements-triton.txt
RUN python3 -m pip install -r /tmp/requirements-triton.txt

# The TensorRT version of this image (its libnvinfer, used by Triton's TensorRT backend), for
# triton-start.sh to compare with the version that built the plans (<repository>/.tensorrt_version).
RUN set -eu; \
    so="$( { ldconfig -p | awk '/libnvinfer\.so\.[0-9]+ / {print $NF}'; \
           find /usr /opt -name 'libnvinfer.so.[0-9]*' 2>/dev/null; } | head -n 1)"; \
    [ -n "$so" ] || { echo "no libnvinfer in the tritonserver image" >&2; exit 1; }; \
    mkdir -p /opt/oneranker; \
    basename "$(readlink -f "$so")" | sed -n 's/^libnvinfer\.so\.//p' >/opt/oneranker/tensorrt_version; \
    echo "TensorRT $(cat /opt/oneranker/tensorrt_version)"

# The serving package and the client's contract, without their dependencies: the Python models
# import only oneranker_serving and oneranker_client.contract; no training code enters the image.
COPY serving /tmp/oneranker/serving
COPY client /tmp/oneranker/client
RUN python3 -m pip install --no-deps /tmp/oneranker/serving /tmp/oneranker/client && rm -rf /tmp/oneranker

# Fail the image build, not the first model load: every import the Python models make works,
# and nothing pulled numpy up to 2.x.
RUN python3 -c "import sys, numpy, safetensors.numpy, onnxruntime; \
import oneranker_serving.triton.models, oneranker_serving.runners.onnxruntime, oneranker_serving.probe, oneranker_client.contract; \
sys.exit(0 if numpy.__version__.startswith('1.') else 'numpy must be < 2, got ' + numpy.__version__)"

COPY deploy/triton-start.sh /opt/oneranker/triton-start.sh

# Serve as the image's unprivileged user, never root (Triton's secure-deployment advice; the
# Kubernetes Deployment runs uid 1000 with a read-only root filesystem, docker-compose.yml drops
# every capability). Fail the build if the NGC image no longer has that user as uid 1000.
RUN test "$(id -u triton-server)" = 1000 || { echo "no user triton-server with uid 1000 in the image" >&2; exit 1; }
USER triton-server
EXPOSE 8000 8001 8002
CMD ["/opt/oneranker/triton-start.sh", "--model-repository=/models"]
