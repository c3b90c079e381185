/*
 * fleet_msg.c - schema checks and encoders for every protocol message.
 *
 * Each parser walks the cJSON tree with a few typed field readers that apply the
 * pydantic rules (see fleet_msg.h) and report the first problem with its path,
 * e.g. "meeting.room: string does not match the pattern".
 */
#include "fleet_msg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* No TAG here: this file never logs; problems go back to the caller in fleet_perr_t. */

/* ---- field readers ----------------------------------------------------------------------- */

typedef struct {
    const fleet_json_doc_t *doc;
    fleet_perr_t *err;
} pctx_t;

enum {
    F_OPT = 0,  /* may be absent (default applies) */
    F_REQ = 1,  /* must be present */
    F_NULL = 2, /* null accepted (an Optional field): same as absent */
};

typedef enum { PAT_NONE = 0, PAT_ID, PAT_ROOM } pattern_t;

/* Labels are short: a prefix like "audio.12." and a member name. */
#define LABEL_MAX 64

static bool fail(pctx_t *c, const char *label, const char *what)
{
    fleet_perr_set(c->err, "%s: %s", label[0] != '\0' ? label : "payload", what);
    return false;
}

/* prefix + key, cut to LABEL_MAX - 1 bytes (copied by hand: snprintf("%s%s") into a
 * fixed buffer draws -Wformat-truncation at -O2 and above, and IDF builds with -Werror). */
static const char *label_of(char *buf, const char *prefix, const char *key)
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
    (void)label_of(buf, prefix, key);
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
static int lookup(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  const cJSON **out)
{
    char label[LABEL_MAX];
    const cJSON *v = fleet_json_get(obj, key);
    if (v == NULL) {
        if (flags & F_REQ) {
            fail(c, label_of(label, prefix, key), "field required");
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

static bool v_int(pctx_t *c, const cJSON *v, const char *label, int64_t lo, int64_t hi,
                  int64_t *out)
{
    if (!cJSON_IsNumber(v) || !fleet_json_is_int_literal(c->doc, v)) {
        return fail(c, label, "expected an integer");
    }
    double d = v->valuedouble;
    if (d > (double)FLEET_JSON_MAX_SAFE_INT || d < -(double)FLEET_JSON_MAX_SAFE_INT) {
        return fail(c, label, "integer out of range for this device");
    }
    int64_t i = (int64_t)d;
    if (i < lo || i > hi) {
        char what[80];
        (void)snprintf(what, sizeof what, "must be in %lld..%lld", (long long)lo, (long long)hi);
        return fail(c, label, what);
    }
    *out = i;
    return true;
}

static bool v_num(pctx_t *c, const cJSON *v, const char *label, bool bounded, double lo, double hi,
                  double *out)
{
    if (!cJSON_IsNumber(v)) {
        return fail(c, label, "expected a number");
    }
    double d = v->valuedouble;
    if (!isfinite(d)) { /* 1e400: pydantic takes it as inf, which JSON cannot carry back */
        return fail(c, label, "number out of range for this device");
    }
    if (bounded && !(d >= lo && d <= hi)) {
        return fail(c, label, "number out of range");
    }
    *out = d;
    return true;
}

static bool v_str(pctx_t *c, const cJSON *v, const char *label, size_t min_cp, size_t max_cp,
                  pattern_t pat, const char **out)
{
    if (!cJSON_IsString(v) || v->valuestring == NULL) {
        return fail(c, label, "expected a string");
    }
    const char *s = v->valuestring;
    if (pat == PAT_ID && !fleet_id_valid(s)) {
        return fail(c, label, "string does not match the id pattern");
    }
    if (pat == PAT_ROOM && !fleet_room_valid(s)) {
        return fail(c, label, "string does not match the room pattern");
    }
    size_t n = fleet_utf8_len(s);
    if (n < min_cp) {
        return fail(c, label, "string too short");
    }
    if (max_cp > 0 && n > max_cp) {
        return fail(c, label, "string too long");
    }
    *out = s;
    return true;
}

/* Typed field readers: *has tells whether a value was read. */

static bool f_int(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  int64_t lo, int64_t hi, bool *has, int64_t *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    *has = r == 1;
    return r == 0 || (r == 1 && v_int(c, v, label_of(label, prefix, key), lo, hi, out));
}

static bool f_num(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  bool bounded, double lo, double hi, bool *has, double *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    *has = r == 1;
    return r == 0 || (r == 1 && v_num(c, v, label_of(label, prefix, key), bounded, lo, hi, out));
}

static bool f_bool(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                   bool dflt, bool *out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    if (r <= 0) {
        *out = dflt;
        return r == 0;
    }
    if (!cJSON_IsBool(v)) {
        return fail(c, label_of(label, prefix, key), "expected a boolean");
    }
    *out = cJSON_IsTrue(v);
    return true;
}

static bool f_str(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  size_t min_cp, size_t max_cp, pattern_t pat, const char **out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    *out = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    return r == 0 ||
           (r == 1 && v_str(c, v, label_of(label, prefix, key), min_cp, max_cp, pat, out));
}

static bool f_obj(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  const cJSON **out)
{
    char label[LABEL_MAX];
    const cJSON *v = NULL;
    *out = NULL;
    int r = lookup(c, obj, prefix, key, flags, &v);
    if (r <= 0) {
        return r == 0;
    }
    if (!cJSON_IsObject(v)) {
        return fail(c, label_of(label, prefix, key), "expected an object");
    }
    *out = v;
    return true;
}

static bool f_arr(pctx_t *c, const cJSON *obj, const char *prefix, const char *key, unsigned flags,
                  size_t max_items, const cJSON **out, size_t *count)
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
        return fail(c, label_of(label, prefix, key), "expected a list");
    }
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (max_items > 0 && n > max_items) {
        return fail(c, label_of(label, prefix, key), "too many items");
    }
    *out = v;
    *count = n;
    return true;
}

/* Each item of a list of strings. */
static bool strings_each(pctx_t *c, const cJSON *arr, const char *prefix, const char *key,
                         size_t max_cp, pattern_t pat, const char **out, size_t out_cap)
{
    char label[LABEL_MAX];
    size_t i = 0;
    for (const cJSON *it = arr != NULL ? arr->child : NULL; it != NULL; it = it->next, i++) {
        const char *s;
        if (!v_str(c, it, label_item(label, prefix, key, i), 0, max_cp, pat, &s)) {
            return false;
        }
        if (out != NULL && i < out_cap) {
            out[i] = s;
        }
    }
    return true;
}

static bool root_object(pctx_t *c, const cJSON **root)
{
    *root = c->doc->root;
    if (!cJSON_IsObject(*root)) {
        return fail(c, "", "expected an object");
    }
    return true;
}

static bool copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
}

