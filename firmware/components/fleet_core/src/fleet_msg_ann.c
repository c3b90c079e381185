/*
 * fleet_msg_ann.c - announcements on the wire (protocol.md 14): AnnounceChunk on
 * dev/{id}/ann, strict base64 for its frames, and the ApiRequest a device's button sends on
 * api/by/{id}/{op}.
 */
#include <string.h>

#include "fleet_msg.h"
#include "fleet_msg_parts.h"
#include "fleet_valid.h"

/* No TAG here: this file never logs; problems go back to the caller in fleet_perr_t. */

bool fleet_ann_id_valid(const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;
    if (n == 0 || n > FLEET_ANN_ID_CHARS) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-')) {
            return false;
        }
    }
    return true;
}

static int b64_value(char ch)
{
    if (ch >= 'A' && ch <= 'Z') {
        return ch - 'A';
    }
    if (ch >= 'a' && ch <= 'z') {
        return ch - 'a' + 26;
    }
    if (ch >= '0' && ch <= '9') {
        return ch - '0' + 52;
    }
    if (ch == '+') {
        return 62;
    }
    if (ch == '/') {
        return 63;
    }
    return -1;
}

/* Walks strict base64; writes to out when it is not NULL. The decoded length, or -1. */
static long b64_walk(const char *s, uint8_t *out, size_t cap)
{
    size_t n = strlen(s);
    if (n == 0 || n % 4 != 0) {
        return -1;
    }
    size_t len = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char ch = s[i + (size_t)k];
            if (ch == '=' && i + 4 == n && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad > 0 || (v[k] = b64_value(ch)) < 0) {
                return -1; /* a character after padding, or outside the alphabet */
            }
        }
        uint32_t bits =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        size_t take = 3u - (size_t)pad;
        if (out != NULL) {
            if (len + take > cap) {
                return -1;
            }
            for (size_t k = 0; k < take; k++) {
                out[len + k] = (uint8_t)(bits >> (16 - 8 * k));
            }
        }
        len += take;
    }
    return (long)len;
}

long fleet_b64_len(const char *s)
{
    return s != NULL ? b64_walk(s, NULL, 0) : -1;
}

long fleet_b64_decode(const char *s, uint8_t *out, size_t cap)
{
    return s != NULL && out != NULL ? b64_walk(s, out, cap) : -1;
}

fleet_err_t fleet_ann_chunk_parse(const fleet_json_doc_t *doc, fleet_ann_chunk_t *out,
                                  fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL;
    const char *codec = NULL, *priority = NULL;
    memset(out, 0, sizeof *out);
    bool ok =
        fleet_read_root(&c, &root) &&
        fleet_read_str(&c, root, "", "ann", F_REQ, 1, FLEET_ANN_ID_CHARS, PAT_NONE, &out->ann) &&
        fleet_read_int(&c, root, "", "seq", F_REQ, 0, FLEET_MAX_REV, &(bool){false}, &out->seq) &&
        fleet_read_str(&c, root, "", "codec", F_REQ, 1, 8, PAT_NONE, &codec) &&
        fleet_read_arr(&c, root, "", "frames", F_REQ, FLEET_ANN_MAX_FRAMES, &out->frames,
                       &out->n_frames) &&
        fleet_read_bool(&c, root, "", "last", F_OPT, false, &out->last) &&
        fleet_read_str(&c, root, "", "priority", F_OPT, 1, 8, PAT_NONE, &priority);
    if (!ok) {
        return FLEET_ERR_SCHEMA;
    }
    if (!fleet_ann_id_valid(out->ann)) {
        fleet_fail(&c, "ann", "string does not match [A-Za-z0-9_-]{1,64}");
        return FLEET_ERR_SCHEMA;
    }
    if (strcmp(codec, "opus") == 0) {
        out->codec = FLEET_ANN_OPUS;
    } else if (strcmp(codec, "pcmu") == 0) {
        out->codec = FLEET_ANN_PCMU;
    } else {
        fleet_fail(&c, "codec", "expected 'opus' or 'pcmu'");
        return FLEET_ERR_SCHEMA;
    }
    if (priority != NULL && strcmp(priority, "normal") != 0 && strcmp(priority, "urgent") != 0) {
        fleet_fail(&c, "priority", "expected 'normal' or 'urgent'");
        return FLEET_ERR_SCHEMA;
    }
    out->urgent = priority != NULL && strcmp(priority, "urgent") == 0;
    if (out->n_frames == 0) {
        fleet_fail(&c, "frames", "at least one frame");
        return FLEET_ERR_SCHEMA;
    }
    for (const cJSON *it = out->frames->child; it != NULL; it = it->next) {
        long n = cJSON_IsString(it) ? fleet_b64_len(it->valuestring) : -1;
        if (n < 0) {
            fleet_fail(&c, "frames", "each must be a base64 string");
            return FLEET_ERR_SCHEMA;
        }
        if (n == 0 || n > FLEET_ANN_FRAME_MAX ||
            (out->codec == FLEET_ANN_PCMU && n != FLEET_ANN_PCMU_FRAME)) {
            fleet_fail(&c, "frames",
                       out->codec == FLEET_ANN_PCMU ? "a pcmu frame is 160 bytes"
                                                    : "an opus frame is 1-1275 bytes");
            return FLEET_ERR_SCHEMA;
        }
    }
    return FLEET_OK;
}

size_t fleet_api_req_encode(const fleet_api_req_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_write_opt_str(&w, "id", m->id);
    fleet_write_opt_str(&w, "device", m->device);
    fleet_write_opt_str(&w, "to", m->to);
    fleet_write_opt_str(&w, "group", m->group);
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}
