#!/usr/bin/env bash
# Build llama-cpp-python from source (no prebuilt CPU wheel; about 20 minutes on 2 cores) into the active
# environment, then check an xtune GGUF in llama.cpp itself: scripts/check_llama_cpp.py. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-2}" pip install --no-binary llama-cpp-python llama-cpp-python
python scripts/check_llama_cpp.py "$@"
