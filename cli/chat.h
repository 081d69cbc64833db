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

/* A turn's token ids, built piece by piece. The special tokens the
 * template writes (turn headers, end of turn) go in by id; the text between
 * them is encoded with special-token text as plain text when any of it came
 * from the user (a message, the system prompt), so that what a user types
 * can never become a control token; template-only text is encoded as the
 * template's (special tokens parsed). */
typedef struct chat_ids {
    const rq4_tokenizer *tok;
    int32_t *ids;
    size_t n, cap;
    sbuf text;          /* pending text since the last special token */
    int user_text;      /* some of it came from the user */
} chat_ids;

void chat_ids_push(chat_ids *t, int32_t id);
/* A special token of the template by its text (dies if the tokenizer lacks it). */
void chat_ids_special(chat_ids *t, const char *token);
/* Template text (pending until the next special token or the end of the turn). */
void chat_ids_text(chat_ids *t, const char *s);
void chat_ids_free(chat_ids *t);

/* Appends one user turn and the assistant header after it to t; `first`
 * adds what the template puts before the first message (system). The user
 * text is user[0..user_len) (it may hold NUL bytes). Llama 3's templates
 * trim the messages; ChatML's keep them as they are. */
void chat_turn(const chat *c, chat_ids *t, int first, const char *system, const char *user, size_t user_len);

#endif /* RUNQ4_CLI_CHAT_H */
