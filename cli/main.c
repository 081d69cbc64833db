/* runq4: the standalone binary. One .rq4 file in, generated text out; no
 * Python. The short flags follow llama2.c's run.c/runq.c; the long options
 * (USAGE) are those of python -m pyrunq4.generate, with the same meanings and
 * defaults:
 *
 *   runq4 MODEL.rq4 [-t temperature] [-p top_p] [--top-k k] [--min-p F]
 *         [--repeat-penalty F] [--repeat-last-n N] [-s seed]
 *         [-n max_new_tokens] [-i prompt] [--chat | -m generate|chat]
 *         [-y system_prompt] [-T threads] [-c context] [-k f32|f16]
 *         [-M max_memory_MiB] [--prompt-cache FILE] [-v] [--version] [-h]
 *
 * Generated text goes to stdout only (streamed, flushed per token); the
 * statistics (prompt and decode tokens/s, peak resident memory) go to
 * stderr. Every known error is one line on stderr and exit status 1.
 *
 * The tokenizer is the C one (src/tokenizer/) built from the file's
 * tokenizer.json blob. Prompts are encoded as pyrunq4 does: BOS (when the
 * model has one) + the text, with special-token text taken as plain text, so
 * that at temperature 0 the output equals pyrunq4's Model.generate. Chat
 * mode: chat.c.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "runq4.h"
#include "tokenizer/tokenizer.h"

#define DEFAULT_MAX_NEW_TOKENS 256

static const char *USAGE =
    "Usage:   runq4 MODEL.rq4 [options]\n"
    "Example: runq4 model.rq4 -n 256 -i \"Once upon a time\"\n"
    "Options (the long ones are python -m pyrunq4.generate's too):\n"
    "  -i, --prompt TEXT         the prompt (chat: the first user message; without\n"
    "                            it, chat reads one message per line from stdin)\n"
    "  -n, --max-new-tokens N    tokens to generate (per answer in chat), default 256;\n"
    "                            0: none; -1: until an end token or the context is full\n"
    "  -t, --temperature F       temperature in [0,inf), default 0 (greedy)\n"
    "  -p, --top-p F             top-p (nucleus) in (0,1], default 1 (no cut)\n"
    "      --top-k N             keep the N most likely tokens, default 0 (off)\n"
    "      --min-p F             keep the tokens at least F times as likely as the\n"
    "                            most likely one, F in [0,1], default 0 (off)\n"
    "      --repeat-penalty F    divide the positive logits of the ids among the last\n"
    "                            --repeat-last-n (multiply the negative ones) by F > 0,\n"
    "                            default 1 (off)\n"
    "      --repeat-last-n N     the ids the penalty looks back over, default 64\n"
    "  -s, --seed N              random seed in [0, 2^64), default: random\n"
    "  -T, --threads N           threads in [1, RQ4_MAX_THREADS], default: the CPUs\n"
    "                            this process may use\n"
    "  -c, --ctx N               context length (KV cache), default min(4096, the\n"
    "                            model's)\n"
    "  -k, --kv-type f16|f32     KV cache element type, default f16\n"
    "      --chat                chat mode with the model's template (also -m chat;\n"
    "                            -m generate: plain completion, the default)\n"
    "  -y, --system TEXT         system prompt (chat mode)\n"
    "  -M, --max-memory MIB      refuse to start if weights + KV cache + buffers\n"
    "                            would exceed this many MiB (default: no limit)\n"
    "      --prompt-cache FILE   reuse the KV cache of the prompt saved in FILE for the\n"
    "                            prompt's common prefix (chat: of the first turn), and\n"
    "                            save the prompt's there when it differs; FILE is tied\n"
    "                            to this model file, -c and -k\n"
    "  -v                        also print the prompt and generated token ids on stderr\n"
    "      --version             the version\n"
    "  -h, --help                this help\n"
    "Text goes to stdout, statistics to stderr.\n";

/* ------------------------------------------------------------------------ */
/* errors: one line on stderr, exit 1                                        */

