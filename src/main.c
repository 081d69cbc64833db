/* runq4: the standalone binary. One .rq4 file in, generated text out; no
 * Python. The command line follows llama2.c's run.c/runq.c:
 *
 *   runq4 MODEL.rq4 [-t temperature] [-p top_p] [-s seed] [-n steps] [-i prompt]
 *         [-m generate|chat] [-y system_prompt] [-T threads] [-c context]
 *         [-k f32|f16] [-M max_memory_MiB] [-v] [-h]
 *
 * Generated text goes to stdout only (streamed, flushed per token); the
 * statistics (prompt and decode tokens/s, peak resident memory) go to
 * stderr. Every known error is one line on stderr and exit status 1.
 *
 * The tokenizer is the C one (src/tokenizer.c) built from the file's
 * tokenizer.json blob. Prompts are encoded as pyrunq4 does: BOS (when the
 * model has one) + the text, with special-token text taken as plain text, so
 * that at temperature 0 the output equals pyrunq4's Model.generate. Chat mode
 * cannot run the Jinja chat_template: it recognises the Llama 3 and ChatML
 * families in it and builds the same turn strings in C.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE   /* madvise */

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
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runq4.h"
#include "sampler.h"
#include "tokenizer.h"

#define DEFAULT_STEPS 256

static const char *USAGE =
    "Usage:   runq4 MODEL.rq4 [options]\n"
    "Example: runq4 model.rq4 -n 256 -i \"Once upon a time\"\n"
    "Options:\n"
    "  -t <float>  temperature in [0,inf), default 0 (greedy)\n"
    "  -p <float>  top-p (nucleus) in (0,1], default 1 (off)\n"
    "  -s <int>    random seed, default: from the clock\n"
    "  -n <int>    most tokens to generate (per answer in chat), default 256;\n"
    "              0: until an end token or the context is full\n"
    "  -i <string> the prompt (chat: the user message; without it, chat reads\n"
    "              one message per line from stdin until EOF)\n"
    "  -m <string> mode: generate|chat, default generate\n"
    "  -y <string> system prompt (chat mode)\n"
    "  -T <int>    threads, default: the online CPUs\n"
    "  -c <int>    context length (KV cache), default min(4096, the model's)\n"
    "  -k <string> KV cache type: f32|f16, default f32\n"
    "  -M <int>    refuse to start if weights + KV cache + buffers would\n"
    "              exceed this many MiB (2^20 bytes; default: no limit)\n"
    "  -v          also print the prompt and generated token ids on stderr\n"
    "  -h          this help\n"
    "Text goes to stdout, statistics to stderr.\n";

/* ------------------------------------------------------------------------ */
/* errors: one line on stderr, exit 1                                        */

