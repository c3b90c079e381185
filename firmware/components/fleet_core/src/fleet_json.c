/*
 * fleet_json.c - strict JSON validation in front of cJSON, and a bounded writer.
 */
#include "fleet_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* No TAG here: this file never logs; problems go back to the caller in fleet_perr_t. */

void fleet_perr_set(fleet_perr_t *err, const char *fmt, ...)
{
    if (err == NULL) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
}

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* Length of the well-formed UTF-8 sequence at s (n bytes available), 0 if ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) {
        return 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
        need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) {
            lo = 0xA0; /* no overlong forms */
        } else if (c == 0xED) {
            hi = 0x9F; /* no UTF-16 surrogates */
        }
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) {
            lo = 0x90;
        } else if (c == 0xF4) {
            hi = 0x8F; /* nothing above U+10FFFF */
        }
    } else {
        return 0;
    }
    if (n < need + 1) {
        return 0;
    }
    if (s[1] < lo || s[1] > hi) {
        return 0;
    }
    for (size_t k = 2; k <= need; k++) {
        if ((s[k] & 0xC0) != 0x80) {
            return 0;
        }
    }
    return need + 1;
}

bool fleet_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t k = utf8_seq(p + i, len - i);
        if (k == 0) {
            return false;
        }
        i += k;
    }
    return true;
}

size_t fleet_utf8_len(const char *s)
{
    size_t count = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        if ((*p & 0xC0) != 0x80) { /* count lead bytes only */
            count++;
        }
    }
    return count;
}

/* ---- strict validator -------------------------------------------------------------------- */

typedef struct {
    const unsigned char *p;
    size_t n;
    size_t i;
    unsigned values;
    fleet_perr_t *err;
} jv_t;

static bool jv_fail(jv_t *v, const char *what)
{
    fleet_perr_set(v->err, "invalid JSON: %s at byte %lu", what, (unsigned long)v->i);
    return false;
}

static void jv_ws(jv_t *v)
{
    while (v->i < v->n) {
        unsigned char c = v->p[v->i];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        v->i++;
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Reads the 4 hex digits after "\u" at v->i (which points at 'u'). */
static bool jv_u16(jv_t *v, unsigned *out)
{
    if (v->n - v->i < 5) {
        return jv_fail(v, "truncated \\u escape");
    }
    unsigned cp = 0;
    for (size_t k = 1; k <= 4; k++) {
        int h = hexval(v->p[v->i + k]);
        if (h < 0) {
            return jv_fail(v, "bad \\u escape");
        }
        cp = (cp << 4) | (unsigned)h;
    }
    v->i += 5;
    *out = cp;
    return true;
}

static bool jv_string(jv_t *v)
{
    v->i++; /* opening quote */
    for (;;) {
        if (v->i >= v->n) {
            return jv_fail(v, "unterminated string");
        }
        unsigned char c = v->p[v->i];
        if (c == '"') {
            v->i++;
            return true;
        }
        if (c == '\\') {
            v->i++;
            if (v->i >= v->n) {
                return jv_fail(v, "unterminated escape");
            }
            c = v->p[v->i];
            if (c == 'u') {
                unsigned cp;
                if (!jv_u16(v, &cp)) {
                    return false;
                }
                /* cJSON turns \u0000 into a C string terminator: a value would be cut short
                 * silently, so it is refused outright. */
                if (cp == 0) {
                    return jv_fail(v, "\\u0000 is not accepted");
                }
                if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    return jv_fail(v, "lone low surrogate");
                }
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (v->n - v->i < 2 || v->p[v->i] != '\\' || v->p[v->i + 1] != 'u') {
                        return jv_fail(v, "lone high surrogate");
                    }
                    v->i++;
                    if (!jv_u16(v, &lo)) {
                        return false;
                    }
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        return jv_fail(v, "bad surrogate pair");
                    }
                }
                continue;
            }
            if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
                return jv_fail(v, "bad escape");
            }
            v->i++;
            continue;
        }
        if (c < 0x20) {
            return jv_fail(v, "control character in string");
        }
        size_t k = utf8_seq(v->p + v->i, v->n - v->i);
        if (k == 0) {
            return jv_fail(v, "invalid UTF-8");
        }
        v->i += k;
    }
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool jv_number(jv_t *v)
{
    size_t start = v->i;
    if (v->p[v->i] == '-') {
        v->i++;
    }
    if (v->i >= v->n || !is_digit(v->p[v->i])) {
        return jv_fail(v, "bad number");
    }
    if (v->p[v->i] == '0') {
        v->i++;
    } else {
        while (v->i < v->n && is_digit(v->p[v->i])) {
            v->i++;
        }
    }
    if (v->i < v->n && v->p[v->i] == '.') {
        v->i++;
        if (v->i >= v->n || !is_digit(v->p[v->i])) {
            return jv_fail(v, "bad number");
        }
        while (v->i < v->n && is_digit(v->p[v->i])) {
            v->i++;
        }
    }
    if (v->i < v->n && (v->p[v->i] == 'e' || v->p[v->i] == 'E')) {
        v->i++;
        if (v->i < v->n && (v->p[v->i] == '+' || v->p[v->i] == '-')) {
            v->i++;
        }
        if (v->i >= v->n || !is_digit(v->p[v->i])) {
            return jv_fail(v, "bad number");
        }
        while (v->i < v->n && is_digit(v->p[v->i])) {
            v->i++;
        }
    }
    /* cJSON copies a number into a 64-byte scratch buffer and fails on longer ones. */
    if (v->i - start > 63) {
        return jv_fail(v, "number too long");
    }
    return true;
}

