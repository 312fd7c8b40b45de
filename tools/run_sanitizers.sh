#!/usr/bin/env bash
# Run the test suite on instrumented builds of rnnfast's kernels: see docs/SANITIZERS.md.
#
#   tools/run_sanitizers.sh [debug|asan|valgrind|all]      (default: all)
#
# Each mode copies the repository (without .git, build/, .venv*, caches and the compiled extension) into
# its own directory under $RF_SANITIZER_DIR (default: a new /tmp/rnnfast-sanitizers.XXXXXX), builds the
# extension there and runs there: the in-place build of the working tree is never touched.
# Exit status: 0 when every selected mode passed.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${RF_SANITIZER_DIR:-$(mktemp -d /tmp/rnnfast-sanitizers.XXXXXX)}
# The real interpreter, not a pyenv shim (a shell script: valgrind would instrument bash instead).
PY=$(python3 -c 'import sys; print(sys.executable)')
KERNEL_TESTS="tests/test_ops.py tests/test_ops_invariance.py tests/test_ops_validation.py"
# Reliability tests that make sense in-process under a sanitizer: not the RSS measurements (ASan's
# quarantine keeps freed memory), not the RLIMIT_AS children (ASan reserves terabytes of shadow address
# space), not the 2 GiB indexing case (minutes at -O0 under ASan).
RELIABILITY="tests/test_reliability_input.py tests/test_reliability_numerics.py tests/test_reliability_concurrency.py"
RELIABILITY_SKIP="not huge_thread_count and not small_address_space and not byte_offsets"
status=0

copy_repo() {  # copy_repo NAME -> $WORK/NAME
    local dest="$WORK/$1"
    rm -rf "$dest" && mkdir -p "$dest"
    (cd "$REPO" && tar --exclude='./.git' --exclude='./.venv*' --exclude='./build' --exclude='./.hypothesis' \
        --exclude='./.pytest_cache' --exclude='./rnnfast/_kernels*.so' --exclude='./src_ext/_kernels.c' -cf - .) \
        | (cd "$dest" && tar -xf -)
    echo "$dest"
}

build() {  # build DIR [env assignments...]: RNNFAST_DEBUG=1 build (-O0 -g, Cython bounds checks) in DIR
    local dir=$1; shift
    (cd "$dir" && env RNNFAST_DEBUG=1 "$@" "$PY" setup.py build_ext --inplace --force > build.log 2>&1) \
        || { echo "build failed, see $dir/build.log"; tail -20 "$dir/build.log"; return 1; }
}

run_debug() {
    echo "== debug build (RNNFAST_DEBUG=1: -O0 -g, Cython boundscheck/wraparound/initializedcheck on)"
    local dir; dir=$(copy_repo debug)
    build "$dir" || return 1
    (cd "$dir" && "$PY" -m pytest -q -p no:cacheprovider $KERNEL_TESTS tests/test_cells.py tests/test_layers.py \
        $RELIABILITY tests/test_reliability_memory.py -k "not byte_offsets")
}