/* ---- presence ---------------------------------------------------------------------------- */

static bool parse_caps(pctx_t *c, const cJSON *obj, const char *prefix, fleet_caps_t *out)
{
    const cJSON *arr = NULL;
    memset(out, 0, sizeof *out);
    return f_bool(c, obj, prefix, "audio", F_OPT, false, &out->audio) &&
           f_bool(c, obj, prefix, "mic", F_OPT, false, &out->mic) &&
           f_bool(c, obj, prefix, "speaker", F_OPT, false, &out->speaker) &&
           f_arr(c, obj, prefix, "codecs", F_OPT, FLEET_MAX_CODECS, &arr, &out->n_codecs) &&
           strings_each(c, arr, prefix, "codecs", FLEET_CODEC_CHARS, PAT_NONE, out->codecs,
                        FLEET_MAX_CODECS);
}

/* An optional Capabilities member named "caps". */
static bool opt_caps(pctx_t *c, const cJSON *obj, const char *prefix, const char *inner, bool *has,
                     fleet_caps_t *out)
{
    const cJSON *co = NULL;
    memset(out, 0, sizeof *out);
    if (!f_obj(c, obj, prefix, "caps", F_NULL, &co)) {
        return false;
    }
    *has = co != NULL;
    return co == NULL || parse_caps(c, co, inner, out);
}

fleet_err_t fleet_status_parse(const fleet_json_doc_t *doc, fleet_status_t *out, fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL, *groups = NULL;
    memset(out, 0, sizeof *out);
    bool ok = root_object(&c, &root) &&
              f_bool(&c, root, "", "online", F_REQ, false, &out->online) &&
              f_str(&c, root, "", "fw", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->fw) &&
              f_str(&c, root, "", "hw", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->hw) &&
              f_str(&c, root, "", "ip", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->ip) &&
              opt_caps(&c, root, "", "caps.", &out->has_caps, &out->caps) &&
              f_arr(&c, root, "", "groups", F_OPT, FLEET_MAX_GROUPS, &groups, &out->n_groups) &&
              strings_each(&c, groups, "", "groups", 0, PAT_ID, out->groups, FLEET_MAX_GROUPS) &&
              f_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- desired and state ------------------------------------------------------------------- */

fleet_err_t fleet_desired_parse(const fleet_json_doc_t *doc, fleet_desired_t *out,
                                fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL, *m = NULL;
    const char *room = NULL;
    int64_t volume = 0;
    memset(out, 0, sizeof *out);
    bool ok = root_object(&c, &root) &&
              f_int(&c, root, "", "rev", F_REQ, 0, FLEET_MAX_REV, &(bool){false}, &out->rev) &&
              f_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok =
            f_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &room) &&
            f_bool(&c, m, "meeting.", "mic", F_OPT, true, &out->meeting.mic) &&
            f_int(&c, m, "meeting.", "volume", F_NULL, 0, 100, &out->meeting.has_volume, &volume) &&
            f_num(&c, m, "meeting.", "until", F_NULL, false, 0, 0, &out->meeting.has_until,
                  &out->meeting.until);
        if (ok) {
            (void)copy_str(out->meeting.room, sizeof out->meeting.room, room); /* <= 64 chars */
            out->meeting.volume = (int)volume;
        }
    }
    ok = ok && f_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

fleet_err_t fleet_desired_decode(const char *payload, size_t len, fleet_desired_t *out,
                                 fleet_perr_t *err)
{
    fleet_json_doc_t doc;
    fleet_err_t rc = fleet_json_parse(&doc, payload, len, err);
    if (rc != FLEET_OK) {
        return rc;
    }
    rc = fleet_desired_parse(&doc, out, err);
    fleet_json_free(&doc);
    return rc;
}

