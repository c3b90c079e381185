/*
 * fleet_json.h - strict JSON intake and a bounded JSON writer.
 *
 * cJSON is lenient (it takes "01", "1.", raw control characters and invalid
 * UTF-8) and it forgets whether a number was written as 5 or 5.0, while the
 * protocol (pydantic strict mode) refuses all of those and refuses 5.0 where an
 * int is expected. So every inbound payload is first checked by a small
 * RFC 8259 validator, then handed to cJSON, and integer fields are checked
 * against their source text (fleet_json_is_int_literal).
 *
 * The validator also bounds what cJSON may allocate: nesting depth (cJSON
 * recurses, and a device task stack is a few KiB) and the number of values.
 */
#ifndef FLEET_JSON_H
#define FLEET_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cJSON.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Payloads above this are refused before parsing (messages.py MAX_PAYLOAD_BYTES). */
#define FLEET_MAX_PAYLOAD (64u * 1024u)
/* Deepest nesting accepted; the protocol's deepest message needs 4. */
#ifndef FLEET_JSON_MAX_DEPTH
#define FLEET_JSON_MAX_DEPTH 32
#endif
/* Most JSON values (objects, arrays, scalars) in one payload: caps cJSON's heap use. */
#ifndef FLEET_JSON_MAX_VALUES
#define FLEET_JSON_MAX_VALUES 2048
#endif
/* Integers beyond +-2^53 cannot be held exactly by cJSON's double: refused. */
#define FLEET_JSON_MAX_SAFE_INT 9007199254740992LL

typedef enum {
    FLEET_OK = 0,
    FLEET_ERR_TOO_LARGE, /* above FLEET_MAX_PAYLOAD */
    FLEET_ERR_JSON,      /* not (acceptable) JSON */
    FLEET_ERR_SCHEMA,    /* JSON, but not the expected message */
    FLEET_ERR_NOMEM,     /* cJSON could not allocate */
} fleet_err_t;

/* A human-readable reason, pydantic style: "meeting.room: ...". */
#define FLEET_ERRMSG_MAX 160
typedef struct {
    char msg[FLEET_ERRMSG_MAX];
} fleet_perr_t;

void fleet_perr_set(fleet_perr_t *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* A parsed document: the cJSON tree plus the text it came from. */
typedef struct {
    cJSON *root;
    const char *text;
    size_t len;
} fleet_json_doc_t;

/*
 * Validate and parse `len` bytes (not NUL-terminated). On FLEET_OK, doc->root is
 * the tree and must be released with fleet_json_free(); `text` must outlive the
 * doc (integer checks read it).
 */
fleet_err_t fleet_json_parse(fleet_json_doc_t *doc, const char *text, size_t len,
                             fleet_perr_t *err);
void fleet_json_free(fleet_json_doc_t *doc);

/* Only the strict validator (no allocation). Exposed for tests. */
bool fleet_json_validate(const char *text, size_t len, fleet_perr_t *err);

/* Member of an object by exact name; with duplicate names the last wins (as in pydantic). */
const cJSON *fleet_json_get(const cJSON *obj, const char *key);

/* True if the number node was written without fraction or exponent ("5", not "5.0"). */
bool fleet_json_is_int_literal(const fleet_json_doc_t *doc, const cJSON *num);

/* Unicode code points in a valid UTF-8 string (pydantic's max_length counts these). */
size_t fleet_utf8_len(const char *s);
/* True if s is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool fleet_utf8_valid(const char *s, size_t len);

/*
 * A JSON writer into a caller-owned buffer. It never allocates; overflow is
 * sticky and reported by fleet_jw_finish(). Strings are escaped per RFC 8259;
 * non-finite numbers are written as null (JSON has no NaN).
 */
/* As deep as the validator lets in, so anything parsed can be written back. */
#define FLEET_JW_MAX_DEPTH FLEET_JSON_MAX_DEPTH
typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    bool overflow;
    int depth;
    bool first[FLEET_JW_MAX_DEPTH + 1]; /* no comma needed before the next item */
    bool after_key;
} fleet_jw_t;

void fleet_jw_init(fleet_jw_t *w, char *buf, size_t cap);
void fleet_jw_obj_begin(fleet_jw_t *w);
void fleet_jw_obj_end(fleet_jw_t *w);
void fleet_jw_arr_begin(fleet_jw_t *w);
void fleet_jw_arr_end(fleet_jw_t *w);
void fleet_jw_key(fleet_jw_t *w, const char *key);
void fleet_jw_str(fleet_jw_t *w, const char *s);
void fleet_jw_int(fleet_jw_t *w, long long v);
void fleet_jw_num(fleet_jw_t *w, double v);
void fleet_jw_bool(fleet_jw_t *w, bool v);
void fleet_jw_null(fleet_jw_t *w);
/* Insert an already-encoded JSON value verbatim (caller guarantees it is valid). */
void fleet_jw_raw(fleet_jw_t *w, const char *json);
/* NUL-terminates; returns the length, or 0 on overflow or unbalanced nesting. */
size_t fleet_jw_finish(fleet_jw_t *w);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_JSON_H */
