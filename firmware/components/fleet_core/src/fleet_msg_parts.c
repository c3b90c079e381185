/*
 * fleet_msg_parts.c - the schema pieces both directions share (fleet_msg_parts.h).
 */
#include "fleet_msg_parts.h"

#include <math.h>
#include <string.h>

/* ---- Capabilities ------------------------------------------------------------------------ */

static bool parse_caps(fleet_reader_t *c, const cJSON *obj, const char *prefix, fleet_caps_t *out)
{
    const cJSON *arr = NULL;
    memset(out, 0, sizeof *out);
    return fleet_read_bool(c, obj, prefix, "audio", F_OPT, false, &out->audio) &&
           fleet_read_bool(c, obj, prefix, "mic", F_OPT, false, &out->mic) &&
           fleet_read_bool(c, obj, prefix, "speaker", F_OPT, false, &out->speaker) &&
           fleet_read_arr(c, obj, prefix, "codecs", F_OPT, FLEET_MAX_CODECS, &arr,
                          &out->n_codecs) &&
           fleet_read_strings(c, arr, prefix, "codecs", FLEET_CODEC_CHARS, PAT_NONE, out->codecs,
                              FLEET_MAX_CODECS);
}

bool fleet_read_caps(fleet_reader_t *c, const cJSON *obj, const char *prefix, const char *inner,
                     bool *has, fleet_caps_t *out)
{
    const cJSON *co = NULL;
    memset(out, 0, sizeof *out);
    if (!fleet_read_obj(c, obj, prefix, "caps", F_NULL, &co)) {
        return false;
    }
    *has = co != NULL;
    return co == NULL || parse_caps(c, co, inner, out);
}

void fleet_write_caps(fleet_jw_t *w, const fleet_caps_t *caps)
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

/* ---- signalling -------------------------------------------------------------------------- */

const char *const fleet_up_tags[FLEET_UP_CANDIDATE + 1] = {
    "join", "leave", "offer", "answer", "message", "reject", "candidate"};
const char *const fleet_down_tags[FLEET_DOWN_CANDIDATE + 1] = {
    "joined", "peer_joined", "peer_left", "offer", "answer",
    "left",   "error",       "message",   "media", "candidate"};

bool fleet_read_candidate(fleet_reader_t *c, const cJSON *root, const char **cand, const char **mid)
{
    bool ok = fleet_read_str(c, root, "", "candidate", F_NULL, 1, FLEET_CANDIDATE_CHARS, PAT_NONE,
                             cand) &&
              fleet_read_str(c, root, "", "mid", F_OPT, 1, FLEET_MID_CHARS, PAT_NONE, mid);
    *mid = *mid != NULL ? *mid : "0";
    return ok;
}

void fleet_write_candidate(fleet_jw_t *w, const char *cand, const char *mid)
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

/* ---- optional members and copied views --------------------------------------------------- */

void fleet_write_opt_str(fleet_jw_t *w, const char *key, const char *v)
{
    if (v != NULL) {
        fleet_jw_key(w, key);
        fleet_jw_str(w, v);
    }
}

void fleet_write_opt_num(fleet_jw_t *w, const char *key, bool has, double v)
{
    if (has && isfinite(v)) { /* nulls are left out, and a non-finite number is no JSON */
        fleet_jw_key(w, key);
        fleet_jw_num(w, v);
    }
}

void fleet_write_opt_int(fleet_jw_t *w, const char *key, bool has, long long v)
{
    if (has) {
        fleet_jw_key(w, key);
        fleet_jw_int(w, v);
    }
}

void fleet_write_cjson(fleet_jw_t *w, const cJSON *v)
{
    if (cJSON_IsObject(v)) {
        fleet_jw_obj_begin(w);
        for (const cJSON *c = v->child; c != NULL; c = c->next) {
            fleet_jw_key(w, c->string != NULL ? c->string : "");
            fleet_write_cjson(w, c);
        }
        fleet_jw_obj_end(w);
    } else if (cJSON_IsArray(v)) {
        fleet_jw_arr_begin(w);
        for (const cJSON *c = v->child; c != NULL; c = c->next) {
            fleet_write_cjson(w, c);
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
