/*
 * fleet_valid.c - typed field readers over a cJSON tree, with pydantic's strict rules
 * (fleet_valid.h). Messages are built from them in fleet_msg*.c.
 */
#include "fleet_valid.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "fleet_topics.h"

/* No TAG here: this file never logs; problems go back to the caller in fleet_perr_t. */

bool fleet_fail(fleet_reader_t *c, const char *label, const char *what)
{
    fleet_perr_set(c->err, "%s: %s", label[0] != '\0' ? label : "payload", what);
    return false;
}

/* prefix + key, cut to LABEL_MAX - 1 bytes (copied by hand: snprintf("%s%s") into a
 * fixed buffer draws -Wformat-truncation at -O2 and above, and IDF builds with -Werror). */
const char *fleet_label(char *buf, const char *prefix, const char *key)
{
    size_t n = 0;
    for (const char *parts[2] = {prefix, key}, **p = parts; p < parts + 2; p++) {
        for (const char *s = *p; *s != '\0' && n < LABEL_MAX - 1; s++) {
            buf[n++] = *s;
        }
    }
    buf[n] = '\0';
    return buf;
}

/* prefix + key + "." + index (list items). */
static const char *label_item(char *buf, const char *prefix, const char *key, size_t index)
{
    char num[24];
    (void)fleet_label(buf, prefix, key);
    size_t n = strlen(buf);
    int k = snprintf(num, sizeof num, ".%lu", (unsigned long)index);
    if (k > 0 && n + (size_t)k < LABEL_MAX) {
        memcpy(buf + n, num, (size_t)k + 1);
    }
    return buf;
}

/*
 * Looks a member up. Returns 1 with *out set when there is a value to check, 0 when the
 * field is absent (or null where null is allowed), -1 after reporting an error.
 */
static int lookup(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                  unsigned flags, const cJSON **out)
{
    char label[LABEL_MAX];
    const cJSON *v = fleet_json_get(obj, key);
    if (v == NULL) {
        if (flags & F_REQ) {
            fleet_fail(c, fleet_label(label, prefix, key), "field required");
            return -1;
        }
        return 0;
    }
    /* protocol.md 1.4: an explicit null and an absent field alike, so a field with a
       default takes it; only a required field refuses null. */
    if (cJSON_IsNull(v) && !(flags & F_REQ)) {
        return 0;
    }
    *out = v;
    return 1;
}

static bool check_int(fleet_reader_t *c, const cJSON *v, const char *label, int64_t lo, int64_t hi,
                      int64_t *out)
{
    if (!cJSON_IsNumber(v) || !fleet_json_is_int_literal(c->doc, v)) {
        return fleet_fail(c, label, "expected an integer");
    }
    double d = v->valuedouble;
    if (d > (double)FLEET_JSON_MAX_SAFE_INT || d < -(double)FLEET_JSON_MAX_SAFE_INT) {
        return fleet_fail(c, label, "integer out of range for this device");
    }
    int64_t i = (int64_t)d;
    if (i < lo || i > hi) {
        char what[80];
        (void)snprintf(what, sizeof what, "must be in %lld..%lld", (long long)lo, (long long)hi);
        return fleet_fail(c, label, what);
    }
    *out = i;
    return true;
}

static bool check_num(fleet_reader_t *c, const cJSON *v, const char *label, bool bounded, double lo,
                      double hi, double *out)
{
    if (!cJSON_IsNumber(v)) {
        return fleet_fail(c, label, "expected a number");
    }
    double d = v->valuedouble;
    if (!isfinite(d)) { /* 1e400: pydantic takes it as inf, which JSON cannot carry back */
        return fleet_fail(c, label, "number out of range for this device");
    }
    if (bounded && !(d >= lo && d <= hi)) {
        return fleet_fail(c, label, "number out of range");
    }
    *out = d;
    return true;
}