fleet_err_t fleet_state_parse(const fleet_json_doc_t *doc, fleet_state_t *out, fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL, *m = NULL, *peers = NULL;
    int64_t volume = 0;
    memset(out, 0, sizeof *out);
    bool ok = root_object(&c, &root) &&
              f_int(&c, root, "", "rev", F_REQ, 0, FLEET_MAX_REV, &(bool){false}, &out->rev) &&
              f_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok = f_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &out->meeting.room) &&
             f_str(&c, m, "meeting.", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                   &out->meeting.session) &&
             f_str(&c, m, "meeting.", "participant", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                   &out->meeting.participant) &&
             f_arr(&c, m, "meeting.", "peers", F_OPT, FLEET_STATE_MAX_PEERS, &peers,
                   &out->meeting.n_peers) &&
             strings_each(&c, peers, "meeting.", "peers", FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                          out->meeting.peers, FLEET_STATE_MAX_PEERS);
    }
    ok = ok && f_bool(&c, root, "", "mic", F_OPT, true, &out->mic) &&
         f_int(&c, root, "", "volume", F_NULL, 0, 100, &out->has_volume, &volume) &&
         f_str(&c, root, "", "error", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->error) &&
         f_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    out->volume = (int)volume;
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- commands ---------------------------------------------------------------------------- */

fleet_err_t fleet_cmd_parse(const fleet_json_doc_t *doc, fleet_cmd_t *out, fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL;
    const char *id = NULL, *op = NULL;
    bool has_ttl = false;
    memset(out, 0, sizeof *out);
    bool ok =
        root_object(&c, &root) &&
        f_str(&c, root, "", "id", F_REQ, 1, FLEET_CMD_ID_CHARS, PAT_NONE, &id) &&
        f_str(&c, root, "", "op", F_REQ, 1, FLEET_OP_CHARS, PAT_NONE, &op) &&
        f_obj(&c, root, "", "args", F_OPT, &out->args) &&
        f_int(&c, root, "", "ttl_ms", F_OPT, 1, FLEET_JSON_MAX_SAFE_INT, &has_ttl, &out->ttl_ms) &&
        f_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    if (!ok) {
        return FLEET_ERR_SCHEMA;
    }
    if (!has_ttl) {
        out->ttl_ms = 30000;
    }
    /* Lengths were checked in code points; the arrays hold 4 bytes per code point. */
    (void)copy_str(out->id, sizeof out->id, id);
    (void)copy_str(out->op, sizeof out->op, op);
    return FLEET_OK;
}

bool fleet_cmd_salvage_id(const fleet_json_doc_t *doc, char *out, size_t cap)
{
    const cJSON *id = fleet_json_get(doc->root, "id");
    if (!cJSON_IsString(id) || id->valuestring == NULL) {
        return false;
    }
    size_t n = fleet_utf8_len(id->valuestring);
    if (n < 1 || n > FLEET_CMD_ID_CHARS) {
        return false;
    }
    return copy_str(out, cap, id->valuestring);
}

static const char *const ACK_CODES[] = {"ok",      "accepted", "unknown_op", "bad_args",
                                        "expired", "failed",   "bad_request"};

const char *fleet_ack_code_name(fleet_ack_code_t code)
{
    if ((unsigned)code < sizeof ACK_CODES / sizeof ACK_CODES[0]) {
        return ACK_CODES[code];
    }
    return "failed";
}

bool fleet_ack_code_from_name(const char *name, fleet_ack_code_t *out)
{
    for (unsigned i = 0; i < sizeof ACK_CODES / sizeof ACK_CODES[0]; i++) {
        if (strcmp(name, ACK_CODES[i]) == 0) {
            *out = (fleet_ack_code_t)i;
            return true;
        }
    }
    return false;
}

