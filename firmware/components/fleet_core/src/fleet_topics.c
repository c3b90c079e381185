/*
 * fleet_topics.c - topic building and parsing, without regex or allocation.
 */
#include "fleet_topics.h"

#include <stdio.h>
#include <string.h>

/* No TAG here: this file never logs. */

static const char *const DEVICE_KINDS[] = {"status", "desired", "state", "cmd", "ack", "tele"};

const char *fleet_topic_kind_name(fleet_topic_kind_t kind)
{
    static const char *const names[] = {"status",    "desired", "state",         "cmd",
                                        "ack",       "tele",    "group_desired", "meet_up",
                                        "meet_down", "api",     "api_result",    "announce"};
    if ((unsigned)kind < sizeof names / sizeof names[0]) {
        return names[kind];
    }
    return "?";
}

static bool lower_or_digit(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool fleet_id_valid_n(const char *s, size_t n)
{
    if (s == NULL || n == 0 || n > FLEET_ID_MAX || !lower_or_digit(s[0])) {
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        if (!lower_or_digit(s[i]) && s[i] != '-') {
            return false;
        }
    }
    return true;
}

bool fleet_id_valid(const char *s)
{
    return s != NULL && fleet_id_valid_n(s, strlen(s));
}

bool fleet_room_valid(const char *s)
{
    if (s == NULL || !lower_or_digit(s[0])) {
        return false;
    }
    size_t n = strlen(s);
    if (n > 64) {
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!lower_or_digit(c) && c != '.' && c != '_' && c != '-') {
            return false;
        }
    }
    return true;
}

static bool prefix_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
}

bool fleet_prefix_normalize(const char *in, char *out, size_t cap)
{
    if (in == NULL || out == NULL || cap == 0) {
        return false;
    }
    size_t start = 0, end = strlen(in);
    while (start < end && in[start] == '/') {
        start++;
    }
    while (end > start && in[end - 1] == '/') {
        end--;
    }
    size_t n = end - start;
    if (n == 0 || n >= cap || n > FLEET_PREFIX_MAX) {
        return false;
    }
    bool level_empty = true;
    for (size_t i = start; i < end; i++) {
        if (in[i] == '/') {
            if (level_empty) {
                return false; /* "a//b" */
            }
            level_empty = true;
        } else if (prefix_char(in[i])) {
            level_empty = false;
        } else {
            return false; /* wildcards, '$', spaces, non-ASCII */
        }
    }
    memcpy(out, in + start, n);
    out[n] = '\0';
    return true;
}

static bool build(char *out, size_t cap, const char *prefix, const char *mid, const char *name,
                  const char *tail)
{
    int n = snprintf(out, cap, "%s/%s/%s/%s", prefix, mid, name, tail);
    return n > 0 && (size_t)n < cap;
}

bool fleet_topic_device(char *out, size_t cap, const char *prefix, fleet_topic_kind_t kind,
                        const char *device_id)
{
    if (kind == FLEET_TOPIC_ANNOUNCE) {
        return fleet_id_valid(device_id) && build(out, cap, prefix, "dev", device_id, "ann");
    }
    if ((unsigned)kind > (unsigned)FLEET_TOPIC_TELE || !fleet_id_valid(device_id)) {
        return false;
    }
    return build(out, cap, prefix, "dev", device_id, DEVICE_KINDS[kind]);
}

bool fleet_topic_group_desired(char *out, size_t cap, const char *prefix, const char *group)
{
    return fleet_id_valid(group) && build(out, cap, prefix, "grp", group, "desired");
}

bool fleet_topic_meet(char *out, size_t cap, const char *prefix, const char *pid, bool up)
{
    return fleet_id_valid(pid) && build(out, cap, prefix, "meet", pid, up ? "up" : "down");
}

static bool api_op_valid(const char *s, size_t n);

bool fleet_topic_api_by(char *out, size_t cap, const char *prefix, const char *user, const char *op)
{
    if (!fleet_id_valid(user) || op == NULL || !api_op_valid(op, strlen(op))) {
        return false;
    }
    int n = snprintf(out, cap, "%s/api/by/%s/%s", prefix, user, op);
    return n > 0 && (size_t)n < cap;
}

/* Splits "a/b/c" (n bytes) into exactly three levels; false for any other count. */
static bool split3(const char *s, size_t n, const char *lv[3], size_t ln[3])
{
    size_t level = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '/') {
            if (level >= 3) {
                return false;
            }
            lv[level] = s + start;
            ln[level] = i - start;
            level++;
            start = i + 1;
        }
    }
    return level == 3;
}

static bool level_is(const char *lv, size_t ln, const char *word)
{
    return ln == strlen(word) && memcmp(lv, word, ln) == 0;
}

static void set_name(fleet_topic_t *out, const char *s, size_t n)
{
    memcpy(out->name, s, n);
    out->name[n] = '\0';
}

static bool api_op_valid(const char *s, size_t n)
{
    if (n == 0 || n > FLEET_API_OP_MAX || !(s[0] >= 'a' && s[0] <= 'z')) {
        return false;
    }
    for (size_t i = 1; i < n; i++) {
        if (!(s[i] >= 'a' && s[i] <= 'z') && s[i] != '-') {
            return false;
        }
    }
    return true;
}

bool fleet_topic_parse(const char *prefix, const char *topic, size_t len, fleet_topic_t *out)
{
    size_t plen = strlen(prefix);
    if (topic == NULL || len <= plen + 1 || memcmp(topic, prefix, plen) != 0 ||
        topic[plen] != '/') {
        return false;
    }
    const char *rest = topic + plen + 1;
    size_t rlen = len - plen - 1;

    /* api/{op} and api/result have two levels; everything else has three. */
    if (rlen > 4 && memcmp(rest, "api/", 4) == 0) {
        const char *op = rest + 4;
        size_t olen = rlen - 4;
        if (level_is(op, olen, "result")) {
            out->kind = FLEET_TOPIC_API_RESULT;
            set_name(out, op, olen);
            return true;
        }
        if (!api_op_valid(op, olen)) {
            return false;
        }
        out->kind = FLEET_TOPIC_API;
        set_name(out, op, olen);
        return true;
    }

    const char *lv[3];
    size_t ln[3];
    if (!split3(rest, rlen, lv, ln) || !fleet_id_valid_n(lv[1], ln[1])) {
        return false;
    }
    if (level_is(lv[0], ln[0], "dev")) {
        for (unsigned k = 0; k < sizeof DEVICE_KINDS / sizeof DEVICE_KINDS[0]; k++) {
            if (level_is(lv[2], ln[2], DEVICE_KINDS[k])) {
                out->kind = (fleet_topic_kind_t)k;
                set_name(out, lv[1], ln[1]);
                return true;
            }
        }
        if (level_is(lv[2], ln[2], "ann")) {
            out->kind = FLEET_TOPIC_ANNOUNCE;
            set_name(out, lv[1], ln[1]);
            return true;
        }
        return false;
    }
    if (level_is(lv[0], ln[0], "grp") && level_is(lv[2], ln[2], "desired")) {
        out->kind = FLEET_TOPIC_GROUP_DESIRED;
        set_name(out, lv[1], ln[1]);
        return true;
    }
    if (level_is(lv[0], ln[0], "meet")) {
        if (level_is(lv[2], ln[2], "up")) {
            out->kind = FLEET_TOPIC_MEET_UP;
        } else if (level_is(lv[2], ln[2], "down")) {
            out->kind = FLEET_TOPIC_MEET_DOWN;
        } else {
            return false;
        }
        set_name(out, lv[1], ln[1]);
        return true;
    }
    return false;
}
