/* Errors: the one way the library reports a failure (rq4_fail), and the
 * description of each code. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>


rq4_status rq4_fail(rq4_error *err, rq4_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err->code = code;
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        for (char *c = err->message; *c; c++) /* one line, whatever went in */
            if (*c == '\n' || *c == '\r') *c = ' ';
    }
    return code;
}

rq4_status rq4_succeed(rq4_error *err) {
    if (err) {
        err->code = RQ4_OK;
        err->message[0] = '\0';
    }
    return RQ4_OK;
}


const char *rq4_strerror(int32_t code) {
    switch (code) {
    case RQ4_OK: return "success";
    case RQ4_ERR_IO: return "cannot open, stat or map the file";
    case RQ4_ERR_FORMAT: return "not an .rq4 file, or a corrupt or truncated one";
    case RQ4_ERR_VERSION: return "an .rq4 file of another format version";
    case RQ4_ERR_UNSUPPORTED: return "a valid file this build cannot run";
    case RQ4_ERR_NOMEM: return "out of memory";
    case RQ4_ERR_ARG: return "bad argument";
    case RQ4_ERR_CONTEXT_FULL: return "the tokens do not fit in the remaining context";
    case RQ4_ERR_MEMORY_LIMIT: return "the model and context exceed the memory limit";
    case RQ4_ERR_THREAD: return "a worker thread could not be started";
    case RQ4_ERR_MISMATCH: return "a saved state of another model or settings";
    default: return "unknown error";
    }
}
