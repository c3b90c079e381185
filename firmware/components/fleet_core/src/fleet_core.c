/*
 * fleet_core.c - connection lifecycle, groups, the birth and state documents, telemetry,
 * and the glue that routes each message to its part: desired docs to the reconciler
 * (fleet_reconciler.c), meeting signalling to the participant (fleet_participant.c),
 * commands to fleet_cmd.c.
 */
#include "fleet_core_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fleet_valid.h" /* fleet_copy_str */

const char fleet_core_tag[] = "fleet_core";
static const char *const TAG = fleet_core_tag;

/* ---- small helpers ----------------------------------------------------------------------- */

void fleet_core_logf(fleet_core_t *core, fleet_log_level_t level, const char *tag, const char *fmt,
                     ...)
{
    char line[256];
    va_list ap;
    if (core->port == NULL || core->port->log == NULL) {
        return;
    }
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    core->port->log(core->port->ctx, level, tag, line);
}

void fleet_copy_text(char *dst, size_t cap, const char *src, size_t max_cp)
{
    size_t i = 0, cps = 0;
    if (cap == 0) {
        return;
    }
    while (src[i] != '\0') {
        size_t k = 1;
        while ((((unsigned char)src[i + k]) & 0xC0) == 0x80) { /* continuation bytes */
            k++;
        }
        if (i + k >= cap || cps >= max_cp) {
            break;
        }
        i += k;
        cps++;
    }
    memcpy(dst, src, i);
    dst[i] = '\0';
}

uint64_t fleet_core_now_ms(fleet_core_t *core)
{
    return core->port->now_ms(core->port->ctx);
}

bool fleet_core_unix_now(fleet_core_t *core, double *now)
{
    if (!core->port->clock_is_set(core->port->ctx)) {
        return false;
    }
    *now = core->port->unix_time(core->port->ctx);
    return true;
}

bool fleet_core_publish(fleet_core_t *core, const char *topic, const char *payload, size_t len,
                        int qos, bool retain)
{
    if (!core->connected) {
        return false; /* everything the core sends is re-sent or re-derived on connect */
    }
    bool ok = core->port->publish(core->port->ctx, topic, payload, len, qos, retain);
    if (!ok) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "publish to %s refused by the client", topic);
    }
    return ok;
}

/* ---- init -------------------------------------------------------------------------------- */

static bool build_topics(fleet_core_t *core)
{
    const char *p = core->prefix;
    const char *id = core->id;
    return fleet_topic_device(core->t_status, FLEET_TOPIC_MAX, p, FLEET_TOPIC_STATUS, id) &&
           fleet_topic_device(core->t_state, FLEET_TOPIC_MAX, p, FLEET_TOPIC_STATE, id) &&
           fleet_topic_device(core->t_ack, FLEET_TOPIC_MAX, p, FLEET_TOPIC_ACK, id) &&
           fleet_topic_device(core->t_tele, FLEET_TOPIC_MAX, p, FLEET_TOPIC_TELE, id) &&
           fleet_topic_device(core->t_desired, FLEET_TOPIC_MAX, p, FLEET_TOPIC_DESIRED, id) &&
           fleet_topic_device(core->t_cmd, FLEET_TOPIC_MAX, p, FLEET_TOPIC_CMD, id) &&
           fleet_topic_meet(core->t_meet_up, FLEET_TOPIC_MAX, p, id, true) &&
           fleet_topic_meet(core->t_meet_down, FLEET_TOPIC_MAX, p, id, false) &&
           fleet_topic_device(core->t_ann, FLEET_TOPIC_MAX, p, FLEET_TOPIC_ANNOUNCE, id);
}

