/*
 * fleet_valid.h - the field readers every parser is made of. Not installed.
 *
 * Each reader applies pydantic's strict rules (see fleet_msg.h) to one member of a cJSON
 * object and reports the first problem with its path, e.g. "meeting.room: string does not
 * match the pattern". They return false after reporting; "has" (where there is one) tells
 * whether a value was read.
 */
#ifndef FLEET_VALID_H
#define FLEET_VALID_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_json.h"

typedef struct {
    const fleet_json_doc_t *doc;
    fleet_perr_t *err;
} fleet_reader_t;

enum {
    F_OPT = 0,  /* may be absent (default applies) */
    F_REQ = 1,  /* must be present */
    F_NULL = 2, /* null accepted (an Optional field): same as absent */
};

typedef enum { PAT_NONE = 0, PAT_ID, PAT_ROOM } pattern_t;

/* Labels are short: a prefix like "audio.12." and a member name. */
#define LABEL_MAX 64

bool fleet_fail(fleet_reader_t *c, const char *label, const char *what);
/* prefix + key, cut to LABEL_MAX - 1 bytes. */
const char *fleet_label(char *buf, const char *prefix, const char *key);

bool fleet_read_int(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, int64_t lo, int64_t hi, bool *has, int64_t *out);
bool fleet_read_num(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, bool bounded, double lo, double hi, bool *has, double *out);
bool fleet_read_bool(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                     unsigned flags, bool dflt, bool *out);
bool fleet_read_str(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, size_t min_cp, size_t max_cp, pattern_t pat, const char **out);
bool fleet_read_obj(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, const cJSON **out);
bool fleet_read_arr(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, size_t max_items, const cJSON **out, size_t *count);
/* Each item of a list of strings (arr NULL = none); the first out_cap go to out. */
bool fleet_read_strings(fleet_reader_t *c, const cJSON *arr, const char *prefix, const char *key,
                        size_t max_cp, pattern_t pat, const char **out, size_t out_cap);
/* The document's root, which must be an object. */
bool fleet_read_root(fleet_reader_t *c, const cJSON **root);
/* The discriminator: a string member "type" with one of the given tags. */
bool fleet_read_tag(fleet_reader_t *c, const cJSON *root, const char *const *tags, size_t n,
                    unsigned *out);

/* Copies src into dst if it fits (cap bytes with the terminator). */
bool fleet_copy_str(char *dst, size_t cap, const char *src);

#endif /* FLEET_VALID_H */
