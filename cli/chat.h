/* Chat mode of the runq4 binary: the turn strings of the model's chat
 * template. runq4 cannot run the Jinja chat_template: it recognises the
 * Llama 3 and ChatML families in it and builds the same strings in C. */
#ifndef RUNQ4_CLI_CHAT_H
#define RUNQ4_CLI_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "runq4.h"
#include "tokenizer/tokenizer.h"

/* One line on stderr ("runq4: error: ..."), exit status 1 (main.c). */
#if defined(__GNUC__)
__attribute__((format(printf, 1, 2), noreturn))
#endif
void die(const char *fmt, ...);

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

/* A growing NUL-terminated string. */
void sb_add(sbuf *b, const char *s, size_t n);
void sb_str(sbuf *b, const char *s);

/* The chat format of the model's chat_template blob; dies when there is
 * none or it is neither family. */
void detect_chat(const rq4_model *model, const rq4_tokenizer *tok, chat *c);

/* The text of one user turn and the assistant header after it; `first` adds
 * what the template puts before the first message (system). */
void chat_turn(const chat *c, sbuf *b, int first, const char *system, const char *user);

#endif /* RUNQ4_CLI_CHAT_H */
