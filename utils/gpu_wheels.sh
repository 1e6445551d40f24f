#!/usr/bin/env bash
# The Python packages that the lent GPU's image lacks (it has torch, torchaudio,
# transformers, numpy, scipy, sentencepiece...; see the device tool's KINDS.md), as wheels
# for its Python 3.12, into .whl/ (ignored by git): utils/bench_gpu.sh installs them there.
# Same versions as pyproject.toml / this project's venv.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    speechbrain==1.1.2 HyperPyYAML==1.2.3 ruamel.yaml==0.18.17 ruamel.yaml.clib==0.2.15 \
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
ls -l .whl
