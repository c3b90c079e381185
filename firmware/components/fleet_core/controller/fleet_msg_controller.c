/*
 * fleet_msg_controller.c - the controller's side of the protocol (fleet_msg_controller.h),
 * built from the same readers and parts as the device's side, for host tests and fuzzers.
 */
#include "fleet_msg_controller.h"

#include <stdio.h>
#include <string.h>

#include "fleet_msg_parts.h"

/* ---- presence ---------------------------------------------------------------------------- */

fleet_err_t fleet_status_parse(const fleet_json_doc_t *doc, fleet_status_t *out, fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL, *groups = NULL;
    memset(out, 0, sizeof *out);
    bool ok =
        fleet_read_root(&c, &root) &&
        fleet_read_bool(&c, root, "", "online", F_REQ, false, &out->online) &&
        fleet_read_str(&c, root, "", "fw", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->fw) &&
        fleet_read_str(&c, root, "", "hw", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->hw) &&
        fleet_read_str(&c, root, "", "ip", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &out->ip) &&
        fleet_read_caps(&c, root, "", "caps.", &out->has_caps, &out->caps) &&
        fleet_read_arr(&c, root, "", "groups", F_OPT, FLEET_MAX_GROUPS, &groups, &out->n_groups) &&
        fleet_read_strings(&c, groups, "", "groups", 0, PAT_ID, out->groups, FLEET_MAX_GROUPS) &&
        fleet_read_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- state ------------------------------------------------------------------------------- */

fleet_err_t fleet_state_parse(const fleet_json_doc_t *doc, fleet_state_t *out, fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL, *m = NULL, *peers = NULL;
    int64_t volume = 0;
    memset(out, 0, sizeof *out);
    bool ok =
        fleet_read_root(&c, &root) &&
        fleet_read_int(&c, root, "", "rev", F_REQ, 0, FLEET_MAX_REV, &(bool){false}, &out->rev) &&
        fleet_read_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok = fleet_read_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &out->meeting.room) &&
             fleet_read_str(&c, m, "meeting.", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS,
                            PAT_NONE, &out->meeting.session) &&
             fleet_read_str(&c, m, "meeting.", "participant", F_NULL, 0, FLEET_SHORT_TEXT_CHARS,
                            PAT_NONE, &out->meeting.participant) &&
             fleet_read_arr(&c, m, "meeting.", "peers", F_OPT, FLEET_STATE_MAX_PEERS, &peers,
                            &out->meeting.n_peers) &&
             fleet_read_strings(&c, peers, "meeting.", "peers", FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                out->meeting.peers, FLEET_STATE_MAX_PEERS);
    }
    ok = ok && fleet_read_bool(&c, root, "", "mic", F_OPT, true, &out->mic) &&
         fleet_read_int(&c, root, "", "volume", F_NULL, 0, 100, &out->has_volume, &volume) &&
         fleet_read_str(&c, root, "", "error", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                        &out->error) &&
         fleet_read_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    out->volume = (int)volume;
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- acks -------------------------------------------------------------------------------- */

bool fleet_ack_code_from_name(const char *name, fleet_ack_code_t *out)
{
    for (unsigned i = FLEET_ACK_OK; i <= FLEET_ACK_BAD_REQUEST; i++) {
        if (strcmp(name, fleet_ack_code_name((fleet_ack_code_t)i)) == 0) {
            *out = (fleet_ack_code_t)i;
            return true;
        }
    }
    return false;
}