fleet_err_t fleet_ack_parse(const fleet_json_doc_t *doc, fleet_ack_t *out, fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL;
    const char *code = NULL;
    memset(out, 0, sizeof *out);
    bool ok = root_object(&c, &root) &&
              f_str(&c, root, "", "id", F_REQ, 1, FLEET_CMD_ID_CHARS, PAT_NONE, &out->id) &&
              f_bool(&c, root, "", "ok", F_REQ, false, &out->ok) &&
              f_str(&c, root, "", "code", F_REQ, 0, 0, PAT_NONE, &code);
    if (ok && !fleet_ack_code_from_name(code, &out->code)) {
        ok = fail(&c, "code", "not a known ack code");
    }
    ok = ok &&
         f_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->detail) &&
         f_bool(&c, root, "", "done", F_OPT, true, &out->done) &&
         f_obj(&c, root, "", "result", F_NULL, &out->result);
    if (ok && out->detail == NULL) {
        out->detail = "";
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- telemetry --------------------------------------------------------------------------- */

static bool parse_peer_audio(pctx_t *c, const cJSON *o, const char *p, fleet_peer_audio_t *a)
{
    bool has;
    memset(a, 0, sizeof *a);
    const int64_t big = FLEET_JSON_MAX_SAFE_INT;
    return f_str(c, o, p, "peer", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &a->peer) &&
           f_int(c, o, p, "packets_sent", F_OPT, 0, big, &has, &a->packets_sent) &&
           f_int(c, o, p, "packets_received", F_OPT, 0, big, &has, &a->packets_received) &&
           f_int(c, o, p, "packets_lost", F_OPT, 0, big, &has, &a->packets_lost) &&
           f_num(c, o, p, "loss", F_NULL, true, 0, 1, &a->has_loss, &a->loss) &&
           f_num(c, o, p, "jitter_ms", F_NULL, false, 0, 0, &a->has_jitter_ms, &a->jitter_ms) &&
           f_num(c, o, p, "rtt_ms", F_NULL, false, 0, 0, &a->has_rtt_ms, &a->rtt_ms) &&
           f_num(c, o, p, "level", F_NULL, false, 0, 0, &a->has_level, &a->level) &&
           f_num(c, o, p, "bitrate_kbps", F_NULL, false, 0, 0, &a->has_bitrate_kbps,
                 &a->bitrate_kbps) &&
           f_str(c, o, p, "codec", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &a->codec);
}

fleet_err_t fleet_tele_parse(const fleet_json_doc_t *doc, fleet_tele_t *out, fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL, *wifi = NULL, *sys = NULL, *m = NULL, *audio = NULL;
    bool has;
    const int64_t big = FLEET_JSON_MAX_SAFE_INT;
    fleet_peer_audio_t *storage = out->audio;
    size_t cap = out->audio_cap;
    memset(out, 0, sizeof *out);
    out->audio = storage;
    out->audio_cap = cap;
    bool ok =
        root_object(&c, &root) && f_num(&c, root, "", "ts", F_REQ, false, 0, 0, &has, &out->ts) &&
        f_obj(&c, root, "", "wifi", F_OPT, &wifi) &&
        f_int(&c, wifi, "wifi.", "rssi", F_NULL, -big, big, &out->wifi.has_rssi, &out->wifi.rssi) &&
        f_int(&c, wifi, "wifi.", "channel", F_NULL, -big, big, &out->wifi.has_channel,
              &out->wifi.channel) &&
        f_int(&c, wifi, "wifi.", "reconnects", F_OPT, 0, big, &has, &out->wifi.reconnects) &&
        f_obj(&c, root, "", "sys", F_OPT, &sys) &&
        f_int(&c, sys, "sys.", "heap_free", F_NULL, -big, big, &out->sys.has_heap_free,
              &out->sys.heap_free) &&
        f_int(&c, sys, "sys.", "heap_min", F_NULL, -big, big, &out->sys.has_heap_min,
              &out->sys.heap_min) &&
        f_num(&c, sys, "sys.", "uptime_s", F_NULL, false, 0, 0, &out->sys.has_uptime_s,
              &out->sys.uptime_s) &&
        f_num(&c, sys, "sys.", "cpu_load", F_NULL, true, 0, 1, &out->sys.has_cpu_load,
              &out->sys.cpu_load) &&
        f_int(&c, sys, "sys.", "mqtt_reconnects", F_OPT, 0, big, &has, &out->sys.mqtt_reconnects) &&
        f_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok = f_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &out->meeting.room) &&
             f_str(&c, m, "meeting.", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                   &out->meeting.session) &&
             f_str(&c, m, "meeting.", "participant", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                   &out->meeting.participant);
    }
    ok = ok && f_arr(&c, root, "", "audio", F_OPT, FLEET_TELE_MAX_AUDIO, &audio, &out->n_audio);
    size_t i = 0;
    for (const cJSON *it = audio != NULL ? audio->child : NULL; ok && it != NULL;
         it = it->next, i++) {
        char prefix[LABEL_MAX];
        fleet_peer_audio_t tmp;
        (void)snprintf(prefix, sizeof prefix, "audio.%lu.", (unsigned long)i);
        if (!cJSON_IsObject(it)) {
            ok = fail(&c, prefix, "expected an object");
            break;
        }
        ok = parse_peer_audio(&c, it, prefix, &tmp);
        if (ok && storage != NULL && i < cap) {
            storage[i] = tmp;
        }
    }
    if (storage != NULL && out->n_audio > cap) {
        out->n_audio = cap; /* the encoder must never read past what was stored */
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- meeting signalling ------------------------------------------------------------------ */

/* The discriminator: a string member "type" with one of the given tags. */
static bool tag_of(pctx_t *c, const cJSON *root, const char *const *tags, size_t n, unsigned *out)
{
    const cJSON *t = fleet_json_get(root, "type");
    if (t == NULL) {
        return fail(c, "type", "field required (discriminator)");
    }
    if (cJSON_IsString(t) && t->valuestring != NULL) {
        for (unsigned i = 0; i < n; i++) {
            if (strcmp(t->valuestring, tags[i]) == 0) {
                *out = i;
                return true;
            }
        }
    }
    return fail(c, "type", "not a known message type");
}

static const char *const UP_TAGS[] = {"join",    "leave",  "offer",    "answer",
                                      "message", "reject", "candidate"};
static const char *const DOWN_TAGS[] = {"joined", "peer_joined", "peer_left", "offer",    "answer",
                                        "left",   "error",       "message",   "media", "candidate"};

/* A trickled candidate's value (null = end of candidates) and its media section. */
static bool f_candidate(pctx_t *c, const cJSON *root, const char **cand, const char **mid)
{
    bool ok = f_str(c, root, "", "candidate", F_NULL, 1, FLEET_CANDIDATE_CHARS, PAT_NONE, cand) &&
              f_str(c, root, "", "mid", F_OPT, 1, FLEET_MID_CHARS, PAT_NONE, mid);
    *mid = *mid != NULL ? *mid : "0";
    return ok;
}

static void w_candidate(fleet_jw_t *w, const char *cand, const char *mid)
{
    fleet_jw_key(w, "candidate");
    if (cand != NULL) {
        fleet_jw_str(w, cand);
    } else {
        fleet_jw_null(w);
    }
    fleet_jw_key(w, "mid");
    fleet_jw_str(w, mid != NULL ? mid : "0");
}
#define N_UP_TAGS   (sizeof UP_TAGS / sizeof UP_TAGS[0])
#define N_DOWN_TAGS (sizeof DOWN_TAGS / sizeof DOWN_TAGS[0])

fleet_err_t fleet_meet_up_parse(const fleet_json_doc_t *doc, fleet_meet_up_t *out,
                                fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL;
    unsigned tag = 0;
    memset(out, 0, sizeof *out);
    if (!root_object(&c, &root) || !tag_of(&c, root, UP_TAGS, N_UP_TAGS, &tag)) {
        return FLEET_ERR_SCHEMA;
    }
    out->type = (fleet_up_type_t)tag;
    bool ok = true;
    switch (out->type) {
        case FLEET_UP_JOIN:
            ok = f_str(&c, root, "", "room", F_REQ, 0, 0, PAT_ROOM, &out->room) &&
                 opt_caps(&c, root, "", "caps.", &out->has_caps, &out->caps);
            break;
        case FLEET_UP_LEAVE:
            break;
        case FLEET_UP_OFFER:
        case FLEET_UP_ANSWER:
            ok = f_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->to) &&
                 f_str(&c, root, "", "sdp", F_REQ, 1, FLEET_SDP_CHARS, PAT_NONE, &out->sdp);
            break;
        case FLEET_UP_MESSAGE:
            ok = f_str(&c, root, "", "to", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->to) &&
                 f_str(&c, root, "", "text", F_NULL, 0, FLEET_SEND_TEXT_CHARS, PAT_NONE,
                       &out->text) &&
                 f_str(&c, root, "", "data_b64", F_NULL, 0, FLEET_SEND_B64_CHARS, PAT_NONE,
                       &out->data_b64);
            if (ok && out->text == NULL && out->data_b64 == NULL) {
                ok = fail(&c, "", "a message needs text or data_b64");
            }
            break;
        case FLEET_UP_REJECT:
            ok = f_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->to) &&
                 f_str(&c, root, "", "code", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->code) &&
                 f_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->detail);
            out->code = out->code != NULL ? out->code : "negotiation_failed";
            out->detail = out->detail != NULL ? out->detail : "";
            break;
        case FLEET_UP_CANDIDATE:
            ok = f_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->to) &&
                 f_candidate(&c, root, &out->candidate, &out->mid);
            break;
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