void die(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++)   /* one line, whatever the arguments quoted in it hold */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    fprintf(stderr, "runq4: error: %s\n", msg);
    exit(1);
}

static long parse_long(const char *flag, const char *s, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE) die("%s expects an integer, got '%s'", flag, s);
    if (v < lo || v > hi) die("%s must be in [%ld, %ld], got %ld", flag, lo, hi, v);
    return v;
}

static float parse_float(const char *flag, const char *s) {
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    /* ERANGE below 1 is an underflow (1e-45 is a subnormal, 1e-50 becomes 0): the value stands */
    if (end == s || *end != '\0' || !isfinite(v) || (errno == ERANGE && fabsf(v) >= 1.0f))
        die("%s expects a finite number, got '%s'", flag, s);
    return v;
}

static uint64_t parse_u64(const char *flag, const char *s) {
    char *end;
    errno = 0;
    /* strtoull skips leading whitespace and takes a sign ("\t-1" would be 2^64 - 1): digits only */
    if (!(*s >= '0' && *s <= '9')) die("%s expects a non-negative integer, got '%s'", flag, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE) die("%s expects a non-negative integer, got '%s'", flag, s);
    return (uint64_t)v;
}

/* ------------------------------------------------------------------------ */
/* time and memory                                                           */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_maxrss / 1024.0;   /* Linux: KiB -> MiB */
}

/* ------------------------------------------------------------------------ */
/* output                                                                    */

static int g_stdout_closed = 0;   /* the reader went away (| head -c 20) */

/* Writes to stdout. A reader that went away (EPIPE) ends the run quietly;
 * any other failure (a full disk, an I/O error) loses the output, which is
 * an error, not success. */
static void emit(const char *s, size_t n) {
    if (g_stdout_closed || n == 0) return;
    errno = 0;
    if (fwrite(s, 1, n, stdout) != n || fflush(stdout) != 0) {
        if (errno != EPIPE) die("writing the output: %s", errno ? strerror(errno) : "failed");
        g_stdout_closed = 1;
    }
}

/* Descriptors 0 and 2 closed by the caller would be taken by the next
 * open(), the model file, which chat mode would then read as the user's
 * messages: /dev/null takes them instead. A closed stdout loses everything
 * the run would print, so it is an error. */
static void check_std_fds(void) {
    struct stat st;
    for (int fd = 0; fd <= 2; fd++) {
        if (fstat(fd, &st) == 0) continue;
        int null = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (null >= 0 && null != fd) {
            dup2(null, fd);
            close(null);
        }
        if (fd == STDOUT_FILENO) die("standard output is closed: the output would be lost");
    }
}

/* ------------------------------------------------------------------------ */
/* the run                                                                   */

typedef struct run {
    rq4_model *model;
    const rq4_config *cfg;
    rq4_tokenizer *tok;
    rq4_sampler *sampler;
    float *logits;          /* (vocab_size) */
    int32_t *ids;           /* scratch for encoding */
    size_t ids_cap;
    int32_t max_new;        /* most new tokens per generation, -1: no limit */
    int verbose;            /* -v: token ids on stderr */
    const char *prompt_cache; /* --prompt-cache FILE, or NULL */
    /* statistics */
    int64_t prompt_tokens, gen_tokens;
    double prompt_s, gen_s;
    int context_full;
} run;

/* Encodes text (special: parse special-token text) after an optional BOS into
 * r->ids; returns the count. */