static void die(const char *fmt, ...) {
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

/* The tokenizer copies what it needs out of the tokenizer.json blob (9 MB for
 * Llama 3): give the blob's pages of the read-only file mapping back to the
 * page cache, so they stop counting in the resident set (a later read would
 * fault them in again from the file). */
static void release_blob(const rq4_model *m, const char *name) {
    uint64_t size = 0;
    const char *p = rq4_blob(m, name, &size);
    long page = sysconf(_SC_PAGESIZE);
    if (!p || page <= 0) return;
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t b = ((uintptr_t)p + (uintptr_t)size) & ~((uintptr_t)page - 1);
    if (b > a) madvise((void *)a, (size_t)(b - a), MADV_DONTNEED);
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
    rq4_sampler sampler;
    float *logits;          /* (vocab_size) */
    int32_t *ids;           /* scratch for encoding */
    size_t ids_cap;
    int32_t steps;          /* most new tokens per generation, 0: no limit */
    int verbose;            /* -v: token ids on stderr */
    /* statistics */
    int64_t prompt_tokens, gen_tokens;
    double prompt_s, gen_s;
    int context_full;
} run;

static int is_eos(const run *r, int32_t id) {
    for (int i = 0; i < r->cfg->n_eos && i < RQ4_MAX_EOS; i++)
        if (r->cfg->eos_ids[i] == id) return 1;
    return 0;
}

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

static void print_ids(const char *what, const int32_t *ids, int64_t n) {
    fprintf(stderr, "runq4: %s ids (%lld):", what, (long long)n);
    for (int64_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

/* Samples and streams tokens until an end token, the step limit or a full
 * context. Returns the last generated token when it is not in the KV cache
 * yet (stopped by the step limit or a full context), else -1 (stopped on an
 * end token, which is not fed either). */
static int32_t generate(run *r) {
    int32_t count = 0, pending = -1;
    double t0 = now_s();
    int32_t *gen = NULL;
    size_t gen_cap = 0;
    for (;;) {
        int32_t next = rq4_sample(&r->sampler, r->logits);
        if (is_eos(r, next)) break;
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
        if ((r->steps > 0 && count >= r->steps) || g_stdout_closed) break;
        if (rq4_position(r->model) >= r->cfg->n_ctx) {   /* the new token would not fit */
            r->context_full = 1;
            break;
        }
        rq4_error err;
        if (rq4_forward(r->model, &next, 1, r->logits, 0, &err) != RQ4_OK) die("%s", err.message);
        pending = -1;
    }
    r->gen_s += now_s() - t0;
    if (r->verbose) print_ids("generated", gen, count);
    free(gen);
    return pending;
}

/* ------------------------------------------------------------------------ */
/* chat formats                                                              */

enum { CHAT_LLAMA3 = 1, CHAT_CHATML = 2 };

typedef struct chat {
    int family;
    int bos_in_template;    /* the template starts with bos_token */
    int llama32_dates;      /* Llama 3.1/3.2: "Cutting Knowledge Date" system header */
    char date[64];
    char *default_system;   /* ChatML: the system text the template inserts when none is given */
    int32_t end_of_turn;    /* <|eot_id|> / <|im_end|> */
} chat;

typedef struct sbuf {
    char *s;
    size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) die("out of memory");
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static const char *find_in(const char *hay, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i + k <= n; i++)
        if (memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

/* ChatML's built-in system message, as in SmolLM2's template:
 *   '<|im_start|>system\nYou are a helpful AI assistant ...<|im_end|>\n'
 * (the newline written either as a real newline or as the escape \n). */
static char *chatml_default_system(const char *t, size_t n) {
    const char *p = find_in(t, n, "<|im_start|>system");
    if (!p) return NULL;
    p += strlen("<|im_start|>system");
    const char *end = t + n;
    if (p < end && *p == '\n') p++;
    else if (end - p >= 2 && p[0] == '\\' && p[1] == 'n') p += 2;
    else return NULL;
    const char *q = find_in(p, (size_t)(end - p), "<|im_end|>");
    if (!q || q == p) return NULL;
    sbuf b = {0};
    for (const char *c = p; c < q; c++) {
        if (*c == '\'' || *c == '"' || *c == '{' || *c == '}' || *c == '+') {   /* not a plain literal */
            free(b.s);
            return NULL;
        }
        if (*c == '\\' && c + 1 < q && c[1] == 'n') {
            sb_add(&b, "\n", 1);
            c++;
        } else {
            sb_add(&b, c, 1);
        }
    }
    return b.s;
}

static void detect_chat(run *r, chat *c) {
    uint64_t n = 0;
    const char *t = rq4_blob(r->model, "chat_template", &n);
    memset(c, 0, sizeof *c);
    if (!t) die("chat mode: the model file has no chat_template; use -m generate");
    if (find_in(t, n, "<|start_header_id|>")) {
        c->family = CHAT_LLAMA3;
        c->end_of_turn = rq4_tokenizer_find(r->tok, "<|eot_id|>", 10);
        c->bos_in_template = find_in(t, n, "bos_token") != NULL;
        if (find_in(t, n, "Cutting Knowledge Date")) {
            c->llama32_dates = 1;
            /* the date: today if the template asks strftime_now (pyrunq4 and
               transformers provide it), else its default date_string */
            const char *d = find_in(t, n, "date_string = \"");
            if (find_in(t, n, "strftime_now")) {
                time_t now = time(NULL);
                struct tm tmv;
                localtime_r(&now, &tmv);
                strftime(c->date, sizeof c->date, "%d %b %Y", &tmv);
            } else if (d) {
                d += strlen("date_string = \"");
                size_t k = 0;
                while (d + k < t + n && d[k] != '"' && k < sizeof c->date - 1) k++;
                memcpy(c->date, d, k);
                c->date[k] = 0;
            } else {
                strcpy(c->date, "26 Jul 2024");
            }
        }
    } else if (find_in(t, n, "<|im_start|>")) {
        c->family = CHAT_CHATML;
        c->end_of_turn = rq4_tokenizer_find(r->tok, "<|im_end|>", 10);
        c->default_system = chatml_default_system(t, n);
    } else {
        die("chat mode: the model's chat template is neither Llama 3 nor ChatML, which runq4 cannot render without "
            "Jinja; use -m generate or pyrunq4");
    }
    if (c->end_of_turn < 0) die("chat mode: the tokenizer lacks the end-of-turn token of the chat template");
}

/* Length of a whitespace character at s[0..n) as Python's str.isspace sees
 * it (Jinja's trim is str.strip()), else 0. */
static size_t space_len(const unsigned char *s, size_t n) {
    if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x1F)) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) return 2;
    if (n >= 3) {
        unsigned cp = ((unsigned)(s[0] & 0x0F) << 12) | ((unsigned)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if ((s[0] & 0xF0) == 0xE0 && (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
                                     cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000))
            return 3;
    }
    return 0;
}

/* Appends s[0..n) with leading and trailing whitespace removed (Jinja's | trim). */
static void sb_trimmed(sbuf *b, const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    size_t k;
    while (p < end && (k = space_len(p, (size_t)(end - p))) > 0) p += k;
    for (;;) {   /* drop whitespace characters at the end (1 to 3 bytes long) */
        int cut = 0;
        for (size_t w = 1; w <= 3 && !cut; w++)
            if ((size_t)(end - p) >= w && space_len(end - w, w) == w) {
                end -= w;
                cut = 1;
            }
        if (!cut) break;
    }
    sb_add(b, (const char *)p, (size_t)(end - p));
}

/* A turn's ids, built piece by piece. The special tokens the template
 * writes (turn headers, end of turn) go in by id; the text between them is
 * encoded with special-token text as plain text when any of it came from
 * the user (a message, the system prompt), so that what a user types can
 * never become a control token; template-only text is encoded as the
 * template's (special tokens parsed). */
typedef struct turn {
    run *r;
    int32_t *ids;
    size_t n, cap;
    sbuf text;          /* pending text since the last special token */
    int user_text;      /* some of it came from the user */
} turn;

static void turn_push(turn *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 256;
        int32_t *p = realloc(t->ids, cap * sizeof(int32_t));
        if (!p) die("out of memory");
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
}

static void turn_flush(turn *t) {
    if (t->text.len) {
        int32_t n = encode(t->r, t->text.s, t->text.len, !t->user_text, -1);
        for (int32_t i = 0; i < n; i++) turn_push(t, t->r->ids[i]);
    }
    t->text.len = 0;
    t->user_text = 0;
}

static void turn_special(turn *t, const char *token) {
    turn_flush(t);
    int32_t id = rq4_tokenizer_find(t->r->tok, token, (uint32_t)strlen(token));
    if (id < 0) die("chat mode: the tokenizer lacks %s, which the chat template uses", token);
    turn_push(t, id);
}

static void turn_text(turn *t, const char *s) { sb_str(&t->text, s); }

static void turn_user(turn *t, const char *s, size_t n, int trim) {
    if (trim) sb_trimmed(&t->text, s, n);
    else sb_add(&t->text, s, n);
    t->user_text = 1;
}

/* One user turn and the assistant header after it; `first` adds what the
 * template puts before the first message (system). Llama 3's templates trim
 * the messages; ChatML's keep them as they are. */
static void chat_turn(const chat *c, turn *t, int first, const char *system, const char *user, size_t user_len) {
    if (c->family == CHAT_LLAMA3) {
        if (first && (system || c->llama32_dates)) {
            turn_special(t, "<|start_header_id|>");
            turn_text(t, "system");
            turn_special(t, "<|end_header_id|>");
            turn_text(t, "\n\n");
            if (c->llama32_dates) {
                turn_text(t, "Cutting Knowledge Date: December 2023\nToday Date: ");
                turn_text(t, c->date);
                turn_text(t, "\n\n");
            }
            if (system) turn_user(t, system, strlen(system), 1);
            turn_special(t, "<|eot_id|>");
        }
        turn_special(t, "<|start_header_id|>");
        turn_text(t, "user");
        turn_special(t, "<|end_header_id|>");
        turn_text(t, "\n\n");
        turn_user(t, user, user_len, 1);
        turn_special(t, "<|eot_id|>");
        turn_special(t, "<|start_header_id|>");
        turn_text(t, "assistant");
        turn_special(t, "<|end_header_id|>");
        turn_text(t, "\n\n");
    } else {
        if (first && (system || c->default_system)) {
            turn_special(t, "<|im_start|>");
            turn_text(t, "system\n");
            if (system) turn_user(t, system, strlen(system), 0);
            else turn_text(t, c->default_system);
            turn_special(t, "<|im_end|>");
            turn_text(t, "\n");
        }
        turn_special(t, "<|im_start|>");
        turn_text(t, "user\n");
        turn_user(t, user, user_len, 0);
        turn_special(t, "<|im_end|>");
        turn_text(t, "\n");
        turn_special(t, "<|im_start|>");
        turn_text(t, "assistant\n");
    }
    turn_flush(t);
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
    detect_chat(r, &c);
    int interactive = prompt == NULL, first = 1;
    int32_t pending = -1;
    turn t = {0};
    t.r = r;
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
        if (pending >= 0) turn_push(&t, pending);
        else if (first && c.bos_in_template && r->cfg->bos_id >= 0) turn_push(&t, r->cfg->bos_id);
        if (!first) {
            /* close the previous answer as the template does: end-of-turn
               (sampled but not fed yet, or cut by -n) then ChatML's newline */
            if (c.family == CHAT_CHATML) {
                turn_special(&t, "<|im_end|>");
                turn_text(&t, "\n");
            } else {
                turn_special(&t, "<|eot_id|>");
            }
        }
        chat_turn(&c, &t, first, system, user, user_len);
        if (t.n > (size_t)INT32_MAX) die("the message is too long");
        int32_t n = (int32_t)t.n;
        if (r->verbose) print_ids("prompt", t.ids, n);
        feed(r, t.ids, n);
        pending = generate(r);
        emit("\n", 1);
        first = 0;
        if (!interactive || g_stdout_closed) break;
        if (r->context_full) die("the conversation filled the context of %d tokens (use -c)", r->cfg->n_ctx);
    }
    free(t.ids);
    free(t.text.s);
    free(line.s);
    free(c.default_system);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv) {
    const char *path = NULL, *prompt = NULL, *system = NULL, *mode = "generate", *kv = "f32";
    float temperature = 0.0f, top_p = 1.0f;
    uint64_t seed = 0, max_mb = 0;
    int have_seed = 0, verbose = 0;
    long steps = DEFAULT_STEPS, threads = 0, ctx = 0;

    signal(SIGPIPE, SIG_IGN);   /* a closed stdout ends the run quietly (emit) */
    check_std_fds();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            emit(USAGE, strlen(USAGE));
            return 0;
        }
        if (strcmp(a, "-v") == 0) {
            verbose = 1;
            continue;
        }
        if (a[0] != '-' || a[1] == '\0') {
            if (path) die("unexpected argument '%s' (one model file; runq4 -h for help)", a);
            path = a;
            continue;
        }
        if (a[2] != '\0' || !strchr("tpsnimyTckM", a[1])) die("unknown option '%s' (runq4 -h for help)", a);
        if (i + 1 >= argc) die("option %s needs a value (runq4 -h for help)", a);
        const char *v = argv[++i];
        switch (a[1]) {
        case 't':
            temperature = parse_float("-t", v);
            if (temperature < 0.0f) die("-t (temperature) must be >= 0, got '%s'", v);
            break;
        case 'p':
            top_p = parse_float("-p", v);
            if (!(top_p > 0.0f && top_p <= 1.0f)) die("-p (top-p) must be in (0, 1], got '%s'", v);
            break;
        case 's': seed = parse_u64("-s", v); have_seed = 1; break;
        case 'n': steps = parse_long("-n", v, 0, INT32_MAX); break;
        case 'i': prompt = v; break;
        case 'm':
            if (strcmp(v, "generate") != 0 && strcmp(v, "chat") != 0) die("-m must be generate or chat, got '%s'", v);
            mode = v;
            break;
        case 'y': system = v; break;
        case 'T': threads = parse_long("-T", v, 1, 256); break;
        case 'c': ctx = parse_long("-c", v, 1, INT32_MAX); break;
        case 'k':
            if (strcmp(v, "f32") != 0 && strcmp(v, "f16") != 0) die("-k must be f32 or f16, got '%s'", v);
            kv = v;
            break;
        case 'M': max_mb = parse_u64("-M", v); if (max_mb == 0 || max_mb > (UINT64_MAX >> 20)) die("-M must be a number of MiB >= 1, got '%s'", v); break;
        }
    }
    if (!path) die("no model file (usage: runq4 MODEL.rq4 [options]; runq4 -h for help)");
    int chat_mode = strcmp(mode, "chat") == 0;
    if (system && !chat_mode) die("-y (system prompt) needs -m chat");
    if (threads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        threads = ncpu < 1 ? 1 : ncpu > 256 ? 256 : ncpu;
    }

    rq4_options opts;
    rq4_error err;
    rq4_default_options(&opts);
    opts.kv_type = strcmp(kv, "f16") == 0 ? RQ4_KV_F16 : RQ4_KV_F32;
    opts.n_threads = (int32_t)threads;
    opts.max_memory = max_mb << 20;
    opts.n_ctx = (int32_t)ctx; /* 0: min(RQ4_DEFAULT_CTX, the model's) */

    run r;
    memset(&r, 0, sizeof r);
    double t_start = now_s();
    r.steps = (int32_t)steps;
    r.verbose = verbose;
    if (rq4_open(path, &opts, &r.model, &err) != RQ4_OK) die("%s", err.message);
    r.cfg = rq4_get_config(r.model);
    if (rq4_tokenizer_from_model(r.model, &r.tok, &err) != RQ4_OK) die("%s", err.message);
    release_blob(r.model, "tokenizer.json");
    double load_s = now_s() - t_start;
    if (rq4_tokenizer_size(r.tok) > r.cfg->vocab_size)
        die("the tokenizer has %d ids but the model's vocab is %d", rq4_tokenizer_size(r.tok), r.cfg->vocab_size);
    if (!have_seed) seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (rq4_sampler_init(&r.sampler, r.cfg->vocab_size, temperature, top_p, seed) != 0)
        die("out of memory for the sampler");
    if (opts.max_memory) {
        /* -M bounds the whole run: the engine's figure (file + KV cache +
           buffers, checked by rq4_open) plus what this program allocates */
        struct stat st;
        uint64_t file = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
        uint64_t engine = file + rq4_memory_needed(r.model, r.cfg->n_ctx, opts.kv_type);
        uint64_t tok = rq4_tokenizer_memory(r.tok);
        uint64_t bufs = (uint64_t)r.cfg->vocab_size *
                        (sizeof(float) + (r.sampler.probindex ? sizeof(rq4_prob_index) : 0));
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
        feed(&r, r.ids, n);
        generate(&r);
        emit("\n", 1);
    }

    fprintf(stderr,
            "runq4: load %.2f s; prompt %lld tokens, %.1f tok/s; generated %lld tokens, %.1f tok/s%s; "
            "peak RSS %.1f MiB; kernel %s, %ld threads, context %d, KV %s\n",
            load_s, (long long)r.prompt_tokens, r.prompt_s > 0 ? (double)r.prompt_tokens / r.prompt_s : 0.0,
            (long long)r.gen_tokens, r.gen_s > 0 ? (double)r.gen_tokens / r.gen_s : 0.0,
            r.context_full ? " (context full)" : "", peak_rss_mb(), rq4_kernel_name(), threads, r.cfg->n_ctx, kv);

    if (!g_stdout_closed && fclose(stdout) != 0 && errno != EPIPE)
        die("writing the output: %s", strerror(errno));
    free(r.logits);
    free(r.ids);
    rq4_sampler_free(&r.sampler);
    rq4_tokenizer_free(r.tok);
    rq4_close(r.model);
    return 0;
}