static bool parse_peer_info(pctx_t *c, const cJSON *o, const char *p, fleet_peer_info_t *out)
{
    char inner[LABEL_MAX];
    memset(out, 0, sizeof *out);
    (void)label_of(inner, p, "caps.");
    return f_str(c, o, p, "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                 &out->participant) &&
           f_str(c, o, p, "pid", F_REQ, 0, 0, PAT_ID, &out->pid) &&
           opt_caps(c, o, p, inner, &out->has_caps, &out->caps);
}

/* MediaPath: "mesh" (default where optional) or "mixed". */
static bool f_media(pctx_t *c, const cJSON *root, int mode, bool *mixed)
{
    const char *v = NULL;
    if (!f_str(c, root, "", "media", mode, 0, 0, PAT_NONE, &v)) {
        return false;
    }
    *mixed = v != NULL && strcmp(v, "mixed") == 0;
    return v == NULL || *mixed || strcmp(v, "mesh") == 0 ||
           fail(c, "media", "expected 'mesh' or 'mixed'");
}

/* peers: a list of PeerInfo, each validated. */
static bool f_peer_list(pctx_t *c, const cJSON *root, fleet_meet_down_t *out)
{
    bool ok = f_arr(c, root, "", "peers", F_OPT, FLEET_JOINED_MAX_PEERS, &out->peers,
                    &out->n_peers);
    size_t i = 0;
    for (const cJSON *it = out->peers != NULL ? out->peers->child : NULL; ok && it != NULL;
         it = it->next, i++) {
        char prefix[LABEL_MAX];
        fleet_peer_info_t tmp;
        (void)snprintf(prefix, sizeof prefix, "peers.%lu.", (unsigned long)i);
        ok = cJSON_IsObject(it) ? parse_peer_info(c, it, prefix, &tmp)
                                : fail(c, prefix, "expected an object");
    }
    return ok;
}

/* MeetRelayedOffer & co. name the field from_ with alias "from"; populate_by_name lets
 * "from_" stand in when "from" is absent. */
static bool f_from(pctx_t *c, const cJSON *root, const char **out)
{
    const char *key = fleet_json_get(root, "from") != NULL || fleet_json_get(root, "from_") == NULL
                          ? "from"
                          : "from_";
    return f_str(c, root, "", key, F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, out);
}

fleet_err_t fleet_meet_down_parse(const fleet_json_doc_t *doc, fleet_meet_down_t *out,
                                  fleet_perr_t *err)
{
    pctx_t c = {doc, err};
    const cJSON *root = NULL, *peer = NULL;
    unsigned tag = 0;
    memset(out, 0, sizeof *out);
    if (!root_object(&c, &root) || !tag_of(&c, root, DOWN_TAGS, N_DOWN_TAGS, &tag)) {
        return FLEET_ERR_SCHEMA;
    }
    out->type = (fleet_down_type_t)tag;
    bool ok = true;
    switch (out->type) {
        case FLEET_DOWN_JOINED: {
            ok = f_str(&c, root, "", "room", F_REQ, 0, 0, PAT_ROOM, &out->room) &&
                 f_str(&c, root, "", "session", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->session) &&
                 f_str(&c, root, "", "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->participant) &&
                 f_peer_list(&c, root, out) && f_media(&c, root, F_OPT, &out->mixed);
            break;
        }
        case FLEET_DOWN_MEDIA:
            ok = f_media(&c, root, F_REQ, &out->mixed) && f_peer_list(&c, root, out);
            break;
        case FLEET_DOWN_PEER_JOINED:
            ok = f_obj(&c, root, "", "peer", F_REQ, &peer) &&
                 parse_peer_info(&c, peer, "peer.", &out->peer);
            break;
        case FLEET_DOWN_PEER_LEFT:
            ok = f_str(&c, root, "", "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->participant);
            break;
        case FLEET_DOWN_OFFER:
        case FLEET_DOWN_ANSWER:
            ok = f_from(&c, root, &out->from) &&
                 f_str(&c, root, "", "sdp", F_REQ, 1, FLEET_SDP_CHARS, PAT_NONE, &out->sdp);
            break;
        case FLEET_DOWN_LEFT:
            ok = f_str(&c, root, "", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->session);
            break;
        case FLEET_DOWN_ERROR:
            ok = f_str(&c, root, "", "code", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->code) &&
                 f_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->detail) &&
                 f_str(&c, root, "", "from", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                       &out->from);
            if (ok && out->detail == NULL) {
                out->detail = "";
            }
            break;
        case FLEET_DOWN_MESSAGE:
            ok = f_from(&c, root, &out->from) &&
                 f_str(&c, root, "", "text", F_NULL, 0, FLEET_SEND_TEXT_CHARS, PAT_NONE,
                       &out->text) &&
                 f_str(&c, root, "", "data_b64", F_NULL, 0, FLEET_SEND_B64_CHARS, PAT_NONE,
                       &out->data_b64);
            break;
        case FLEET_DOWN_CANDIDATE:
            ok = f_from(&c, root, &out->from) && f_candidate(&c, root, &out->candidate, &out->mid);
            break;
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

bool fleet_meet_peer_at(const fleet_meet_down_t *msg, size_t i, fleet_peer_info_t *out)
{
    if ((msg->type != FLEET_DOWN_JOINED && msg->type != FLEET_DOWN_MEDIA) || msg->peers == NULL ||
        i >= msg->n_peers) {
        return false;
    }
    const cJSON *it = cJSON_GetArrayItem(msg->peers, (int)i);
    /* Already validated by fleet_meet_down_parse: this cannot fail on the same tree. */
    fleet_json_doc_t unused = {NULL, "", 0};
    pctx_t c = {&unused, NULL};
    return it != NULL && parse_peer_info(&c, it, "", out);
}

/* ---- encoders ---------------------------------------------------------------------------- */

static void w_opt_str(fleet_jw_t *w, const char *key, const char *v)
{
    if (v != NULL) {
        fleet_jw_key(w, key);
        fleet_jw_str(w, v);
    }
}

static void w_opt_num(fleet_jw_t *w, const char *key, bool has, double v)
{
    if (has && isfinite(v)) { /* nulls are left out, and a non-finite number is no JSON */
        fleet_jw_key(w, key);
        fleet_jw_num(w, v);
    }
}

static void w_opt_int(fleet_jw_t *w, const char *key, bool has, long long v)
{
    if (has) {
        fleet_jw_key(w, key);
        fleet_jw_int(w, v);
    }
}

static void w_caps(fleet_jw_t *w, const fleet_caps_t *caps)
{
    fleet_jw_obj_begin(w);
    fleet_jw_key(w, "audio");
    fleet_jw_bool(w, caps->audio);
    fleet_jw_key(w, "mic");
    fleet_jw_bool(w, caps->mic);
    fleet_jw_key(w, "speaker");
    fleet_jw_bool(w, caps->speaker);
    fleet_jw_key(w, "codecs");
    fleet_jw_arr_begin(w);
    for (size_t i = 0; i < caps->n_codecs && i < FLEET_MAX_CODECS; i++) {
        fleet_jw_str(w, caps->codecs[i]);
    }
    fleet_jw_arr_end(w);
    fleet_jw_obj_end(w);
}

/* A cJSON value re-encoded (args, result, peers views); depth is bounded by the writer. */
static void w_cjson(fleet_jw_t *w, const cJSON *v)
{
    if (cJSON_IsObject(v)) {
        fleet_jw_obj_begin(w);
        for (const cJSON *c = v->child; c != NULL; c = c->next) {
            fleet_jw_key(w, c->string != NULL ? c->string : "");
            w_cjson(w, c);
        }
        fleet_jw_obj_end(w);
    } else if (cJSON_IsArray(v)) {
        fleet_jw_arr_begin(w);
        for (const cJSON *c = v->child; c != NULL; c = c->next) {
            w_cjson(w, c);
        }
        fleet_jw_arr_end(w);
    } else if (cJSON_IsString(v)) {
        fleet_jw_str(w, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        fleet_jw_num(w, v->valuedouble);
    } else if (cJSON_IsBool(v)) {
        fleet_jw_bool(w, cJSON_IsTrue(v));
    } else {
        fleet_jw_null(w);
    }
}

size_t fleet_status_encode(const fleet_status_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "online");
    fleet_jw_bool(&w, m->online);
    w_opt_str(&w, "fw", m->fw);
    w_opt_str(&w, "hw", m->hw);
    w_opt_str(&w, "ip", m->ip);
    if (m->has_caps) {
        fleet_jw_key(&w, "caps");
        w_caps(&w, &m->caps);
    }
    fleet_jw_key(&w, "groups");
    fleet_jw_arr_begin(&w);
    for (size_t i = 0; i < m->n_groups && i < FLEET_MAX_GROUPS; i++) {
        fleet_jw_str(&w, m->groups[i]);
    }
    fleet_jw_arr_end(&w);
    w_opt_num(&w, "ts", m->has_ts, m->ts);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_desired_encode(const fleet_desired_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "rev");
    fleet_jw_int(&w, (long long)m->rev);
    if (m->has_meeting) {
        fleet_jw_key(&w, "meeting");
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "room");
        fleet_jw_str(&w, m->meeting.room);
        fleet_jw_key(&w, "mic");
        fleet_jw_bool(&w, m->meeting.mic);
        w_opt_int(&w, "volume", m->meeting.has_volume, m->meeting.volume);
        w_opt_num(&w, "until", m->meeting.has_until, m->meeting.until);
        fleet_jw_obj_end(&w);
    }
    w_opt_num(&w, "ts", m->has_ts, m->ts);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_state_encode(const fleet_state_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "rev");
    fleet_jw_int(&w, (long long)m->rev);
    if (m->has_meeting) {
        fleet_jw_key(&w, "meeting");
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "room");
        fleet_jw_str(&w, m->meeting.room);
        w_opt_str(&w, "session", m->meeting.session);
        w_opt_str(&w, "participant", m->meeting.participant);
        fleet_jw_key(&w, "peers");
        fleet_jw_arr_begin(&w);
        for (size_t i = 0; i < m->meeting.n_peers && i < FLEET_STATE_MAX_PEERS; i++) {
            fleet_jw_str(&w, m->meeting.peers[i]);
        }
        fleet_jw_arr_end(&w);
        fleet_jw_obj_end(&w);
    }
    fleet_jw_key(&w, "mic");
    fleet_jw_bool(&w, m->mic);
    w_opt_int(&w, "volume", m->has_volume, m->volume);
    w_opt_str(&w, "error", m->error);
    w_opt_num(&w, "ts", m->has_ts, m->ts);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_cmd_encode(const fleet_cmd_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "id");
    fleet_jw_str(&w, m->id);
    fleet_jw_key(&w, "op");
    fleet_jw_str(&w, m->op);
    fleet_jw_key(&w, "args");
    if (m->args != NULL) {
        w_cjson(&w, m->args);
    } else {
        fleet_jw_raw(&w, "{}");
    }
    fleet_jw_key(&w, "ttl_ms");
    fleet_jw_int(&w, (long long)m->ttl_ms);
    w_opt_num(&w, "ts", m->has_ts, m->ts);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_ack_encode(const fleet_ack_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "id");
    fleet_jw_str(&w, m->id);
    fleet_jw_key(&w, "ok");
    fleet_jw_bool(&w, m->ok);
    fleet_jw_key(&w, "code");
    fleet_jw_str(&w, fleet_ack_code_name(m->code));
    fleet_jw_key(&w, "detail");
    fleet_jw_str(&w, m->detail != NULL ? m->detail : "");
    fleet_jw_key(&w, "done");
    fleet_jw_bool(&w, m->done);
    if (m->result_json != NULL) {
        fleet_jw_key(&w, "result");
        fleet_jw_raw(&w, m->result_json);
    } else if (m->result != NULL) {
        fleet_jw_key(&w, "result");
        w_cjson(&w, m->result);
    }
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_tele_encode(const fleet_tele_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "ts");
    fleet_jw_num(&w, m->ts);
    fleet_jw_key(&w, "wifi");
    fleet_jw_obj_begin(&w);
    w_opt_int(&w, "rssi", m->wifi.has_rssi, m->wifi.rssi);
    w_opt_int(&w, "channel", m->wifi.has_channel, m->wifi.channel);
    fleet_jw_key(&w, "reconnects");
    fleet_jw_int(&w, m->wifi.reconnects);
    fleet_jw_obj_end(&w);
    fleet_jw_key(&w, "sys");
    fleet_jw_obj_begin(&w);
    w_opt_int(&w, "heap_free", m->sys.has_heap_free, m->sys.heap_free);
    w_opt_int(&w, "heap_min", m->sys.has_heap_min, m->sys.heap_min);
    w_opt_num(&w, "uptime_s", m->sys.has_uptime_s, m->sys.uptime_s);
    w_opt_num(&w, "cpu_load", m->sys.has_cpu_load, m->sys.cpu_load);
    fleet_jw_key(&w, "mqtt_reconnects");
    fleet_jw_int(&w, m->sys.mqtt_reconnects);
    fleet_jw_obj_end(&w);
    if (m->has_meeting) {
        fleet_jw_key(&w, "meeting");
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "room");
        fleet_jw_str(&w, m->meeting.room);
        w_opt_str(&w, "session", m->meeting.session);
        w_opt_str(&w, "participant", m->meeting.participant);
        fleet_jw_obj_end(&w);
    }
    fleet_jw_key(&w, "audio");
    fleet_jw_arr_begin(&w);
    for (size_t i = 0; m->audio != NULL && i < m->n_audio && i < FLEET_TELE_MAX_AUDIO; i++) {
        const fleet_peer_audio_t *a = &m->audio[i];
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "peer");
        fleet_jw_str(&w, a->peer);
        fleet_jw_key(&w, "packets_sent");
        fleet_jw_int(&w, a->packets_sent);
        fleet_jw_key(&w, "packets_received");
        fleet_jw_int(&w, a->packets_received);
        fleet_jw_key(&w, "packets_lost");
        fleet_jw_int(&w, a->packets_lost);
        w_opt_num(&w, "loss", a->has_loss, a->loss);
        w_opt_num(&w, "jitter_ms", a->has_jitter_ms, a->jitter_ms);
        w_opt_num(&w, "rtt_ms", a->has_rtt_ms, a->rtt_ms);
        w_opt_num(&w, "level", a->has_level, a->level);
        w_opt_num(&w, "bitrate_kbps", a->has_bitrate_kbps, a->bitrate_kbps);
        w_opt_str(&w, "codec", a->codec);
        fleet_jw_obj_end(&w);
    }
    fleet_jw_arr_end(&w);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

size_t fleet_meet_up_encode(const fleet_meet_up_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "type");
    fleet_jw_str(&w, UP_TAGS[(unsigned)m->type < N_UP_TAGS ? (unsigned)m->type : 1]);
    switch (m->type) {
        case FLEET_UP_JOIN:
            fleet_jw_key(&w, "room");
            fleet_jw_str(&w, m->room);
            if (m->has_caps) {
                fleet_jw_key(&w, "caps");
                w_caps(&w, &m->caps);
            }
            break;
        case FLEET_UP_OFFER:
        case FLEET_UP_ANSWER:
            fleet_jw_key(&w, "to");
            fleet_jw_str(&w, m->to);
            fleet_jw_key(&w, "sdp");
            fleet_jw_str(&w, m->sdp);
            break;
        case FLEET_UP_MESSAGE:
            w_opt_str(&w, "to", m->to);
            w_opt_str(&w, "text", m->text);
            w_opt_str(&w, "data_b64", m->data_b64);
            break;
        case FLEET_UP_REJECT:
            fleet_jw_key(&w, "to");
            fleet_jw_str(&w, m->to);
            fleet_jw_key(&w, "code");
            fleet_jw_str(&w, m->code != NULL ? m->code : "negotiation_failed");
            fleet_jw_key(&w, "detail");
            fleet_jw_str(&w, m->detail != NULL ? m->detail : "");
            break;
        case FLEET_UP_CANDIDATE:
            fleet_jw_key(&w, "to");
            fleet_jw_str(&w, m->to);
            w_candidate(&w, m->candidate, m->mid);
            break;
        case FLEET_UP_LEAVE:
        default:
            break;
    }
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}