static int32_t encode(run *r, const char *text, size_t len, int special, int32_t bos) {
    size_t need = len + 2;
    if (need > (size_t)INT32_MAX || need > SIZE_MAX / sizeof(int32_t)) die("the prompt is too long");
    if (need > r->ids_cap) {
        int32_t *p = realloc(r->ids, need * sizeof(int32_t));
        if (!p) die("out of memory encoding the prompt");
        r->ids = p;
        r->ids_cap = need;
    }
    int32_t n = 0, off = 0;
    if (bos >= 0) r->ids[off++] = bos;
    rq4_error err;
    if (rq4_tokenizer_encode(r->tok, text, len, special, r->ids + off, (int32_t)(r->ids_cap - (size_t)off), &n, &err) !=
        RQ4_OK)
        die("%s", err.message);
    return n + off;
}

/* Feeds ids[0..n) and leaves the logits of the last in r->logits. */
static void feed(run *r, const int32_t *ids, int32_t n) {
    rq4_error err;
    int32_t room = r->cfg->n_ctx - rq4_position(r->model);
    if (n > room) {
        if (rq4_position(r->model) == 0)
            die("the prompt's %d tokens do not fit in the context of %d (use -c)", n, r->cfg->n_ctx);
        die("the conversation no longer fits in the context of %d tokens (%d more needed, %d left; use -c)",
            r->cfg->n_ctx, n, room);
    }
    double t0 = now_s();
    if (rq4_forward(r->model, ids, n, r->logits, 0, &err) != RQ4_OK) die("%s", err.message);
    r->prompt_s += now_s() - t0;
    r->prompt_tokens += n;
}

/* Feeds a prompt through --prompt-cache: the saved state's common prefix
 * with ids is kept (all but the last id at most: its logits are needed) and
 * only the rest is fed; the prompt's state is saved when it differs from the
 * file's. A missing file is silently made; one that does not fit (another
 * model, -c or -k, corrupt) is reported on stderr and rewritten. */
static void feed_prompt(run *r, const int32_t *ids, int32_t n) {
    rq4_error err;
    int32_t *saved = malloc(sizeof(int32_t) * (size_t)r->cfg->n_ctx), n_saved = 0, keep = 0;
    if (!saved) die("out of memory for the prompt cache");
    double t0 = now_s();
    if (rq4_load_state(r->model, r->prompt_cache, saved, r->cfg->n_ctx, &n_saved, &err) == RQ4_OK) {
        while (keep < n_saved && keep < n - 1 && saved[keep] == ids[keep]) keep++;
        if (rq4_rewind(r->model, keep, &err) != RQ4_OK) die("%s", err.message);
    } else if (!(err.code == RQ4_ERR_IO && access(r->prompt_cache, F_OK) != 0)) {
        fprintf(stderr, "runq4: prompt cache not used: %s\n", err.message);
    }
    r->prompt_s += now_s() - t0;
    fprintf(stderr, "runq4: prompt cache %s: %d of %d prompt tokens reused\n", r->prompt_cache, keep, n);
    feed(r, ids + keep, n - keep);
    int same = n_saved == n && memcmp(saved, ids, sizeof(int32_t) * (size_t)n) == 0;
    if (!same && rq4_save_state(r->model, r->prompt_cache, ids, n, &err) != RQ4_OK) die("%s", err.message);
    free(saved);
}