static bool jv_literal(jv_t *v, const char *word)
{
    size_t k = strlen(word);
    if (v->n - v->i < k || memcmp(v->p + v->i, word, k) != 0) {
        return jv_fail(v, "unexpected character");
    }
    v->i += k;
    return true;
}

static bool jv_value(jv_t *v, int depth);

static bool jv_container(jv_t *v, int depth, bool is_object)
{
    const unsigned char close = is_object ? '}' : ']';
    if (depth >= FLEET_JSON_MAX_DEPTH) {
        return jv_fail(v, "nested too deeply");
    }
    v->i++; /* opening bracket */
    jv_ws(v);
    if (v->i < v->n && v->p[v->i] == close) {
        v->i++;
        return true;
    }
    for (;;) {
        if (is_object) {
            if (v->i >= v->n || v->p[v->i] != '"') {
                return jv_fail(v, "expected a member name");
            }
            if (!jv_string(v)) {
                return false;
            }
            jv_ws(v);
            if (v->i >= v->n || v->p[v->i] != ':') {
                return jv_fail(v, "expected ':'");
            }
            v->i++;
            jv_ws(v);
        }
        if (!jv_value(v, depth + 1)) {
            return false;
        }
        jv_ws(v);
        if (v->i >= v->n) {
            return jv_fail(v, "unterminated container");
        }
        if (v->p[v->i] == ',') {
            v->i++;
            jv_ws(v);
            continue;
        }
        if (v->p[v->i] == close) {
            v->i++;
            return true;
        }
        return jv_fail(v, "expected ',' or a closing bracket");
    }
}

static bool jv_value(jv_t *v, int depth)
{
    if (v->i >= v->n) {
        return jv_fail(v, "expected a value");
    }
    if (++v->values > FLEET_JSON_MAX_VALUES) {
        return jv_fail(v, "too many values");
    }
    switch (v->p[v->i]) {
        case '{':
            return jv_container(v, depth, true);
        case '[':
            return jv_container(v, depth, false);
        case '"':
            return jv_string(v);
        case 't':
            return jv_literal(v, "true");
        case 'f':
            return jv_literal(v, "false");
        case 'n':
            return jv_literal(v, "null");
        default:
            if (v->p[v->i] == '-' || is_digit(v->p[v->i])) {
                return jv_number(v);
            }
            return jv_fail(v, "expected a value");
    }
}

