# syntax=docker/dockerfile:1
# The oneranker builder image: NGC PyTorch (its own CUDA torch build and TensorRT) plus the
# project's other dependencies. Trains, exports ONNX, compiles TensorRT plans and renders the
# Triton repositories (deploy/builder.sh).
#
# NGC_TAG has no default: TensorRT plans only load in the tritonserver of the NGC release whose
# TensorRT built them, so builder and triton must use the same tag (docker-compose.yml passes
# one NGC_TAG to both).
ARG NGC_TAG
FROM nvcr.io/nvidia/pytorch:${NGC_TAG}-py3
ARG NGC_TAG
ENV ONERANKER_NGC_TAG=${NGC_TAG} \
    ONERANKER_ARTIFACTS=/artifacts \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Everything the project needs except torch and numpy, which stay the image's own builds
# (deploy/requirements-builder.txt = pyproject dependencies minus those two). The build fails
# if pip replaced torch anyway.
COPY deploy/requirements-builder.txt /tmp/requirements-builder.txt
RUN set -eu; \
    python -c "import torch, tensorrt; print(torch.__version__, tensorrt.__version__)" >/tmp/before; \
    python -m pip install -r /tmp/requirements-builder.txt; \
    python -c "import torch, tensorrt; print(torch.__version__, tensorrt.__version__)" >/tmp/after; \
    if ! cmp -s /tmp/before /tmp/after; then \
      echo "pip replaced the image's torch/TensorRT: $(cat /tmp/before) -> $(cat /tmp/after)" >&2; exit 1; \
    fi

# The source tree (editable: `oneranker build` renders from model_repository/ templates).
WORKDIR /opt/oneranker
COPY pyproject.toml README.md ./
COPY training training
COPY build build
COPY client client
COPY perf perf
COPY serving serving
COPY model_repository model_repository
COPY deploy/oneranker_deploy deploy/oneranker_deploy
COPY deploy/builder.sh deploy/builder.sh
RUN python -m pip install --no-deps -e . && oneranker --help >/dev/null && python -m oneranker_deploy --help >/dev/null

CMD ["deploy/builder.sh", "ensure"]