static void print_ids(const char *what, const int32_t *ids, int64_t n) {
    fprintf(stderr, "runq4: %s ids (%lld):", what, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Samples and streams tokens until an end token, the step limit or a full
 * context, one rq4_decode step per token (each piece is shown as it comes).
 * Returns the last generated token when it is not in the KV cache yet
 * (stopped by the step limit or a full context), else -1 (stopped on an end
 * token, which is not fed either). */
static int32_t generate(run *r) {
    int32_t count = 0, pending = -1;
    if (r->max_new == 0) return -1;
    double t0 = now_s();
    int32_t *gen = NULL;
    size_t gen_cap = 0;
    for (;;) {
        int32_t next, n, stop;
        rq4_error err;
        if (rq4_decode(r->model, r->sampler, r->logits, pending, 1, &next, &n, &stop, &err) != RQ4_OK)
            die("%s", err.message);
        if (n == 0) {
            if (stop == RQ4_STOP_EOS) pending = -1;
            else r->context_full = 1;   /* pending does not fit */
            break;
        }
        pending = next;
        if (r->verbose) {
            if ((size_t)count >= gen_cap) {
                gen_cap = gen_cap ? 2 * gen_cap : 256;
                int32_t *g = realloc(gen, gen_cap * sizeof(int32_t));
                if (!g) die("out of memory");
                gen = g;
            }
            gen[count] = next;
        }
        uint32_t plen;
        const char *piece = rq4_tokenizer_piece(r->tok, next, &plen);
        if (piece) emit(piece, plen);
        count++;
        r->gen_tokens++;
        if ((r->max_new >= 0 && count >= r->max_new) || g_stdout_closed) break;
    }
    r->gen_s += now_s() - t0;
    if (r->verbose) print_ids("generated", gen, count);
    free(gen);
    return pending;
}

/* Reads one line of stdin (without its newline) into b; 0 at EOF. */
static int read_line(sbuf *b) {
    b->len = 0;
    int ch, any = 0;
    while ((ch = getchar()) != EOF) {
        any = 1;
        if (ch == '\n') break;
        char cc = (char)ch;
        sb_add(b, &cc, 1);
    }
    if (b->len && b->s[b->len - 1] == '\r') b->s[--b->len] = 0;
    if (!b->s) sb_add(b, "", 0);
    return any;
}

static void run_chat(run *r, const char *prompt, const char *system) {
    chat c;
    detect_chat(r->model, r->tok, &c);
    int interactive = prompt == NULL, first = 1;
    int32_t pending = -1;
    chat_ids t = {0};
    t.tok = r->tok;
    sbuf line = {0};
    for (;;) {
        const char *user = prompt;
        size_t user_len = prompt ? strlen(prompt) : 0;
        if (interactive) {
            if (isatty(STDIN_FILENO)) {
                fputs("> ", stderr);
                fflush(stderr);
            }
            if (!read_line(&line)) break;
            int blank = 1;
            for (size_t i = 0; i < line.len; i++)
                if (line.s[i] != ' ' && line.s[i] != '\t') blank = 0;
            if (blank) continue;
            user = line.s;   /* a NUL byte is part of the line: line.len, not strlen */
            user_len = line.len;
        }
        /* the turn's ids: the previous answer's unfed last token, BOS if the
           template starts with it, then the turn */
        t.n = 0;
        if (pending >= 0) chat_ids_push(&t, pending);
        else if (first && c.bos_in_template && r->cfg->bos_id >= 0) chat_ids_push(&t, r->cfg->bos_id);
        if (!first) {
            /* close the previous answer as the template does: end-of-turn
               (sampled but not fed yet, or cut by -n) then ChatML's newline */
            if (c.family == CHAT_CHATML) {
                chat_ids_special(&t, "<|im_end|>");
                chat_ids_text(&t, "\n");
            } else {
                chat_ids_special(&t, "<|eot_id|>");
            }
        }
        chat_turn(&c, &t, first, system, user, user_len);
        if (t.n > (size_t)INT32_MAX) die("the message is too long");
        int32_t n = (int32_t)t.n;
        if (r->verbose) print_ids("prompt", t.ids, n);
        /* the penalty's history is the context's ids: pending joined it when drawn */
        rq4_sampler_accept(r->sampler, t.ids + (pending >= 0), n - (pending >= 0));
        if (first && r->prompt_cache) feed_prompt(r, t.ids, n);
        else feed(r, t.ids, n);
        pending = generate(r);
        emit("\n", 1);
        first = 0;
        if (!interactive || g_stdout_closed) break;
        if (r->context_full) die("the conversation filled the context of %d tokens (use -c)", r->cfg->n_ctx);
    }
    chat_ids_free(&t);
    free(line.s);
    free(c.default_system);
}

/* ------------------------------------------------------------------------ */

/* The options: each long name with its runq.c short flag (0: none) and
 * whether it takes a value. */
typedef struct option {
    const char *name;
    char short_flag;
    int has_value;
} option;

enum {
    OPT_PROMPT, OPT_MAX_NEW, OPT_TEMPERATURE, OPT_TOP_P, OPT_TOP_K, OPT_MIN_P, OPT_REPEAT_PENALTY,
    OPT_REPEAT_LAST_N, OPT_SEED, OPT_THREADS, OPT_CTX, OPT_KV_TYPE,
    OPT_CHAT, OPT_MODE, OPT_SYSTEM, OPT_MAX_MEMORY, OPT_PROMPT_CACHE, OPT_VERBOSE, OPT_VERSION, OPT_HELP, N_OPTIONS
};

static const option OPTIONS[N_OPTIONS] = {
    [OPT_PROMPT] = {"prompt", 'i', 1},       [OPT_MAX_NEW] = {"max-new-tokens", 'n', 1},
    [OPT_TEMPERATURE] = {"temperature", 't', 1}, [OPT_TOP_P] = {"top-p", 'p', 1},
    [OPT_TOP_K] = {"top-k", 0, 1},           [OPT_SEED] = {"seed", 's', 1},
    [OPT_MIN_P] = {"min-p", 0, 1},           [OPT_REPEAT_PENALTY] = {"repeat-penalty", 0, 1},
    [OPT_REPEAT_LAST_N] = {"repeat-last-n", 0, 1},
    [OPT_THREADS] = {"threads", 'T', 1},     [OPT_CTX] = {"ctx", 'c', 1},
    [OPT_KV_TYPE] = {"kv-type", 'k', 1},     [OPT_CHAT] = {"chat", 0, 0},
    [OPT_MODE] = {NULL, 'm', 1},             [OPT_SYSTEM] = {"system", 'y', 1},
    [OPT_MAX_MEMORY] = {"max-memory", 'M', 1}, [OPT_PROMPT_CACHE] = {"prompt-cache", 0, 1},
    [OPT_VERBOSE] = {NULL, 'v', 0},
    [OPT_VERSION] = {"version", 0, 0},       [OPT_HELP] = {"help", 'h', 0},
};

/* The option argv[*i] names (its value, if any, into *value: after '=' or
 * the next argument); -1 when it is not an option. */
static int parse_option(int argc, char **argv, int *i, const char **value, const char **name) {
    const char *a = argv[*i], *eq = NULL;
    int k = -1;
    if (a[0] != '-' || a[1] == '\0') return -1;
    if (a[1] == '-') {
        eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        for (int j = 0; j < N_OPTIONS && k < 0; j++)
            if (OPTIONS[j].name && strlen(OPTIONS[j].name) == len && strncmp(OPTIONS[j].name, a + 2, len) == 0) k = j;
    } else if (a[2] == '\0') {
        for (int j = 0; j < N_OPTIONS && k < 0; j++)
            if (OPTIONS[j].short_flag == a[1]) k = j;
    }
    if (k < 0) die("unknown option '%s' (runq4 -h for help)", a);
    *name = a;
    *value = NULL;
    if (!OPTIONS[k].has_value) {
        if (eq) die("option --%s takes no value", OPTIONS[k].name);
        return k;
    }
    if (eq) {
        *value = eq + 1;
    } else {
        if (*i + 1 >= argc) die("option %s needs a value (runq4 -h for help)", a);
        *value = argv[++*i];
    }
    return k;
}

int main(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *system = NULL, *kv = NULL, *prompt_cache = NULL;
    rq4_sampling sp;
    rq4_default_sampling(&sp);
    uint64_t max_mb = 0;
    int have_seed = 0, verbose = 0, chat_mode = 0;
    long max_new = DEFAULT_MAX_NEW_TOKENS, threads = 0, ctx = 0;

    signal(SIGPIPE, SIG_IGN);   /* a closed stdout ends the run quietly (emit) */
    check_std_fds();
    for (int i = 1; i < argc; i++) {
        const char *v, *a;
        int k = parse_option(argc, argv, &i, &v, &a);
        if (k < 0) {
            if (path) die("unexpected argument '%s' (one model file; runq4 -h for help)", argv[i]);
            path = argv[i];
            continue;
        }
        switch (k) {
        case OPT_HELP: emit(USAGE, strlen(USAGE)); return 0;
        case OPT_VERSION: {
            char line[64];
            snprintf(line, sizeof line, "runq4 %s\n", rq4_version());
            emit(line, strlen(line));
            return 0;
        }
        case OPT_VERBOSE: verbose = 1; break;
        case OPT_TEMPERATURE:
            sp.temperature = parse_float(a, v);
            if (sp.temperature < 0.0f) die("%s (temperature) must be >= 0, got '%s'", a, v);
            break;
        case OPT_TOP_P:
            sp.top_p = parse_float(a, v);
            if (!(sp.top_p > 0.0f && sp.top_p <= 1.0f)) die("%s (top-p) must be in (0, 1], got '%s'", a, v);
            break;
        case OPT_TOP_K: sp.top_k = (int32_t)parse_long(a, v, 0, INT32_MAX); break;
        case OPT_MIN_P:
            sp.min_p = parse_float(a, v);
            if (!(sp.min_p >= 0.0f && sp.min_p <= 1.0f)) die("%s (min-p) must be in [0, 1], got '%s'", a, v);
            break;
        case OPT_REPEAT_PENALTY:
            sp.repeat_penalty = parse_float(a, v);
            if (!(sp.repeat_penalty > 0.0f)) die("%s (repeat penalty) must be > 0, got '%s'", a, v);
            break;
        case OPT_REPEAT_LAST_N: sp.repeat_last_n = (int32_t)parse_long(a, v, 0, RQ4_MAX_REPEAT_LAST_N); break;
        case OPT_SEED: sp.seed = parse_u64(a, v); have_seed = 1; break;
        case OPT_MAX_NEW: max_new = parse_long(a, v, -1, INT32_MAX); break;
        case OPT_PROMPT: prompt = v; break;
        case OPT_CHAT: chat_mode = 1; break;
        case OPT_MODE:
            if (strcmp(v, "generate") != 0 && strcmp(v, "chat") != 0) die("-m must be generate or chat, got '%s'", v);
            chat_mode = strcmp(v, "chat") == 0;
            break;
        case OPT_SYSTEM: system = v; break;
        case OPT_PROMPT_CACHE:
            if (!*v) die("%s needs a file name", a);
            prompt_cache = v;
            break;
        case OPT_THREADS: threads = parse_long(a, v, 1, RQ4_MAX_THREADS); break;
        case OPT_CTX: ctx = parse_long(a, v, 1, INT32_MAX); break;
        case OPT_KV_TYPE:
            if (strcmp(v, "f32") != 0 && strcmp(v, "f16") != 0) die("%s must be f32 or f16, got '%s'", a, v);
            kv = v;
            break;
        case OPT_MAX_MEMORY:
            max_mb = parse_u64(a, v);
            if (max_mb == 0 || max_mb > (UINT64_MAX >> 20)) die("%s must be a number of MiB >= 1, got '%s'", a, v);
            break;
        }
    }
    if (!path) die("no model file (usage: runq4 MODEL.rq4 [options]; runq4 -h for help)");
    if (system && !chat_mode) die("-y/--system (system prompt) needs --chat");

    rq4_options opts;
    rq4_error err;
    rq4_default_options(&opts);
    if (kv) opts.kv_type = strcmp(kv, "f16") == 0 ? RQ4_KV_F16 : RQ4_KV_F32;
    opts.n_threads = (int32_t)threads; /* 0: the library's default */
    opts.max_memory = max_mb << 20;
    opts.n_ctx = (int32_t)ctx; /* 0: min(RQ4_DEFAULT_CTX, the model's) */

    run r;
    memset(&r, 0, sizeof r);
    double t_start = now_s();
    r.max_new = (int32_t)max_new;
    r.verbose = verbose;
    r.prompt_cache = prompt_cache;
    if (rq4_open(path, &opts, &r.model, &err) != RQ4_OK) die("%s", err.message);
    r.cfg = rq4_get_config(r.model);
    if (rq4_tokenizer_from_model(r.model, &r.tok, &err) != RQ4_OK) die("%s", err.message);
    rq4_release_blob(r.model, "tokenizer.json");   /* copied by the tokenizer (9 MB for Llama 3) */
    double load_s = now_s() - t_start;
    if (rq4_tokenizer_size(r.tok) > r.cfg->vocab_size)
        die("the tokenizer has %d ids but the model's vocab is %d", rq4_tokenizer_size(r.tok), r.cfg->vocab_size);
    if (!have_seed) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (rq4_sampler_new(r.cfg->vocab_size, &sp, &r.sampler, &err) != RQ4_OK) die("%s", err.message);
    if (opts.max_memory) {
        /* -M bounds the whole run: the engine's figure (file + KV cache +
           buffers, checked by rq4_open) plus what this program allocates */
        struct stat st;
        uint64_t file = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
        uint64_t engine = file + rq4_memory_needed(r.model, r.cfg->n_ctx, opts.kv_type);
        uint64_t tok = rq4_tokenizer_memory(r.tok);
        uint64_t bufs = (uint64_t)r.cfg->vocab_size * sizeof(float) + rq4_sampler_memory(r.sampler);
        if (engine + tok + bufs > opts.max_memory)
            die("needs %llu bytes (engine %llu + tokenizer %llu + logits and sampler %llu), over -M %llu MiB",
                (unsigned long long)(engine + tok + bufs), (unsigned long long)engine, (unsigned long long)tok,
                (unsigned long long)bufs, (unsigned long long)max_mb);
    }
    r.logits = malloc(sizeof(float) * (size_t)r.cfg->vocab_size);
    if (!r.logits) die("out of memory for the logits");

    if (chat_mode) {
        run_chat(&r, prompt, system);
    } else {
        const char *text = prompt ? prompt : "";
        int32_t n = encode(&r, text, strlen(text), 0, r.cfg->bos_id);
        if (n == 0) die("the prompt is empty (and the model has no BOS token)");
        if (r.verbose) print_ids("prompt", r.ids, n);
        rq4_sampler_accept(r.sampler, r.ids, n);
        if (r.prompt_cache) feed_prompt(&r, r.ids, n);
        else feed(&r, r.ids, n);
        generate(&r);
        emit("\n", 1);
    }

    fprintf(stderr,
            "runq4: load %.2f s; prompt %lld tokens, %.1f tok/s; generated %lld tokens, %.1f tok/s%s; "
            "peak RSS %.1f MiB; kernel %s, %d threads, context %d, KV %s\n",
            load_s, (long long)r.prompt_tokens, r.prompt_s > 0 ? (double)r.prompt_tokens / r.prompt_s : 0.0,
            (long long)r.gen_tokens, r.gen_s > 0 ? (double)r.gen_tokens / r.gen_s : 0.0,
            r.context_full ? " (context full)" : "", peak_rss_mb(), rq4_kernel_name(), r.cfg->n_threads, r.cfg->n_ctx,
            r.cfg->kv_type == RQ4_KV_F16 ? "f16" : "f32");

    if (!g_stdout_closed && fclose(stdout) != 0 && errno != EPIPE)
        die("writing the output: %s", strerror(errno));
    free(r.logits);
    free(r.ids);
    rq4_sampler_free(r.sampler);
    rq4_tokenizer_free(r.tok);
    rq4_close(r.model);
    return 0;
}