bool fleet_json_validate(const char *text, size_t len, fleet_perr_t *err)
{
    jv_t v = {(const unsigned char *)text, len, 0, 0, err};
    if (text == NULL) {
        return jv_fail(&v, "no payload");
    }
    jv_ws(&v);
    if (!jv_value(&v, 0)) {
        return false;
    }
    jv_ws(&v);
    if (v.i != v.n) {
        return jv_fail(&v, "trailing data");
    }
    return true;
}

fleet_err_t fleet_json_parse(fleet_json_doc_t *doc, const char *text, size_t len, fleet_perr_t *err)
{
    doc->root = NULL;
    doc->text = text;
    doc->len = len;
    if (len > FLEET_MAX_PAYLOAD) {
        fleet_perr_set(err, "payload of %lu bytes exceeds the %u-byte limit", (unsigned long)len,
                       FLEET_MAX_PAYLOAD);
        return FLEET_ERR_TOO_LARGE;
    }
    if (!fleet_json_validate(text, len, err)) {
        return FLEET_ERR_JSON;
    }
    doc->root = cJSON_ParseWithLengthOpts(text, len, NULL, false);
    if (doc->root == NULL) {
        /* The text is valid JSON within cJSON's limits, so this is an allocation failure. */
        fleet_perr_set(err, "out of memory parsing %lu bytes", (unsigned long)len);
        return FLEET_ERR_NOMEM;
    }
    return FLEET_OK;
}

void fleet_json_free(fleet_json_doc_t *doc)
{
    if (doc->root != NULL) {
        cJSON_Delete(doc->root);
        doc->root = NULL;
    }
}

const cJSON *fleet_json_get(const cJSON *obj, const char *key)
{
    const cJSON *found = NULL;
    if (!cJSON_IsObject(obj)) {
        return NULL;
    }
    for (const cJSON *c = obj->child; c != NULL; c = c->next) {
        if (c->string != NULL && strcmp(c->string, key) == 0) {
            found = c; /* keep going: the last duplicate wins */
        }
    }
    return found;
}

/* Counts number nodes before `target` in document (pre-order) order. Depth is bounded by
 * the validator, so the recursion is too. */
static bool count_numbers_before(const cJSON *node, const cJSON *target, size_t *count)
{
    for (; node != NULL; node = node->next) {
        if (node == target) {
            return true;
        }
        if (cJSON_IsNumber(node)) {
            (*count)++;
        }
        if (node->child != NULL && count_numbers_before(node->child, target, count)) {
            return true;
        }
    }
    return false;
}

bool fleet_json_is_int_literal(const fleet_json_doc_t *doc, const cJSON *num)
{
    size_t index = 0;
    if (!cJSON_IsNumber(num) || !count_numbers_before(doc->root, num, &index)) {
        return false;
    }
    /* cJSON keeps members in document order, so the index-th number token of the text is
     * this node's source. Outside strings, digits and '-' only start numbers. */
    size_t seen = 0;
    const char *t = doc->text;
    size_t i = 0;
    while (i < doc->len) {
        char c = t[i];
        if (c == '"') {
            for (i++; i < doc->len && t[i] != '"'; i++) {
                if (t[i] == '\\') {
                    i++;
                }
            }
            i++;
            continue;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            bool integral = true;
            while (i < doc->len && strchr("0123456789+-.eE", t[i]) != NULL && t[i] != '\0') {
                if (t[i] == '.' || t[i] == 'e' || t[i] == 'E') {
                    integral = false;
                }
                i++;
            }
            if (seen == index) {
                return integral;
            }
            seen++;
            continue;
        }
        i++;
    }
    return false;
}

/* ---- writer ------------------------------------------------------------------------------ */

void fleet_jw_init(fleet_jw_t *w, char *buf, size_t cap)
{
    memset(w, 0, sizeof *w);
    w->buf = buf;
    w->cap = cap;
    w->first[0] = true;
    if (cap == 0) {
        w->overflow = true;
    } else {
        buf[0] = '\0';
    }
}