bool fleet_core_init(fleet_core_t *core, const fleet_config_t *cfg, const fleet_port_t *port)
{
    memset(core, 0, sizeof *core);
    core->port = port;
    if (!fleet_id_valid(cfg->device_id)) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG,
                        "config: device id '%.80s' does not match [a-z0-9][a-z0-9-]{0,63}",
                        cfg->device_id != NULL ? cfg->device_id : "");
        return false;
    }
    (void)fleet_copy_str(core->id, sizeof core->id, cfg->device_id);
    const char *prefix = cfg->prefix != NULL ? cfg->prefix : FLEET_DEFAULT_PREFIX;
    if (!fleet_prefix_normalize(prefix, core->prefix, sizeof core->prefix)) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG,
                        "config: topic prefix '%.80s' is not plain levels of [A-Za-z0-9_.-]",
                        prefix);
        return false;
    }
    if (cfg->n_groups > FLEET_MAX_GROUPS) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "config: %lu groups, at most %d",
                        (unsigned long)cfg->n_groups, FLEET_MAX_GROUPS);
        return false;
    }
    for (size_t i = 0; i < cfg->n_groups; i++) {
        const char *g = cfg->groups[i];
        if (!fleet_id_valid(g)) {
            fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "config: group '%.80s' is not a valid id",
                            g != NULL ? g : "");
            return false;
        }
        bool dup = strcmp(g, "all") == 0; /* grp/all is always subscribed */
        for (size_t j = 0; j < core->n_groups && !dup; j++) {
            dup = strcmp(core->groups[j], g) == 0;
        }
        if (!dup) {
            (void)fleet_copy_str(core->groups[core->n_groups++], FLEET_ID_MAX + 1, g);
        }
    }
    fleet_copy_text(core->fw, sizeof core->fw, cfg->fw != NULL ? cfg->fw : "unknown", 64);
    fleet_copy_text(core->hw, sizeof core->hw, cfg->hw != NULL ? cfg->hw : "unknown", 64);
    fleet_core_set_ip(core, cfg->ip);
    if (cfg->pending_cmd_id != NULL) {
        size_t cps = fleet_utf8_len(cfg->pending_cmd_id);
        if (cps >= 1 && cps <= FLEET_CMD_ID_CHARS &&
            fleet_utf8_valid(cfg->pending_cmd_id, strlen(cfg->pending_cmd_id))) {
            (void)fleet_copy_str(core->pending_cmd, sizeof core->pending_cmd, cfg->pending_cmd_id);
            core->pending_is_ota = cfg->pending_is_ota;
            fleet_copy_text(core->pending_error, sizeof core->pending_error,
                            cfg->pending_error != NULL ? cfg->pending_error : "",
                            FLEET_DETAIL_BYTES - 1);
        }
    }
    core->caps = cfg->caps;
    if (core->caps.n_codecs > FLEET_MAX_CODECS) {
        core->caps.n_codecs = FLEET_MAX_CODECS;
    }
    core->tele_interval_ms = cfg->tele_interval_ms;
    if (cfg->call_to != NULL && cfg->call_to[0] != '\0') {
        const char *target =
            strncmp(cfg->call_to, "group:", 6) == 0 ? cfg->call_to + 6 : cfg->call_to;
        if (fleet_id_valid(target)) {
            (void)fleet_copy_str(core->call_to, sizeof core->call_to, cfg->call_to);
        } else {
            fleet_core_logf(core, FLEET_LOG_WARN, TAG,
                            "config: call_to '%.80s' is not a device id or group:NAME: ignored",
                            cfg->call_to);
        }
    }
    if (!build_topics(core)) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "config: topics do not fit");
        return false;
    }
    core->meeting.mic = true;
    return true;
}

void fleet_core_set_ip(fleet_core_t *core, const char *ip)
{
    core->has_ip = ip != NULL && ip[0] != '\0';
    fleet_copy_text(core->ip, sizeof core->ip, core->has_ip ? ip : "", 64);
}

const char *fleet_core_status_topic(const fleet_core_t *core)
{
    return core->t_status;
}

/* ---- outgoing documents ------------------------------------------------------------------ */

size_t fleet_core_encode_birth(fleet_core_t *core, char *buf, size_t cap)
{
    fleet_status_t st;
    memset(&st, 0, sizeof st);
    st.online = true;
    st.fw = core->fw;
    st.hw = core->hw;
    st.ip = core->has_ip ? core->ip : NULL;
    st.has_caps = true;
    st.caps = core->caps;
    st.n_groups = core->n_groups;
    for (size_t i = 0; i < core->n_groups; i++) {
        st.groups[i] = core->groups[i];
    }
    st.has_ts = fleet_core_unix_now(core, &st.ts);
    return fleet_status_encode(&st, buf, cap);
}