fleet_err_t fleet_ack_parse(const fleet_json_doc_t *doc, fleet_ack_t *out, fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL;
    const char *code = NULL;
    memset(out, 0, sizeof *out);
    bool ok =
        fleet_read_root(&c, &root) &&
        fleet_read_str(&c, root, "", "id", F_REQ, 1, FLEET_CMD_ID_CHARS, PAT_NONE, &out->id) &&
        fleet_read_bool(&c, root, "", "ok", F_REQ, false, &out->ok) &&
        fleet_read_str(&c, root, "", "code", F_REQ, 0, 0, PAT_NONE, &code);
    if (ok && !fleet_ack_code_from_name(code, &out->code)) {
        ok = fleet_fail(&c, "code", "not a known ack code");
    }
    ok = ok &&
         fleet_read_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                        &out->detail) &&
         fleet_read_bool(&c, root, "", "done", F_OPT, true, &out->done) &&
         fleet_read_obj(&c, root, "", "result", F_NULL, &out->result);
    if (ok && out->detail == NULL) {
        out->detail = "";
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- telemetry --------------------------------------------------------------------------- */

static bool parse_peer_audio(fleet_reader_t *c, const cJSON *o, const char *p,
                             fleet_peer_audio_t *a)
{
    bool has;
    memset(a, 0, sizeof *a);
    const int64_t big = FLEET_JSON_MAX_SAFE_INT;
    return fleet_read_str(c, o, p, "peer", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &a->peer) &&
           fleet_read_int(c, o, p, "packets_sent", F_OPT, 0, big, &has, &a->packets_sent) &&
           fleet_read_int(c, o, p, "packets_received", F_OPT, 0, big, &has, &a->packets_received) &&
           fleet_read_int(c, o, p, "packets_lost", F_OPT, 0, big, &has, &a->packets_lost) &&
           fleet_read_num(c, o, p, "loss", F_NULL, true, 0, 1, &a->has_loss, &a->loss) &&
           fleet_read_num(c, o, p, "jitter_ms", F_NULL, false, 0, 0, &a->has_jitter_ms,
                          &a->jitter_ms) &&
           fleet_read_num(c, o, p, "rtt_ms", F_NULL, false, 0, 0, &a->has_rtt_ms, &a->rtt_ms) &&
           fleet_read_num(c, o, p, "level", F_NULL, false, 0, 0, &a->has_level, &a->level) &&
           fleet_read_num(c, o, p, "bitrate_kbps", F_NULL, false, 0, 0, &a->has_bitrate_kbps,
                          &a->bitrate_kbps) &&
           fleet_read_str(c, o, p, "codec", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, &a->codec);
}

fleet_err_t fleet_tele_parse(const fleet_json_doc_t *doc, fleet_tele_t *out, fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL, *wifi = NULL, *sys = NULL, *m = NULL, *audio = NULL;
    bool has;
    const int64_t big = FLEET_JSON_MAX_SAFE_INT;
    fleet_peer_audio_t *storage = out->audio;
    size_t cap = out->audio_cap;
    memset(out, 0, sizeof *out);
    out->audio = storage;
    out->audio_cap = cap;
    bool ok = fleet_read_root(&c, &root) &&
              fleet_read_num(&c, root, "", "ts", F_REQ, false, 0, 0, &has, &out->ts) &&
              fleet_read_obj(&c, root, "", "wifi", F_OPT, &wifi) &&
              fleet_read_int(&c, wifi, "wifi.", "rssi", F_NULL, -big, big, &out->wifi.has_rssi,
                             &out->wifi.rssi) &&
              fleet_read_int(&c, wifi, "wifi.", "channel", F_NULL, -big, big,
                             &out->wifi.has_channel, &out->wifi.channel) &&
              fleet_read_int(&c, wifi, "wifi.", "reconnects", F_OPT, 0, big, &has,
                             &out->wifi.reconnects) &&
              fleet_read_obj(&c, root, "", "sys", F_OPT, &sys) &&
              fleet_read_int(&c, sys, "sys.", "heap_free", F_NULL, -big, big,
                             &out->sys.has_heap_free, &out->sys.heap_free) &&
              fleet_read_int(&c, sys, "sys.", "heap_min", F_NULL, -big, big, &out->sys.has_heap_min,
                             &out->sys.heap_min) &&
              fleet_read_num(&c, sys, "sys.", "uptime_s", F_NULL, false, 0, 0,
                             &out->sys.has_uptime_s, &out->sys.uptime_s) &&
              fleet_read_num(&c, sys, "sys.", "cpu_load", F_NULL, true, 0, 1,
                             &out->sys.has_cpu_load, &out->sys.cpu_load) &&
              fleet_read_int(&c, sys, "sys.", "mqtt_reconnects", F_OPT, 0, big, &has,
                             &out->sys.mqtt_reconnects) &&
              fleet_read_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok = fleet_read_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &out->meeting.room) &&
             fleet_read_str(&c, m, "meeting.", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS,
                            PAT_NONE, &out->meeting.session) &&
             fleet_read_str(&c, m, "meeting.", "participant", F_NULL, 0, FLEET_SHORT_TEXT_CHARS,
                            PAT_NONE, &out->meeting.participant);
    }
    ok = ok &&
         fleet_read_arr(&c, root, "", "audio", F_OPT, FLEET_TELE_MAX_AUDIO, &audio, &out->n_audio);
    size_t i = 0;
    for (const cJSON *it = audio != NULL ? audio->child : NULL; ok && it != NULL;
         it = it->next, i++) {
        char prefix[LABEL_MAX];
        fleet_peer_audio_t tmp;
        (void)snprintf(prefix, sizeof prefix, "audio.%lu.", (unsigned long)i);
        if (!cJSON_IsObject(it)) {
            ok = fleet_fail(&c, prefix, "expected an object");
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

/* ---- meeting signalling up --------------------------------------------------------------- */

fleet_err_t fleet_meet_up_parse(const fleet_json_doc_t *doc, fleet_meet_up_t *out,
                                fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL;
    unsigned tag = 0;
    memset(out, 0, sizeof *out);
    if (!fleet_read_root(&c, &root) || !fleet_read_tag(&c, root, fleet_up_tags, N_UP_TAGS, &tag)) {
        return FLEET_ERR_SCHEMA;
    }
    out->type = (fleet_up_type_t)tag;
    bool ok = true;
    switch (out->type) {
        case FLEET_UP_JOIN:
            ok = fleet_read_str(&c, root, "", "room", F_REQ, 0, 0, PAT_ROOM, &out->room) &&
                 fleet_read_caps(&c, root, "", "caps.", &out->has_caps, &out->caps);
            break;
        case FLEET_UP_LEAVE:
            break;
        case FLEET_UP_OFFER:
        case FLEET_UP_ANSWER:
            ok =
                fleet_read_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                               &out->to) &&
                fleet_read_str(&c, root, "", "sdp", F_REQ, 1, FLEET_SDP_CHARS, PAT_NONE, &out->sdp);
            break;
        case FLEET_UP_MESSAGE:
            ok = fleet_read_str(&c, root, "", "to", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->to) &&
                 fleet_read_str(&c, root, "", "text", F_NULL, 0, FLEET_SEND_TEXT_CHARS, PAT_NONE,
                                &out->text) &&
                 fleet_read_str(&c, root, "", "data_b64", F_NULL, 0, FLEET_SEND_B64_CHARS, PAT_NONE,
                                &out->data_b64);
            if (ok && out->text == NULL && out->data_b64 == NULL) {
                ok = fleet_fail(&c, "", "a message needs text or data_b64");
            }
            break;
        case FLEET_UP_REJECT:
            ok = fleet_read_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->to) &&
                 fleet_read_str(&c, root, "", "code", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->code) &&
                 fleet_read_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->detail);
            out->code = out->code != NULL ? out->code : "negotiation_failed";
            out->detail = out->detail != NULL ? out->detail : "";
            break;
        case FLEET_UP_CANDIDATE:
            ok = fleet_read_str(&c, root, "", "to", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->to) &&
                 fleet_read_candidate(&c, root, &out->candidate, &out->mid);
            break;
    }
    return ok ? FLEET_OK : FLEET_ERR_SCHEMA;
}

