/* Chat templates of the runq4 binary (chat.h). */
#define _POSIX_C_SOURCE 200809L

#include "chat.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


void sb_add(sbuf *b, const char *s, size_t n) {
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

void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

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

void detect_chat(const rq4_model *model, const rq4_tokenizer *tok, chat *c) {
    uint64_t n = 0;
    const char *t = rq4_blob(model, "chat_template", &n);
    memset(c, 0, sizeof *c);
    if (!t) die("chat mode: the model file has no chat_template; drop --chat");
    if (find_in(t, n, "<|start_header_id|>")) {
        c->family = CHAT_LLAMA3;
        c->end_of_turn = rq4_tokenizer_find(tok, "<|eot_id|>", 10);
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
        c->end_of_turn = rq4_tokenizer_find(tok, "<|im_end|>", 10);
        c->default_system = chatml_default_system(t, n);
    } else {
        die("chat mode: the model's chat template is neither Llama 3 nor ChatML, which runq4 cannot render without "
            "Jinja; drop --chat or pyrunq4");
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

void chat_ids_push(chat_ids *t, int32_t id) {
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 256;
        int32_t *p = realloc(t->ids, cap * sizeof(int32_t));
        if (!p) die("out of memory");
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
}

/* Encodes the pending text: special-token text in it is plain text when
 * any of it came from the user, parsed (the template's own) otherwise. */
static void chat_ids_flush(chat_ids *t) {
    if (t->text.len) {
        rq4_error err;
        int32_t n = 0;
        for (;;) {
            size_t room = t->cap - t->n;
            rq4_status s = rq4_tokenizer_encode(t->tok, t->text.s, t->text.len, !t->user_text, t->ids + t->n,
                                                (int32_t)(room > INT32_MAX ? INT32_MAX : room), &n, &err);
            if (s == RQ4_OK) break;
            if ((size_t)n <= room) die("%s", err.message);   /* not a matter of room */
            size_t cap = t->n + (size_t)n;
            int32_t *p = realloc(t->ids, cap * sizeof(int32_t));
            if (!p) die("out of memory encoding the message");
            t->ids = p;
            t->cap = cap;
        }
        t->n += (size_t)n;
    }
    t->text.len = 0;
    t->user_text = 0;
}

void chat_ids_special(chat_ids *t, const char *token) {
    chat_ids_flush(t);
    int32_t id = rq4_tokenizer_find(t->tok, token, (uint32_t)strlen(token));
    if (id < 0) die("chat mode: the tokenizer lacks %s, which the chat template uses", token);
    chat_ids_push(t, id);
}

void chat_ids_text(chat_ids *t, const char *s) { sb_str(&t->text, s); }

static void chat_ids_user(chat_ids *t, const char *s, size_t n, int trim) {
    if (trim) sb_trimmed(&t->text, s, n);
    else sb_add(&t->text, s, n);
    t->user_text = 1;
}

void chat_ids_free(chat_ids *t) {
    free(t->ids);
    free(t->text.s);
    memset(t, 0, sizeof *t);
}

void chat_turn(const chat *c, chat_ids *t, int first, const char *system, const char *user, size_t user_len) {
    if (c->family == CHAT_LLAMA3) {
        if (first && (system || c->llama32_dates)) {
            chat_ids_special(t, "<|start_header_id|>");
            chat_ids_text(t, "system");
            chat_ids_special(t, "<|end_header_id|>");
            chat_ids_text(t, "\n\n");
            if (c->llama32_dates) {
                chat_ids_text(t, "Cutting Knowledge Date: December 2023\nToday Date: ");
                chat_ids_text(t, c->date);
                chat_ids_text(t, "\n\n");
            }
            if (system) chat_ids_user(t, system, strlen(system), 1);
            chat_ids_special(t, "<|eot_id|>");
        }
        chat_ids_special(t, "<|start_header_id|>");
        chat_ids_text(t, "user");
        chat_ids_special(t, "<|end_header_id|>");
        chat_ids_text(t, "\n\n");
        chat_ids_user(t, user, user_len, 1);
        chat_ids_special(t, "<|eot_id|>");
        chat_ids_special(t, "<|start_header_id|>");
        chat_ids_text(t, "assistant");
        chat_ids_special(t, "<|end_header_id|>");
        chat_ids_text(t, "\n\n");
    } else {
        if (first && (system || c->default_system)) {
            chat_ids_special(t, "<|im_start|>");
            chat_ids_text(t, "system\n");
            if (system) chat_ids_user(t, system, strlen(system), 0);
            else chat_ids_text(t, c->default_system);
            chat_ids_special(t, "<|im_end|>");
            chat_ids_text(t, "\n");
        }
        chat_ids_special(t, "<|im_start|>");
        chat_ids_text(t, "user\n");
        chat_ids_user(t, user, user_len, 0);
        chat_ids_special(t, "<|im_end|>");
        chat_ids_text(t, "\n");
        chat_ids_special(t, "<|im_start|>");
        chat_ids_text(t, "assistant\n");
    }
    chat_ids_flush(t);
}