void fleet_core_publish_birth(fleet_core_t *core)
{
    size_t n = fleet_core_encode_birth(core, core->out, sizeof core->out);
    if (n == 0) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "birth does not fit in %d bytes",
                        FLEET_OUT_MAX);
        return;
    }
    if (fleet_core_publish(core, core->t_status, core->out, n, 1, true)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "birth published on %s (%lu groups)",
                        core->t_status, (unsigned long)core->n_groups);
    }
}

static size_t encode_state(fleet_core_t *core, char *buf, size_t cap, bool with_peers)
{
    fleet_state_t st; /* about 300 bytes on a 32-bit target: fine on the core's task stack */
    memset(&st, 0, sizeof st);
    if (core->phase != FLEET_MEET_JOINING) {
        core->reported_rev = core->applied_rev; /* joined, refused, idle: it holds */
    }
    st.rev = core->reported_rev;
    st.mic = true;
    if (core->has_meeting) {
        st.has_meeting = true;
        st.meeting.room = core->meeting.room;
        st.mic = core->meeting.mic;
        st.has_volume = core->meeting.has_volume;
        st.volume = core->meeting.volume;
        if (core->phase == FLEET_MEET_JOINED) {
            st.meeting.session = core->session;
            st.meeting.participant = core->participant;
            if (with_peers) {
                st.meeting.n_peers = core->n_peers;
                for (size_t i = 0; i < core->n_peers; i++) {
                    st.meeting.peers[i] = core->peers[i];
                }
            }
        }
    }
    st.error = core->error[0] != '\0' ? core->error : NULL;
    st.dnd = core->dnd;
    st.has_ts = fleet_core_unix_now(core, &st.ts);
    return fleet_state_encode(&st, buf, cap);
}

size_t fleet_core_encode_state(fleet_core_t *core, char *buf, size_t cap)
{
    size_t n = encode_state(core, buf, cap, true);
    if (n == 0) {
        /* Only pathological participant ids get here; the state without peers still says
         * what matters (rev, room, session). */
        n = encode_state(core, buf, cap, false);
    }
    return n;
}

void fleet_core_publish_state(fleet_core_t *core)
{
    size_t n = fleet_core_encode_state(core, core->out, sizeof core->out);
    if (n == 0) {
        fleet_core_logf(core, FLEET_LOG_ERROR, TAG, "state does not fit in %d bytes",
                        FLEET_OUT_MAX);
        return;
    }
    if (fleet_core_publish(core, core->t_state, core->out, n, 1, true)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "state published: rev %lld, meeting %s (%s)",
                        (long long)core->reported_rev, core->has_meeting ? core->meeting.room : "-",
                        fleet_meet_phase_name(core->phase));
    }
}

/* ---- groups ------------------------------------------------------------------------------ */

static void subscribe(fleet_core_t *core, const char *topic)
{
    if (!core->connected) {
        return;
    }
    if (!core->port->subscribe(core->port->ctx, topic, 1)) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "subscribe %s refused by the client", topic);
    }
}

static void group_topic_do(fleet_core_t *core, const char *group, bool sub)
{
    char topic[FLEET_TOPIC_MAX];
    if (!fleet_topic_group_desired(topic, sizeof topic, core->prefix, group)) {
        return;
    }
    if (sub) {
        subscribe(core, topic);
    } else if (core->connected) {
        (void)core->port->unsubscribe(core->port->ctx, topic);
    }
}

