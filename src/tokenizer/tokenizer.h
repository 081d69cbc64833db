/* The C tokenizer: byte-level BPE from an embedded Hugging Face tokenizer.json.
 * The public functions (rq4_tokenizer_*) are declared in runq4.h so that the
 * Python binding sees them; this header adds what only C callers need. */
#ifndef RUNQ4_TOKENIZER_H
#define RUNQ4_TOKENIZER_H

#include "runq4.h"

/* The pre-tokenizers the C tokenizer implements exactly. */
enum rq4_pretok {
    RQ4_PRETOK_LLAMA3 = 1,      /* Split(Llama 3 regex, Isolated) + ByteLevel(use_regex=false) */
    RQ4_PRETOK_GPT2 = 2,        /* ByteLevel(use_regex=true): GPT-2's regex */
    RQ4_PRETOK_GPT2_DIGITS = 3  /* Digits(individual_digits) + ByteLevel(use_regex=true): SmolLM2 */
};

/* Which of the above this tokenizer uses. */
int rq4_tokenizer_pretok(const rq4_tokenizer *t);

#endif /* RUNQ4_TOKENIZER_H */
