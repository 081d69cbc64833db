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

.PHONY: all lib clean help test-c

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

# test-c: the engine's C test (batched == token-by-token logits, rewind, errors)
#   on a model file: make test-c MODEL=path.rq4
#   under valgrind:  valgrind --leak-check=full --error-exitcode=1 build/test_engine MODEL
#   (build it with CFLAGS="-O1 -g" for readable traces)
$(BUILD)/test_engine: tests/c/test_engine.c $(BUILD)/librunq4.a
	$(CC) $(CFLAGS) $(BASE_CFLAGS) -Isrc $< $(BUILD)/librunq4.a -o $@ $(LDLIBS)

test-c: $(BUILD)/test_engine
	$(BUILD)/test_engine $(MODEL)

# clean: remove every build output
clean:
	rm -rf $(BUILD)

# help: this list
help:
	@grep -E '^# [a-z-]+:' Makefile | sed 's/^# //'