void fleet_core_replace_groups(fleet_core_t *core, const char (*groups)[FLEET_ID_MAX + 1], size_t n)
{
    char(*old)[FLEET_ID_MAX + 1] = core->old_groups;
    fleet_source_t *old_src = core->old_sources;
    size_t n_old = core->n_groups;
    memcpy(old, core->groups, sizeof core->old_groups);
    memcpy(old_src, &core->sources[FLEET_SRC_GROUP0], sizeof core->old_sources);

    /* Unsubscribe first so no doc of a dropped group can arrive after the switch. */
    for (size_t i = 0; i < n_old; i++) {
        bool kept = false;
        for (size_t j = 0; j < n && !kept; j++) {
            kept = strcmp(old[i], groups[j]) == 0;
        }
        if (!kept) {
            group_topic_do(core, old[i], false);
        }
    }
    core->n_groups = 0;
    memset(&core->sources[FLEET_SRC_GROUP0], 0, sizeof core->old_sources);
    for (size_t j = 0; j < n && j < FLEET_MAX_GROUPS; j++) {
        size_t slot = FLEET_SRC_GROUP0 + core->n_groups;
        memcpy(core->groups[core->n_groups], groups[j], FLEET_ID_MAX + 1);
        core->n_groups++;
        bool was = false;
        for (size_t i = 0; i < n_old && !was; i++) {
            if (strcmp(old[i], groups[j]) == 0) {
                core->sources[slot] = old_src[i]; /* keep what a kept group said */
                was = true;
            }
        }
        if (!was) {
            group_topic_do(core, groups[j], true); /* its retained doc will follow */
        }
    }
    if (core->port->save_groups != NULL) {
        const char *list[FLEET_MAX_GROUPS];
        for (size_t i = 0; i < core->n_groups; i++) {
            list[i] = core->groups[i];
        }
        if (!core->port->save_groups(core->port->ctx, list, core->n_groups)) {
            fleet_core_logf(core, FLEET_LOG_WARN, TAG, "groups could not be saved");
        }
    }
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "groups replaced: %lu now",
                    (unsigned long)core->n_groups);
    fleet_core_publish_birth(core);
}

/* ---- lifecycle --------------------------------------------------------------------------- */

void fleet_core_on_connected(fleet_core_t *core)
{
    core->connected = true;
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "connected as %s", core->id);
    fleet_core_publish_birth(core);
    subscribe(core, core->t_desired);
    subscribe(core, core->t_cmd);
    subscribe(core, core->t_meet_down);
    subscribe(core, core->t_ann);
    group_topic_do(core, "all", true);
    for (size_t i = 0; i < core->n_groups; i++) {
        group_topic_do(core, core->groups[i], true);
    }
    fleet_core_publish_state(core);
    fleet_cmd_confirm_pending(core);
    if (core->has_meeting) {
        fleet_participant_join(core); /* the controller may have dropped us with the LWT */
    }
    core->next_tele_ms = fleet_core_now_ms(core) + core->tele_interval_ms;
}

void fleet_core_on_disconnected(fleet_core_t *core)
{
    if (!core->connected) {
        return;
    }
    core->connected = false;
    fleet_participant_leave(core); /* not connected: the session is only forgotten */
    fleet_core_logf(core, FLEET_LOG_WARN, TAG, "disconnected");
}

void fleet_core_on_message(fleet_core_t *core, const char *topic, size_t topic_len,
                           const char *payload, size_t len)
{
    fleet_topic_t t;
    if (!fleet_topic_parse(core->prefix, topic, topic_len, &t)) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "message on unknown topic %.*s ignored",
                        (int)(topic_len > 200 ? 200 : topic_len), topic);
        return;
    }
    if (len > FLEET_MAX_PAYLOAD) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG,
                        "%s payload of %lu bytes refused: above the %u-byte limit",
                        fleet_topic_kind_name(t.kind), (unsigned long)len, FLEET_MAX_PAYLOAD);
        return;
    }
    if (payload == NULL) {
        len = 0;
        payload = "";
    }
    bool mine = strcmp(t.name, core->id) == 0;
    switch (t.kind) {
        case FLEET_TOPIC_DESIRED:
            if (mine) {
                fleet_reconciler_on_desired(core, FLEET_SRC_OWN, payload, len);
                return;
            }
            break;
        case FLEET_TOPIC_GROUP_DESIRED:
            if (strcmp(t.name, "all") == 0) {
                fleet_reconciler_on_desired(core, FLEET_SRC_ALL, payload, len);
                return;
            }
            for (size_t i = 0; i < core->n_groups; i++) {
                if (strcmp(t.name, core->groups[i]) == 0) {
                    fleet_reconciler_on_desired(core, FLEET_SRC_GROUP0 + i, payload, len);
                    return;
                }
            }
            break;
        case FLEET_TOPIC_CMD:
            if (mine) {
                fleet_cmd_handle(core, payload, len);
                return;
            }
            break;
        case FLEET_TOPIC_MEET_DOWN:
            if (mine) {
                fleet_participant_on_down(core, payload, len);
                return;
            }
            break;
        case FLEET_TOPIC_ANNOUNCE:
            if (mine) {
                fleet_intercom_on_chunk(core, payload, len);
                return;
            }
            break;
        default:
            break;
    }
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "message on %.*s is not for this device",
                    (int)(topic_len > 200 ? 200 : topic_len), topic);
}