static bool check_str(fleet_reader_t *c, const cJSON *v, const char *label, size_t min_cp,
                      size_t max_cp, pattern_t pat, const char **out)
{
    if (!cJSON_IsString(v) || v->valuestring == NULL) {
        return fleet_fail(c, label, "expected a string");
    }
    const char *s = v->valuestring;
    if (pat == PAT_ID && !fleet_id_valid(s)) {
        return fleet_fail(c, label, "string does not match the id pattern");
    }
    if (pat == PAT_ROOM && !fleet_room_valid(s)) {
        return fleet_fail(c, label, "string does not match the room pattern");
    }
    size_t n = fleet_utf8_len(s);
    if (n < min_cp) {
        return fleet_fail(c, label, "string too short");
    }
    if (max_cp > 0 && n > max_cp) {
        return fleet_fail(c, label, "string too long");
    }
    *out = s;
    return true;
}

/* Typed field readers: *has tells whether a value was read. */

bool fleet_read_int(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, int64_t lo, int64_t hi, bool *has, int64_t *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    *has = r == 1;
    return r == 0 || (r == 1 && check_int(c, v, fleet_label(label, prefix, key), lo, hi, out));
}

bool fleet_read_num(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, bool bounded, double lo, double hi, bool *has, double *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    *has = r == 1;
    return r == 0 ||
           (r == 1 && check_num(c, v, fleet_label(label, prefix, key), bounded, lo, hi, out));
}

bool fleet_read_bool(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                     unsigned flags, bool dflt, bool *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    if (r <= 0) {
        *out = dflt;
        return r == 0;
    }
    if (!cJSON_IsBool(v)) {
        return fleet_fail(c, fleet_label(label, prefix, key), "expected a boolean");
    }
    *out = cJSON_IsTrue(v);
    return true;
}

bool fleet_read_str(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, size_t min_cp, size_t max_cp, pattern_t pat, const char **out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    *out = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    return r == 0 ||
           (r == 1 && check_str(c, v, fleet_label(label, prefix, key), min_cp, max_cp, pat, out));
}

bool fleet_read_obj(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, const cJSON **out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    *out = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    if (r <= 0) {
        return r == 0;
    }
    if (!cJSON_IsObject(v)) {
        return fleet_fail(c, fleet_label(label, prefix, key), "expected an object");
    }
    *out = v;
    return true;
}

bool fleet_read_arr(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *key,
                    unsigned flags, size_t max_items, const cJSON **out, size_t *count)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    *out = NULL;
    *count = 0;
    int r = lookup(c, obj, prefix, key, flags, &v);
    if (r <= 0) {
        return r == 0;
    }
    if (!cJSON_IsArray(v)) {
        return fleet_fail(c, fleet_label(label, prefix, key), "expected a list");
    }
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (max_items > 0 && n > max_items) {
        return fleet_fail(c, fleet_label(label, prefix, key), "too many items");
    }
    *out = v;
    *count = n;
    return true;
}

/* Each item of a list of strings. */
bool fleet_read_strings(fleet_reader_t *c, const cJSON *arr, const char *prefix, const char *key,
                        size_t max_cp, pattern_t pat, const char **out, size_t out_cap)
{
    char label[LABEL_MAX];
    size_t i = 0;
    for (const cJSON *it = arr != NULL ? arr->child : NULL; it != NULL; it = it->next, i++) {
        const char *s;
        if (!check_str(c, it, label_item(label, prefix, key, i), 0, max_cp, pat, &s)) {
            return false;
        }
        if (out != NULL && i < out_cap) {
            out[i] = s;
        }
    }
    return true;
}

bool fleet_read_root(fleet_reader_t *c, const cJSON **root)
{
    *root = c->doc->root;
    if (!cJSON_IsObject(*root)) {
        return fleet_fail(c, "", "expected an object");
    }
    return true;
}

bool fleet_copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
}

bool fleet_read_tag(fleet_reader_t *c, const cJSON *root, const char *const *tags, size_t n,
                    unsigned *out)
{
    const cJSON *t = fleet_json_get(root, "type");
    if (t == NULL) {
        return fleet_fail(c, "type", "field required (discriminator)");
    }
    if (cJSON_IsString(t) && t->valuestring != NULL) {
        for (unsigned i = 0; i < n; i++) {
            if (strcmp(t->valuestring, tags[i]) == 0) {
                *out = i;
                return true;
            }
        }
    }
    return fleet_fail(c, "type", "not a known message type");
}
