#!/usr/bin/env bash
# Rebuild the compiled core in place (development); fails loudly.
set -euo pipefail
cd "$(dirname "$0")"
rm -f src/quorumlock/_core.c  # cythonize misses changes in included .pxi files
out=$(python setup.py build_ext --inplace "$@" 2>&1) || { echo "$out" | grep -v -i warn | tail -40; exit 1; }
echo "built: $(python -c 'import quorumlock._core as c; print(c.__file__)')"