static void send_tele(fleet_core_t *core)
{
    fleet_tele_t tele;
    fleet_sys_sample_t s;
    memset(&tele, 0, sizeof tele);
    memset(&s, 0, sizeof s);
    if (!fleet_core_unix_now(core, &tele.ts)) {
        if (!core->tele_waits_for_clock) {
            fleet_core_logf(core, FLEET_LOG_INFO, TAG, "telemetry waits for the clock (ts)");
            core->tele_waits_for_clock = true;
        }
        return;
    }
    core->tele_waits_for_clock = false;
    if (core->port->sample != NULL) {
        core->port->sample(core->port->ctx, &s);
    }
    tele.wifi.has_rssi = s.has_rssi;
    tele.wifi.rssi = s.rssi;
    tele.wifi.has_channel = s.has_channel;
    tele.wifi.channel = s.channel;
    tele.wifi.reconnects = s.wifi_reconnects;
    tele.sys.has_heap_free = s.has_heap;
    tele.sys.heap_free = s.heap_free;
    tele.sys.has_heap_min = s.has_heap;
    tele.sys.heap_min = s.heap_min;
    tele.sys.has_uptime_s = true;
    tele.sys.uptime_s = (double)fleet_core_now_ms(core) / 1000.0;
    tele.sys.has_cpu_load = s.has_cpu_load && s.cpu_load >= 0.0 && s.cpu_load <= 1.0;
    tele.sys.cpu_load = s.cpu_load;
    tele.sys.mqtt_reconnects = s.mqtt_reconnects;
    fleet_peer_audio_t audio[FLEET_TELE_PEERS];
    if (core->has_meeting) {
        tele.has_meeting = true;
        tele.meeting.room = core->meeting.room;
        if (core->phase == FLEET_MEET_JOINED) {
            tele.meeting.session = core->session;
            tele.meeting.participant = core->participant;
            const fleet_media_t *m = core->port->media;
            if (m != NULL && m->stats != NULL) {
                tele.n_audio = m->stats(m->ctx, audio, FLEET_TELE_PEERS);
                tele.audio = audio;
            }
        }
    }
    size_t n = fleet_tele_encode(&tele, core->out, sizeof core->out);
    if (n > 0) {
        (void)fleet_core_publish(core, core->t_tele, core->out, n, 0, false);
    }
}

uint32_t fleet_core_tick(fleet_core_t *core)
{
    uint64_t now = fleet_core_now_ms(core);
    uint64_t wait = 1000; /* meeting.until is checked at least once a second */
    fleet_reconciler_expire(core);
    uint32_t intercom = fleet_intercom_tick(core);
    if (intercom < wait) {
        wait = intercom;
    }
    if (core->connected && core->tele_interval_ms > 0) {
        if (now >= core->next_tele_ms) {
            send_tele(core);
            core->next_tele_ms = now + core->tele_interval_ms;
        }
        uint64_t due = core->next_tele_ms - now;
        if (due < wait) {
            wait = due;
        }
    }
    return (uint32_t)wait;
}

void fleet_core_shutdown(fleet_core_t *core)
{
    if (!core->connected) {
        return;
    }
    if (core->has_meeting && core->phase != FLEET_MEET_IDLE) {
        fleet_participant_leave(core);
    }
    static const char offline[] = FLEET_LWT_PAYLOAD;
    if (fleet_core_publish(core, core->t_status, offline, sizeof offline - 1, 1, true)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "offline published on %s", core->t_status);
    }
}
