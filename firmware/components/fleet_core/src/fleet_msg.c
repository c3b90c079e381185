/*
 * fleet_msg.c - the device's side of the protocol: what it parses (desired, commands, meeting
 * signalling down) and what it emits (birth, state, acks, telemetry, meeting signalling up).
 * The controller's side, which only the host tests and fuzzers need, is in
 * controller/fleet_msg_controller.c.
 */
#include "fleet_msg.h"

#include <stdio.h>
#include <string.h>

#include "fleet_msg_parts.h"

/* No TAG here: this file never logs; problems go back to the caller in fleet_perr_t. */

/* ---- desired ----------------------------------------------------------------------------- */

fleet_err_t fleet_desired_parse(const fleet_json_doc_t *doc, fleet_desired_t *out,
                                fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL, *m = NULL;
    const char *room = NULL;
    int64_t volume = 0;
    memset(out, 0, sizeof *out);
    bool ok =
        fleet_read_root(&c, &root) &&
        fleet_read_int(&c, root, "", "rev", F_REQ, 0, FLEET_MAX_REV, &(bool){false}, &out->rev) &&
        fleet_read_obj(&c, root, "", "meeting", F_NULL, &m);
    if (ok && m != NULL) {
        out->has_meeting = true;
        ok = fleet_read_str(&c, m, "meeting.", "room", F_REQ, 0, 0, PAT_ROOM, &room) &&
             fleet_read_bool(&c, m, "meeting.", "mic", F_OPT, true, &out->meeting.mic) &&
             fleet_read_int(&c, m, "meeting.", "volume", F_NULL, 0, 100, &out->meeting.has_volume,
                            &volume) &&
             fleet_read_num(&c, m, "meeting.", "until", F_NULL, false, 0, 0,
                            &out->meeting.has_until, &out->meeting.until);
        if (ok) {
            /* the pattern allows at most 64 chars */
            (void)fleet_copy_str(out->meeting.room, sizeof out->meeting.room, room);
            out->meeting.volume = (int)volume;
        }
    }
    if (ok) {
        const cJSON *dnd = fleet_json_get(root, "dnd");
        out->has_dnd = dnd != NULL && !cJSON_IsNull(dnd);
        ok = !out->has_dnd || fleet_read_bool(&c, root, "", "dnd", F_REQ, false, &out->dnd);
    }
    ok = ok && fleet_read_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
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

/* ---- commands ---------------------------------------------------------------------------- */

fleet_err_t fleet_cmd_parse(const fleet_json_doc_t *doc, fleet_cmd_t *out, fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL;
    const char *id = NULL, *op = NULL;
    bool has_ttl = false;
    memset(out, 0, sizeof *out);
    bool ok = fleet_read_root(&c, &root) &&
              fleet_read_str(&c, root, "", "id", F_REQ, 1, FLEET_CMD_ID_CHARS, PAT_NONE, &id) &&
              fleet_read_str(&c, root, "", "op", F_REQ, 1, FLEET_OP_CHARS, PAT_NONE, &op) &&
              fleet_read_obj(&c, root, "", "args", F_OPT, &out->args) &&
              fleet_read_int(&c, root, "", "ttl_ms", F_OPT, 1, FLEET_JSON_MAX_SAFE_INT, &has_ttl,
                             &out->ttl_ms) &&
              fleet_read_num(&c, root, "", "ts", F_NULL, false, 0, 0, &out->has_ts, &out->ts);
    if (!ok) {
        return FLEET_ERR_SCHEMA;
    }
    if (!has_ttl) {
        out->ttl_ms = 30000;
    }
    /* Lengths were checked in code points; the arrays hold 4 bytes per code point. */
    (void)fleet_copy_str(out->id, sizeof out->id, id);
    (void)fleet_copy_str(out->op, sizeof out->op, op);
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
    return fleet_copy_str(out, cap, id->valuestring);
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

/* ---- meeting signalling down ------------------------------------------------------------- */

static bool parse_peer_info(fleet_reader_t *c, const cJSON *o, const char *p,
                            fleet_peer_info_t *out)
{
    char inner[LABEL_MAX];
    memset(out, 0, sizeof *out);
    (void)fleet_label(inner, p, "caps.");
    return fleet_read_str(c, o, p, "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                          &out->participant) &&
           fleet_read_str(c, o, p, "pid", F_REQ, 0, 0, PAT_ID, &out->pid) &&
           fleet_read_caps(c, o, p, inner, &out->has_caps, &out->caps);
}

/* MediaPath: "mesh" (default where optional) or "mixed". */
static bool f_media(fleet_reader_t *c, const cJSON *root, int mode, bool *mixed)
{
    const char *v = NULL;
    if (!fleet_read_str(c, root, "", "media", mode, 0, 0, PAT_NONE, &v)) {
        return false;
    }
    *mixed = v != NULL && strcmp(v, "mixed") == 0;
    return v == NULL || *mixed || strcmp(v, "mesh") == 0 ||
           fleet_fail(c, "media", "expected 'mesh' or 'mixed'");
}

/* peers: a list of PeerInfo, each validated. */
static bool f_peer_list(fleet_reader_t *c, const cJSON *root, fleet_meet_down_t *out)
{
    bool ok = fleet_read_arr(c, root, "", "peers", F_OPT, FLEET_JOINED_MAX_PEERS, &out->peers,
                             &out->n_peers);
    size_t i = 0;
    for (const cJSON *it = out->peers != NULL ? out->peers->child : NULL; ok && it != NULL;
         it = it->next, i++) {
        char prefix[LABEL_MAX];
        fleet_peer_info_t tmp;
        (void)snprintf(prefix, sizeof prefix, "peers.%lu.", (unsigned long)i);
        ok = cJSON_IsObject(it) ? parse_peer_info(c, it, prefix, &tmp)
                                : fleet_fail(c, prefix, "expected an object");
    }
    return ok;
}

/* MeetRelayedOffer & co. name the field from_ with alias "from"; populate_by_name lets
 * "from_" stand in when "from" is absent. */
static bool f_from(fleet_reader_t *c, const cJSON *root, const char **out)
{
    const char *key = fleet_json_get(root, "from") != NULL || fleet_json_get(root, "from_") == NULL
                          ? "from"
                          : "from_";
    return fleet_read_str(c, root, "", key, F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE, out);
}

fleet_err_t fleet_meet_down_parse(const fleet_json_doc_t *doc, fleet_meet_down_t *out,
                                  fleet_perr_t *err)
{
    fleet_reader_t c = {doc, err};
    const cJSON *root = NULL, *peer = NULL;
    unsigned tag = 0;
    memset(out, 0, sizeof *out);
    if (!fleet_read_root(&c, &root) ||
        !fleet_read_tag(&c, root, fleet_down_tags, N_DOWN_TAGS, &tag)) {
        return FLEET_ERR_SCHEMA;
    }
    out->type = (fleet_down_type_t)tag;
    bool ok = true;
    switch (out->type) {
        case FLEET_DOWN_JOINED: {
            ok = fleet_read_str(&c, root, "", "room", F_REQ, 0, 0, PAT_ROOM, &out->room) &&
                 fleet_read_str(&c, root, "", "session", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->session) &&
                 fleet_read_str(&c, root, "", "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS,
                                PAT_NONE, &out->participant) &&
                 f_peer_list(&c, root, out) && f_media(&c, root, F_OPT, &out->mixed);
            break;
        }
        case FLEET_DOWN_MEDIA:
            ok = f_media(&c, root, F_REQ, &out->mixed) && f_peer_list(&c, root, out);
            break;
        case FLEET_DOWN_PEER_JOINED:
            ok = fleet_read_obj(&c, root, "", "peer", F_REQ, &peer) &&
                 parse_peer_info(&c, peer, "peer.", &out->peer);
            break;
        case FLEET_DOWN_PEER_LEFT:
            ok = fleet_read_str(&c, root, "", "participant", F_REQ, 0, FLEET_SHORT_TEXT_CHARS,
                                PAT_NONE, &out->participant);
            break;
        case FLEET_DOWN_OFFER:
        case FLEET_DOWN_ANSWER:
            ok =
                f_from(&c, root, &out->from) &&
                fleet_read_str(&c, root, "", "sdp", F_REQ, 1, FLEET_SDP_CHARS, PAT_NONE, &out->sdp);
            break;
        case FLEET_DOWN_LEFT:
            ok = fleet_read_str(&c, root, "", "session", F_NULL, 0, FLEET_SHORT_TEXT_CHARS,
                                PAT_NONE, &out->session);
            break;
        case FLEET_DOWN_ERROR:
            ok = fleet_read_str(&c, root, "", "code", F_REQ, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->code) &&
                 fleet_read_str(&c, root, "", "detail", F_OPT, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->detail) &&
                 fleet_read_str(&c, root, "", "from", F_NULL, 0, FLEET_SHORT_TEXT_CHARS, PAT_NONE,
                                &out->from);
            if (ok && out->detail == NULL) {
                out->detail = "";
            }
            break;
        case FLEET_DOWN_MESSAGE:
            ok = f_from(&c, root, &out->from) &&
                 fleet_read_str(&c, root, "", "text", F_NULL, 0, FLEET_SEND_TEXT_CHARS, PAT_NONE,
                                &out->text) &&
                 fleet_read_str(&c, root, "", "data_b64", F_NULL, 0, FLEET_SEND_B64_CHARS, PAT_NONE,
                                &out->data_b64);
            break;
        case FLEET_DOWN_CANDIDATE:
            ok = f_from(&c, root, &out->from) &&
                 fleet_read_candidate(&c, root, &out->candidate, &out->mid);
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
    fleet_reader_t c = {&unused, NULL};
    return it != NULL && parse_peer_info(&c, it, "", out);
}

/* ---- encoders ---------------------------------------------------------------------------- */

size_t fleet_status_encode(const fleet_status_t *m, char *buf, size_t cap)
{
    fleet_jw_t w;
    fleet_jw_init(&w, buf, cap);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "online");
    fleet_jw_bool(&w, m->online);
    fleet_write_opt_str(&w, "fw", m->fw);
    fleet_write_opt_str(&w, "hw", m->hw);
    fleet_write_opt_str(&w, "ip", m->ip);
    if (m->has_caps) {
        fleet_jw_key(&w, "caps");
        fleet_write_caps(&w, &m->caps);
    }
    fleet_jw_key(&w, "groups");
    fleet_jw_arr_begin(&w);
    for (size_t i = 0; i < m->n_groups && i < FLEET_MAX_GROUPS; i++) {
        fleet_jw_str(&w, m->groups[i]);
    }
    fleet_jw_arr_end(&w);
    fleet_write_opt_num(&w, "ts", m->has_ts, m->ts);
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
        fleet_write_opt_str(&w, "session", m->meeting.session);
        fleet_write_opt_str(&w, "participant", m->meeting.participant);
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
    fleet_write_opt_int(&w, "volume", m->has_volume, m->volume);
    fleet_write_opt_str(&w, "error", m->error);
    if (m->dnd) { /* false is the default: left out, so older readers see the same doc */
        fleet_jw_key(&w, "dnd");
        fleet_jw_bool(&w, true);
    }
    fleet_write_opt_num(&w, "ts", m->has_ts, m->ts);
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
        fleet_write_cjson(&w, m->result);
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
    fleet_write_opt_int(&w, "rssi", m->wifi.has_rssi, m->wifi.rssi);
    fleet_write_opt_int(&w, "channel", m->wifi.has_channel, m->wifi.channel);
    fleet_jw_key(&w, "reconnects");
    fleet_jw_int(&w, m->wifi.reconnects);
    fleet_jw_obj_end(&w);
    fleet_jw_key(&w, "sys");
    fleet_jw_obj_begin(&w);
    fleet_write_opt_int(&w, "heap_free", m->sys.has_heap_free, m->sys.heap_free);
    fleet_write_opt_int(&w, "heap_min", m->sys.has_heap_min, m->sys.heap_min);
    fleet_write_opt_num(&w, "uptime_s", m->sys.has_uptime_s, m->sys.uptime_s);
    fleet_write_opt_num(&w, "cpu_load", m->sys.has_cpu_load, m->sys.cpu_load);
    fleet_jw_key(&w, "mqtt_reconnects");
    fleet_jw_int(&w, m->sys.mqtt_reconnects);
    fleet_jw_obj_end(&w);
    if (m->has_meeting) {
        fleet_jw_key(&w, "meeting");
        fleet_jw_obj_begin(&w);
        fleet_jw_key(&w, "room");
        fleet_jw_str(&w, m->meeting.room);
        fleet_write_opt_str(&w, "session", m->meeting.session);
        fleet_write_opt_str(&w, "participant", m->meeting.participant);
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
        fleet_write_opt_num(&w, "loss", a->has_loss, a->loss);
        fleet_write_opt_num(&w, "jitter_ms", a->has_jitter_ms, a->jitter_ms);
        fleet_write_opt_num(&w, "rtt_ms", a->has_rtt_ms, a->rtt_ms);
        fleet_write_opt_num(&w, "level", a->has_level, a->level);
        fleet_write_opt_num(&w, "bitrate_kbps", a->has_bitrate_kbps, a->bitrate_kbps);
        fleet_write_opt_str(&w, "codec", a->codec);
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
    fleet_jw_str(&w, fleet_up_tags[(unsigned)m->type < N_UP_TAGS ? (unsigned)m->type : 1]);
    switch (m->type) {
        case FLEET_UP_JOIN:
            fleet_jw_key(&w, "room");
            fleet_jw_str(&w, m->room);
            if (m->has_caps) {
                fleet_jw_key(&w, "caps");
                fleet_write_caps(&w, &m->caps);
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
            fleet_write_opt_str(&w, "to", m->to);
            fleet_write_opt_str(&w, "text", m->text);
            fleet_write_opt_str(&w, "data_b64", m->data_b64);
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
            fleet_write_candidate(&w, m->candidate, m->mid);
            break;
        case FLEET_UP_LEAVE:
        default:
            break;
    }
    fleet_jw_obj_end(&w);
    return fleet_jw_finish(&w);
}