/* ---- encoders ---------------------------------------------------------------------------- */

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
        fleet_write_opt_int(&w, "volume", m->meeting.has_volume, m->meeting.volume);
        fleet_write_opt_num(&w, "until", m->meeting.has_until, m->meeting.until);
        fleet_jw_obj_end(&w);
    }
    fleet_write_opt_num(&w, "ts", m->has_ts, m->ts);
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
        fleet_write_cjson(&w, m->args);
    } else {
        fleet_jw_raw(&w, "{}");
    }
    fleet_jw_key(&w, "ttl_ms");
    fleet_jw_int(&w, (long long)m->ttl_ms);
    fleet_write_opt_num(&w, "ts", m->has_ts, m->ts);
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
        fleet_write_caps(w, &p->caps);
    }
    fleet_jw_obj_end(w);
}

size_t fleet_meet_down_encode(const fleet_meet_down_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "type");
    fleet_jw_str(&w, fleet_down_tags[(unsigned)m->type < N_DOWN_TAGS ? (unsigned)m->type : 5]);
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
            fleet_write_opt_str(&w, "session", m->session);
            break;
        case FLEET_DOWN_ERROR:
            fleet_jw_key(&w, "code");
            fleet_jw_str(&w, m->code);
            fleet_jw_key(&w, "detail");
            fleet_jw_str(&w, m->detail != NULL ? m->detail : "");
            fleet_write_opt_str(&w, "from", m->from);
            break;
        case FLEET_DOWN_MESSAGE:
            fleet_jw_key(&w, "from");
            fleet_jw_str(&w, m->from);
            fleet_write_opt_str(&w, "text", m->text);
            fleet_write_opt_str(&w, "data_b64", m->data_b64);
            break;
        case FLEET_DOWN_CANDIDATE:
            fleet_jw_key(&w, "from");
            fleet_jw_str(&w, m->from);
            fleet_write_candidate(&w, m->candidate, m->mid);
            break;
    }
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}
