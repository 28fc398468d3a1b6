#!/usr/bin/env bash
# The numerical tests again on two other CPU kernel paths of this same machine (DESIGN.md,
# "Tests that hold on any machine"): ATen's portable kernels instead of AVX2/AVX-512
# (ATEN_CPU_CAPABILITY=default) and MKL restricted to SSE4.2 (MKL_ENABLE_INSTRUCTIONS=SSE4_2).
# A tolerance that holds on one path only is fitted to this machine, not to the computation.
#
#   tests/kernel_paths.sh            # both settings
#   tests/kernel_paths.sh -x -q      # extra pytest arguments go to every run
#
# Selection: the files whose tests compare numbers (assert_close against a reference), minus
# what has no tolerance at stake or is slow for no extra kernel path: shape/finiteness checks,
# memory measurements, Hugging Face parity (its import alone takes seconds), poolingformer at
# N=300 (same kernels as N=77), and half precision (test_half_precision.py and the
# long-sequence fp16/bf16 checks: minutes of slow half CPU kernels; their worst error/tolerance
# ratios were identical under both settings and the default path, 0.19 at most).
set -u
cd "$(dirname "$0")/.."
TESTS=(tests/test_variants_contract.py tests/test_modern_variants.py
       tests/test_linear_family.py tests/test_bigbird.py tests/test_windowed_variants.py
       tests/test_positions.py tests/test_new_positions.py tests/test_decode.py)
SELECT="not long_sequence and not memory and not huggingface and not shape_and_finite"
SELECT="$SELECT and not 300 and not never_builds"
# The two settings run side by side, one thread each (the tests' tensors are too small to
# gain from a second thread), and their outputs are printed one after the other.
logs=$(mktemp -d)
pids=()
for setting in ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2; do
    env "$setting" OMP_NUM_THREADS=1 python3 -m pytest -q -p no:cacheprovider -k "$SELECT" \
        "${TESTS[@]}" "$@" > "$logs/$setting.log" 2>&1 &
    pids+=($!)
done
rc=0
for i in 0 1; do
    wait "${pids[$i]}" || rc=1
done
for setting in ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2; do
    echo "== $setting"
    cat "$logs/$setting.log"
done
echo "== kernel paths: $SECONDS s, exit $rc"
rm -rf "$logs"
exit $rc