static void w_peer_info(fleet_jw_t *w, const fleet_peer_info_t *p)
{
    fleet_jw_obj_begin(w);
    fleet_jw_key(w, "participant");
    fleet_jw_str(w, p->participant);
    fleet_jw_key(w, "pid");
    fleet_jw_str(w, p->pid);
    if (p->has_caps) {
        fleet_jw_key(w, "caps");
        w_caps(w, &p->caps);
    }
    fleet_jw_obj_end(w);
}

size_t fleet_meet_down_encode(const fleet_meet_down_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "type");
    fleet_jw_str(&w, DOWN_TAGS[(unsigned)m->type < N_DOWN_TAGS ? (unsigned)m->type : 5]);
    switch (m->type) {
        case FLEET_DOWN_JOINED:
        case FLEET_DOWN_MEDIA:
            if (m->type == FLEET_DOWN_JOINED) {
                fleet_jw_key(&w, "room");
                fleet_jw_str(&w, m->room);
                fleet_jw_key(&w, "session");
                fleet_jw_str(&w, m->session);
                fleet_jw_key(&w, "participant");
                fleet_jw_str(&w, m->participant);
            }
            fleet_jw_key(&w, "peers");
            fleet_jw_arr_begin(&w);
            for (size_t i = 0; i < m->n_peers; i++) {
                fleet_peer_info_t p;
                if (fleet_meet_peer_at(m, i, &p)) {
                    w_peer_info(&w, &p);
                }
            }
            fleet_jw_arr_end(&w);
            fleet_jw_key(&w, "media");
            fleet_jw_str(&w, m->mixed ? "mixed" : "mesh");
            break;
        case FLEET_DOWN_PEER_JOINED:
            fleet_jw_key(&w, "peer");
            w_peer_info(&w, &m->peer);
            break;
        case FLEET_DOWN_PEER_LEFT:
            fleet_jw_key(&w, "participant");
            fleet_jw_str(&w, m->participant);
            break;
        case FLEET_DOWN_OFFER:
        case FLEET_DOWN_ANSWER:
            fleet_jw_key(&w, "from");
            fleet_jw_str(&w, m->from);
            fleet_jw_key(&w, "sdp");
            fleet_jw_str(&w, m->sdp);
            break;
        case FLEET_DOWN_LEFT:
            w_opt_str(&w, "session", m->session);
            break;
        case FLEET_DOWN_ERROR:
            fleet_jw_key(&w, "code");
            fleet_jw_str(&w, m->code);
            fleet_jw_key(&w, "detail");
            fleet_jw_str(&w, m->detail != NULL ? m->detail : "");
            w_opt_str(&w, "from", m->from);
            break;
        case FLEET_DOWN_MESSAGE:
            fleet_jw_key(&w, "from");
            fleet_jw_str(&w, m->from);
            w_opt_str(&w, "text", m->text);
            w_opt_str(&w, "data_b64", m->data_b64);
            break;
        case FLEET_DOWN_CANDIDATE:
            fleet_jw_key(&w, "from");
            fleet_jw_str(&w, m->from);
            w_candidate(&w, m->candidate, m->mid);
            break;
    }
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}