run_asan() {
    echo "== AddressSanitizer (-fsanitize=address -fno-omit-frame-pointer, on top of the debug build)"
    local dir; dir=$(copy_repo asan)
    build "$dir" CFLAGS="-fsanitize=address -fno-omit-frame-pointer" LDFLAGS="-fsanitize=address" || return 1
    local libasan; libasan=$(gcc -print-file-name=libasan.so)
    # Python itself is not instrumented: libasan must be loaded first (LD_PRELOAD); Python's own allocations
    # are not leaks we can act on (detect_leaks=0); an impossible allocation returns NULL -> MemoryError
    # (allocator_may_return_null=1) as it does without ASan.
    (cd "$dir" && env LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:abort_on_error=0 \
        "$PY" -m pytest -q -p no:cacheprovider $KERNEL_TESTS tests/test_cells.py tests/test_layers.py $RELIABILITY \
        -k "$RELIABILITY_SKIP" 2>&1 | tee "$dir/asan.log" | tail -5; exit "${PIPESTATUS[0]}") || return 1
    if grep -q "ERROR: AddressSanitizer" "$dir/asan.log"; then
        grep -A40 "ERROR: AddressSanitizer" "$dir/asan.log" | head -80
        return 1
    fi
    # The instrumentation works: a y one element short, handed to the time loop behind ops' back, must be
    # reported as a heap-buffer-overflow in the kernel.
    cat > "$dir/asan_canary.py" <<'PYEOF'
import numpy as np
from rnnfast import ops, _kernels
real_run = _kernels.run
_kernels._check_sizes = lambda *args: None   # the binding's own size check would stop the canary first
def short_y(cell, backward, dtype, a, *args, **kw):
    if not backward:
        a = dict(a, y=np.empty(a["y"].size - 1, a["y"].dtype))
    return real_run(cell, backward, dtype, a, *args, **kw)
ops._kernels.run = short_y
ops.rnn_forward(np.ones((3, 2, 4)), None, np.ones((5, 4)), np.ones((5, 5)))
PYEOF
    (cd "$dir" && env LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 "$PY" asan_canary.py > asan_canary.log 2>&1)
    if grep -q "ERROR: AddressSanitizer: heap-buffer-overflow" "$dir/asan_canary.log"; then
        echo "canary: the deliberate overflow was caught ($(grep -m1 ' in .*src_ext/' "$dir/asan_canary.log" | sed 's/^ *//'))"
    else
        echo "canary: the deliberate overflow was NOT caught: ASan is not active"; return 1
    fi
    # This CPU runs one of the target_clones (avx512 here; valgrind covers avx2): the portable "default"
    # path gets its own ASan build (-DRNNFAST_NO_CLONES) and the kernel tests.
    echo "== AddressSanitizer, portable path (-DRNNFAST_NO_CLONES)"
    local gdir; gdir=$(copy_repo asan_generic)
    build "$gdir" CFLAGS="-fsanitize=address -fno-omit-frame-pointer -DRNNFAST_NO_CLONES" \
        LDFLAGS="-fsanitize=address" || return 1
    (cd "$gdir" && env LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:abort_on_error=0 \
        "$PY" -c "from rnnfast import _kernels; print('SIMD path:', _kernels.simd_path())" &&
     env LD_PRELOAD="$libasan" \
        ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:abort_on_error=0 \
        "$PY" -m pytest -q -p no:cacheprovider $KERNEL_TESTS 2>&1 | tee "$gdir/asan.log" | tail -2
     exit "${PIPESTATUS[0]}") || return 1
    ! grep -q "ERROR: AddressSanitizer" "$gdir/asan.log"
}

# Error contexts valgrind reports for a script, as "kind | top frame" lines (sorted, unique).
valgrind_contexts() {
    awk '/^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and|Argument)/ {
             kind = $0; sub(/^==[0-9]+== /, "", kind); getline; sub(/^==[0-9]+== +/, "", $0);
             sub(/0x[0-9A-F]+: /, "", $0); print kind " | " $0 }' "$1" | sort -u
}

run_valgrind() {
    echo "== valgrind memcheck (debug build, PYTHONMALLOC=malloc; every cell forward/backward once)"
    command -v valgrind > /dev/null || { echo "valgrind is not installed"; return 1; }
    local dir; dir=$(copy_repo valgrind)
    build "$dir" || return 1
    write_workload "$dir/sanitizer_workload.py"
    local vg=(valgrind --tool=memcheck --num-callers=40 --track-origins=yes)
    # The control: the same interpreter importing numpy and rnnfast without calling a kernel. CPython and the
    # dynamic loader report errors of their own under memcheck; only contexts beyond the control count.
    (cd "$dir" && env PYTHONMALLOC=malloc "${vg[@]}" "$PY" -c \
        "import numpy as np, rnnfast, rnnfast.layers; a = np.ones((50, 50)); print((a @ a).sum())" \
        > valgrind_control.log 2>&1)
    (cd "$dir" && env PYTHONMALLOC=malloc "${vg[@]}" "$PY" sanitizer_workload.py > valgrind.log 2>&1) \
        || { echo "the workload failed under valgrind: $dir/valgrind.log"; tail -30 "$dir/valgrind.log"; return 1; }
    grep -h "ERROR SUMMARY" "$dir/valgrind_control.log" | sed 's/^/control:  /'
    grep -h "ERROR SUMMARY" "$dir/valgrind.log" | sed 's/^/workload: /'
    local extra
    extra=$(comm -13 <(valgrind_contexts "$dir/valgrind_control.log") <(valgrind_contexts "$dir/valgrind.log"))
    if grep -qE "_kernels|kernels\.c|rnn\.h|lstm\.h|gru\.h|common\.h" "$dir/valgrind.log" || [ -n "$extra" ]; then
        echo "error contexts not in the control run:"; echo "$extra"
        echo "full log: $dir/valgrind.log"
        return 1
    fi
    echo "no error context beyond the control run; none in rnnfast's code"
}