static void jw_put(fleet_jw_t *w, const char *s, size_t n)
{
    if (w->overflow) {
        return;
    }
    if (n + 1 > w->cap - w->len) { /* keep room for the terminator */
        w->overflow = true;
        return;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

static void jw_pre_value(fleet_jw_t *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (!w->first[w->depth]) {
        jw_put(w, ",", 1);
    }
    w->first[w->depth] = false;
}

static void jw_open(fleet_jw_t *w, const char *bracket)
{
    jw_pre_value(w);
    jw_put(w, bracket, 1);
    if (w->depth >= FLEET_JW_MAX_DEPTH) {
        w->overflow = true;
        return;
    }
    w->depth++;
    w->first[w->depth] = true;
}

static void jw_close(fleet_jw_t *w, const char *bracket)
{
    jw_put(w, bracket, 1);
    if (w->depth == 0) {
        w->overflow = true;
        return;
    }
    w->depth--;
}

void fleet_jw_obj_begin(fleet_jw_t *w)
{
    jw_open(w, "{");
}

void fleet_jw_obj_end(fleet_jw_t *w)
{
    jw_close(w, "}");
}

void fleet_jw_arr_begin(fleet_jw_t *w)
{
    jw_open(w, "[");
}

void fleet_jw_arr_end(fleet_jw_t *w)
{
    jw_close(w, "]");
}

static void jw_quoted(fleet_jw_t *w, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s != NULL ? s : "");
    size_t n = strlen((const char *)p);
    jw_put(w, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            jw_put(w, esc, 2);
            i++;
        } else if (c < 0x20) {
            /* Short forms where JSON has them (SDP is full of CRLF), \u00XX otherwise. */
            char short_form = c == '\b'   ? 'b'
                              : c == '\t' ? 't'
                              : c == '\n' ? 'n'
                              : c == '\f' ? 'f'
                              : c == '\r' ? 'r'
                                          : '\0';
            if (short_form != '\0') {
                esc[0] = '\\';
                esc[1] = short_form;
                jw_put(w, esc, 2);
            } else {
                (void)snprintf(esc, sizeof esc, "\\u%04x", (unsigned)c);
                jw_put(w, esc, 6);
            }
            i++;
        } else {
            size_t k = utf8_seq(p + i, n - i);
            if (k == 0) {
                jw_put(w, "?", 1); /* never emit invalid UTF-8, whatever the caller had */
                i++;
            } else {
                jw_put(w, (const char *)p + i, k);
                i += k;
            }
        }
    }
    jw_put(w, "\"", 1);
}

void fleet_jw_key(fleet_jw_t *w, const char *key)
{
    jw_pre_value(w);
    jw_quoted(w, key);
    jw_put(w, ":", 1);
    w->after_key = true;
}

void fleet_jw_str(fleet_jw_t *w, const char *s)
{
    jw_pre_value(w);
    jw_quoted(w, s);
}

void fleet_jw_int(fleet_jw_t *w, long long v)
{
    char tmp[24];
    jw_pre_value(w);
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    jw_put(w, tmp, (size_t)n);
}

void fleet_jw_num(fleet_jw_t *w, double v)
{
    char tmp[32];
    if (!isfinite(v)) {
        fleet_jw_null(w);
        return;
    }
    jw_pre_value(w);
    /* Shortest of 15 or 17 significant digits that reads back as the same double. */
    int n = snprintf(tmp, sizeof tmp, "%.15g", v);
    if (strtod(tmp, NULL) != v) {
        n = snprintf(tmp, sizeof tmp, "%.17g", v);
    }
    jw_put(w, tmp, (size_t)n);
}

void fleet_jw_bool(fleet_jw_t *w, bool v)
{
    jw_pre_value(w);
    jw_put(w, v ? "true" : "false", v ? 4 : 5);
}

void fleet_jw_null(fleet_jw_t *w)
{
    jw_pre_value(w);
    jw_put(w, "null", 4);
}

void fleet_jw_raw(fleet_jw_t *w, const char *json)
{
    jw_pre_value(w);
    jw_put(w, json, strlen(json));
}

size_t fleet_jw_finish(fleet_jw_t *w)
{
    if (w->overflow || w->depth != 0) {
        if (w->cap > 0) {
            w->buf[0] = '\0';
        }
        return 0;
    }
    w->buf[w->len] = '\0';
    return w->len;
}
