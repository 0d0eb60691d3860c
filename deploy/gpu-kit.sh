#!/usr/bin/env bash
# The kit for a GPU run on a machine with no network and at most 64 MiB per transfer
# (README: "A GPU run"). Here, with the registries:   bash deploy/gpu-kit.sh fetch
# There, in the repository root, one transfer each:   bash deploy/gpu-kit.sh install-pytriton   (carry .kit/pytriton)
#                                                     bash deploy/gpu-kit.sh install-serving    (carry .kit/serving)
# The venv sees the machine's own packages (torch, triton, transformers, onnx) and puts
# numpy 1.26 in front of its numpy 2: Triton's python stub corrupts tensors under numpy 2.
# CuPy 14 needs numpy 2, so served models search with torch there; the kernel benchmarks
# and the gpu tests run with the machine's own python3, where CuPy works.
set -euo pipefail
VENV=${VENV:-/tmp/sn-venv}
PLATFORMS=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64)
fetch() {
  local get=(python3 -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}")
  rm -rf .kit && mkdir -p .kit/pytriton .kit/serving
  "${get[@]}" --no-deps -d .kit/pytriton nvidia-pytriton==0.7.0
  # tritonclient, grpc and Locust with what they need; numpy 1.26 for the stub.
  "${get[@]}" -d .kit/serving numpy==1.26.4 "tritonclient[grpc]==2.73.0" grpcio==1.85.1 protobuf==6.33.6 \
    locust==2.47.0 hdrhistogram==0.10.8
  rm -f .kit/serving/setuptools-* .kit/serving/pytest-* .kit/serving/pygments-*  # the machine has its own
  du -sh .kit/pytriton .kit/serving
}
venv() { [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"; }
case "${1:-}" in
  fetch) fetch ;;
  install-pytriton) venv; "$VENV/bin/python" -m pip install -q --no-index --no-deps .kit/pytriton/*.whl ;;
  install-serving) venv; "$VENV/bin/python" -m pip install -q --no-index --no-deps .kit/serving/*.whl
                   "$VENV/bin/python" -c "import numpy, tritonclient.grpc, locust, pytriton; print('kit ready: numpy', numpy.__version__)" ;;
  *) echo "usage: $0 fetch|install-pytriton|install-serving" >&2; exit 2 ;;
esac