# The valgrind workload: every kernel entry point once, small sizes (a few minutes under memcheck).
write_workload() {
    cat > "$1" <<'PYEOF'
"""Exercise every kernel entry point once, small sizes, for valgrind / ASan: every cell, both dtypes, forward and
backward, lengths (with 0 and T), reverse, bias / no bias, LSTM projection and peepholes, GRU both forms, a
tail block (H not a multiple of the SIMD width), 1 and 2 threads (hidden split and batch split)."""
import numpy as np
import rnnfast
from rnnfast import ops

rng = np.random.default_rng(0)
n_calls = 0
for threads in (1, 2):
    rnnfast.set_num_threads(threads)
    for dtype in (np.float32, np.float64):
        # B = 3: hidden split with 2 threads if the step is big enough (H = 72); B = 40: batch split.
        for T, B, I, H, P in ((4, 3, 5, 7, 3), (3, 3, 5, 72, 71), (3, 40, 2, 72, 5)):
            def u(*shape):
                return rng.uniform(-0.5, 0.5, shape).astype(dtype)
            lengths = rng.integers(0, T + 1, B)
            lengths[0], lengths[-1] = T, 0
            x = u(T, B, I)
            for reverse in (False, True):
                for lens in (None, lengths):
                    for nl in ("tanh", "relu"):
                        y, h, s = ops.rnn_forward(x, u(B, H), u(H, I), u(H, H), u(H), u(H), nonlinearity=nl,
                                                  lengths=lens, reverse=reverse, training=True)
                        ops.rnn_backward(u(T, B, H), u(B, H), s)
                        n_calls += 2
                    for after in (True, False):
                        y, h, s = ops.gru_forward(x, u(B, H), u(3 * H, I), u(3 * H, H), u(3 * H), None,
                                                  reset_after=after, lengths=lens, reverse=reverse, training=True)
                        ops.gru_backward(u(T, B, H), None, s)
                        n_calls += 2
                    for proj in (False, True):
                        for peep in (False, True):
                            K = P if proj else H
                            y, h, c, s = ops.lstm_forward(
                                x, u(B, K), u(B, H), u(4 * H, I), u(4 * H, K), None, u(4 * H),
                                w_hr=u(P, H) if proj else None, w_peep=u(3, H) if peep else None,
                                lengths=lens, reverse=reverse, training=True)
                            ops.lstm_backward(u(T, B, K), u(B, K), u(B, H), s)
                            ops.lstm_forward(x, None, None, u(4 * H, I), u(4 * H, K), w_hr=u(P, H) if proj else None,
                                             lengths=lens, reverse=reverse)
                            n_calls += 3
# The layers on top (one of each, bidirectional, 2 layers, dropout).
for cls, kw in ((rnnfast.RNN, {}), (rnnfast.GRU, dict(reset_after=False)), (rnnfast.LSTM, dict(proj_size=2))):
    layer = cls(3, 5, num_layers=2, bidirectional=True, dropout=0.3, seed=0, **kw)
    out, _ = layer.forward(rng.standard_normal((4, 2, 3)).astype(np.float32), lengths=[4, 1], train=True)
    layer.backward(np.ones_like(out))
    n_calls += 1
print(f"rnnfast valgrind/asan script: {n_calls} calls OK")
PYEOF
}

mode=${1:-all}
case "$mode" in
    debug) run_debug || status=1 ;;
    asan) run_asan || status=1 ;;
    valgrind) run_valgrind || status=1 ;;
    all) run_debug || status=1; run_asan || status=1; run_valgrind || status=1 ;;
    *) echo "usage: $0 [debug|asan|valgrind|all]"; exit 2 ;;
esac
echo "== work directory: $WORK; status: $status"
exit $status
