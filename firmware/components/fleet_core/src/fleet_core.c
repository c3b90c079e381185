/*
 * fleet_core.c - connection lifecycle, the desired-state reconciler, meeting
 * signalling and telemetry. Commands live in fleet_cmd.c.
 */
#include "fleet_core_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *TAG = "fleet_core";

#define SRC_OWN    0
#define SRC_ALL    1
#define SRC_GROUP0 2

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

static bool copy_bounded(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        return false;
    }
    memcpy(dst, src, n + 1);
    return true;
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

const char *fleet_meet_phase_name(fleet_meet_phase_t phase)
{
    switch (phase) {
        case FLEET_MEET_JOINING:
            return "joining";
        case FLEET_MEET_JOINED:
            return "joined";
        case FLEET_MEET_IDLE:
        default:
            return "idle";
    }
}

static const fleet_media_t *media(fleet_core_t *core)
{
    return core->port->media;
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
           fleet_topic_meet(core->t_meet_down, FLEET_TOPIC_MAX, p, id, false);
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
    (void)copy_bounded(core->id, sizeof core->id, cfg->device_id);
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
            (void)copy_bounded(core->groups[core->n_groups++], FLEET_ID_MAX + 1, g);
        }
    }
    fleet_copy_text(core->fw, sizeof core->fw, cfg->fw != NULL ? cfg->fw : "unknown", 64);
    fleet_copy_text(core->hw, sizeof core->hw, cfg->hw != NULL ? cfg->hw : "unknown", 64);
    fleet_core_set_ip(core, cfg->ip);
    if (cfg->pending_cmd_id != NULL) {
        size_t cps = fleet_utf8_len(cfg->pending_cmd_id);
        if (cps >= 1 && cps <= FLEET_CMD_ID_CHARS &&
            fleet_utf8_valid(cfg->pending_cmd_id, strlen(cfg->pending_cmd_id))) {
            (void)copy_bounded(core->pending_cmd, sizeof core->pending_cmd, cfg->pending_cmd_id);
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

/* ---- meeting signalling ------------------------------------------------------------------ */

static void send_meet_up(fleet_core_t *core, const fleet_meet_up_t *msg)
{
    size_t n = fleet_meet_up_encode(msg, core->out, sizeof core->out);
    if (n > 0) {
        (void)fleet_core_publish(core, core->t_meet_up, core->out, n, 1, false);
    }
}

static void forget_session(fleet_core_t *core)
{
    if (core->phase == FLEET_MEET_JOINED && media(core) != NULL && media(core)->stop != NULL) {
        media(core)->stop(media(core)->ctx);
    }
    core->session[0] = '\0';
    core->participant[0] = '\0';
    core->n_peers = 0;
    core->early_len = 0;
}

static void send_join(fleet_core_t *core)
{
    fleet_meet_up_t msg;
    memset(&msg, 0, sizeof msg);
    msg.type = FLEET_UP_JOIN;
    msg.room = core->meeting.room;
    msg.has_caps = true;
    msg.caps = core->caps;
    forget_session(core);
    core->phase = FLEET_MEET_JOINING;
    if (core->connected) {
        send_meet_up(core, &msg);
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: join room %s sent",
                        core->meeting.room);
    }
}

static void send_leave(fleet_core_t *core)
{
    fleet_meet_up_t msg;
    memset(&msg, 0, sizeof msg);
    msg.type = FLEET_UP_LEAVE;
    forget_session(core);
    core->phase = FLEET_MEET_IDLE;
    if (core->connected) {
        send_meet_up(core, &msg);
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: leave room %s sent",
                        core->meeting.room);
    }
}

/* Moves from the current meeting intent to `want` (NULL = no meeting). */
static void set_meeting(fleet_core_t *core, const fleet_intent_t *want)
{
    if (core->has_meeting && (want == NULL || strcmp(want->room, core->meeting.room) != 0)) {
        send_leave(core);
        core->has_meeting = false;
    }
    if (want == NULL) {
        core->meeting.mic = true;
        return;
    }
    bool same_room = core->has_meeting;
    bool mic_changed = same_room && core->meeting.mic != want->mic;
    bool volume_changed = same_room && want->has_volume &&
                          (!core->meeting.has_volume || core->meeting.volume != want->volume);
    core->meeting = *want;
    core->has_meeting = true;
    if (!same_room) {
        send_join(core);
        return;
    }
    const fleet_media_t *m = media(core);
    if (core->phase == FLEET_MEET_JOINED && m != NULL) {
        if (mic_changed && m->set_mic != NULL) {
            m->set_mic(m->ctx, want->mic);
        }
        if (volume_changed && m->set_volume != NULL) {
            m->set_volume(m->ctx, want->volume);
        }
    }
}

static bool intent_lapsed(fleet_core_t *core, const fleet_intent_t *intent)
{
    double now;
    return intent->has_until && fleet_core_unix_now(core, &now) && intent->until <= now;
}

/* ---- desired state ----------------------------------------------------------------------- */

static const char *source_name(fleet_core_t *core, size_t slot)
{
    if (slot == SRC_OWN) {
        return core->id;
    }
    if (slot == SRC_ALL) {
        return "grp/all";
    }
    return core->groups[slot - SRC_GROUP0];
}

static void reconcile(fleet_core_t *core)
{
    /* On an equal rev (a correct controller never writes one) the device doc wins, then a
     * named group, then grp/all (protocol.md 4.2): visit them in that order and keep the
     * first of the highest. */
    size_t best = FLEET_SOURCES;
    for (size_t k = 0; k < FLEET_SOURCES; k++) {
        size_t i = k == 0 ? SRC_OWN : k == FLEET_SOURCES - 1 ? SRC_ALL : k + 1;
        if (core->sources[i].has_doc &&
            (best == FLEET_SOURCES || core->sources[i].doc.rev > core->sources[best].doc.rev)) {
            best = i;
        }
    }
    if (best == FLEET_SOURCES || core->sources[best].doc.rev <= core->applied_rev) {
        return; /* never backwards, and an equal rev is the one already applied */
    }
    const fleet_desired_t *d = &core->sources[best].doc;
    const fleet_intent_t *want = d->has_meeting ? &d->meeting : NULL;
    if (want != NULL && intent_lapsed(core, want)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired rev %lld: meeting %s lapsed already",
                        (long long)d->rev, want->room);
        want = NULL;
    }
    core->applied_rev = d->rev;
    core->error[0] = '\0';
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired rev %lld from %s applied: meeting %s",
                    (long long)d->rev, source_name(core, best), want != NULL ? want->room : "none");
    set_meeting(core, want);
    fleet_core_publish_state(core);
}

static void on_desired(fleet_core_t *core, size_t slot, const char *payload, size_t len)
{
    fleet_source_t *src = &core->sources[slot];
    if (len == 0) {
        /* A retained doc was deleted: the source has no opinion any more. What was applied
         * stays applied (a newer rev elsewhere is the way to change it). */
        src->has_doc = false;
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "desired from %s cleared",
                        source_name(core, slot));
        return;
    }
    fleet_perr_t err;
    fleet_desired_t doc;
    fleet_err_t rc = fleet_desired_decode(payload, len, &doc, &err);
    if (rc != FLEET_OK) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "desired from %s refused: %s",
                        source_name(core, slot), err.msg);
        return;
    }
    src->doc = doc;
    src->has_doc = true;
    if (doc.rev <= core->applied_rev) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG,
                        "desired rev %lld from %s kept, not applied (applied rev %lld)",
                        (long long)doc.rev, source_name(core, slot), (long long)core->applied_rev);
        return;
    }
    reconcile(core);
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
    memcpy(old_src, &core->sources[SRC_GROUP0], sizeof core->old_sources);

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
    memset(&core->sources[SRC_GROUP0], 0, sizeof core->old_sources);
    for (size_t j = 0; j < n && j < FLEET_MAX_GROUPS; j++) {
        size_t slot = SRC_GROUP0 + core->n_groups;
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

/* ---- meeting down ------------------------------------------------------------------------ */

static int peer_index(const fleet_core_t *core, const char *participant)
{
    for (size_t i = 0; i < core->n_peers; i++) {
        if (strcmp(core->peers[i], participant) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Trickled candidates that came before their peer's SDP reached the media layer wait in
 * core->early as "peer\0mid\0candidate\0" records; an empty candidate is the end of them
 * (a real one has at least one character). */

static size_t early_record_len(const char *r)
{
    size_t a = strlen(r) + 1;
    size_t b = strlen(r + a) + 1;
    return a + b + strlen(r + a + b) + 1;
}

static bool early_hold(fleet_core_t *core, const char *peer, const char *mid, const char *cand)
{
    size_t lp = strlen(peer) + 1, lm = strlen(mid) + 1, lc = strlen(cand) + 1;
    if (core->early_len + lp + lm + lc > sizeof core->early) {
        return false;
    }
    char *at = core->early + core->early_len;
    memcpy(at, peer, lp);
    memcpy(at + lp, mid, lm);
    memcpy(at + lp + lm, cand, lc);
    core->early_len += lp + lm + lc;
    return true;
}

/* Hands `peer`'s held candidates to the media layer in order (deliver) or drops them, and
 * keeps everyone else's. */
static void early_take(fleet_core_t *core, const char *peer, bool deliver)
{
    const fleet_media_t *m = media(core);
    size_t keep = 0;
    for (size_t at = 0; at < core->early_len;) {
        char *r = core->early + at;
        size_t n = early_record_len(r);
        if (strcmp(r, peer) != 0) {
            memmove(core->early + keep, r, n);
            keep += n;
        } else if (deliver && m != NULL && m->remote_candidate != NULL) {
            const char *mid = r + strlen(r) + 1;
            const char *cand = mid + strlen(mid) + 1;
            (void)m->remote_candidate(m->ctx, peer, mid, cand[0] != '\0' ? cand : NULL);
        }
        at += n;
    }
    core->early_len = keep;
}

static void on_candidate(fleet_core_t *core, const fleet_meet_down_t *msg)
{
    const fleet_media_t *m = media(core);
    int i = peer_index(core, msg->from);
    if (core->phase != FLEET_MEET_JOINED || i < 0 || m == NULL || m->remote_candidate == NULL) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: candidate from %.64s ignored (%s)",
                        msg->from,
                        core->phase != FLEET_MEET_JOINED ? "not in a session"
                        : i < 0                          ? "not a peer"
                                                         : "no trickle ICE in this build");
    } else if (core->peer_sdp[i]) {
        (void)m->remote_candidate(m->ctx, msg->from, msg->mid, msg->candidate);
    } else if (!early_hold(core, msg->from, msg->mid,
                           msg->candidate != NULL ? msg->candidate : "")) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG,
                        "meeting: candidate from %.64s dropped (it came before the SDP and "
                        "%u bytes of such are held already)",
                        msg->from, (unsigned)sizeof core->early);
    }
}

static bool peer_add(fleet_core_t *core, const char *participant)
{
    for (size_t i = 0; i < core->n_peers; i++) {
        if (strcmp(core->peers[i], participant) == 0) {
            return false;
        }
    }
    if (core->n_peers >= FLEET_MAX_PEERS || strlen(participant) >= FLEET_PEER_BYTES) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG,
                        "meeting: peer '%.40s' not tracked (room too "
                        "big or id too long for this device)",
                        participant);
        return false;
    }
    memcpy(core->peers[core->n_peers], participant, strlen(participant) + 1);
    core->peer_sdp[core->n_peers] = false;
    core->n_peers++;
    return true;
}

static bool peer_remove(fleet_core_t *core, const char *participant)
{
    for (size_t i = 0; i < core->n_peers; i++) {
        if (strcmp(core->peers[i], participant) == 0) {
            memmove(core->peers[i], core->peers[i + 1], (core->n_peers - i - 1) * FLEET_PEER_BYTES);
            memmove(&core->peer_sdp[i], &core->peer_sdp[i + 1],
                    (core->n_peers - i - 1) * sizeof core->peer_sdp[0]);
            core->n_peers--;
            early_take(core, participant, false);
            return true;
        }
    }
    return false;
}

static void on_joined(fleet_core_t *core, const fleet_meet_down_t *msg)
{
    if (core->phase != FLEET_MEET_JOINING || !core->has_meeting ||
        strcmp(msg->room, core->meeting.room) != 0) {
        /* An answer to a join we have since taken back (a leave or another join is already on
         * its way behind it): answering with a leave here could leave the newer session. */
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: stale joined for room %s ignored",
                        msg->room);
        return;
    }
    fleet_copy_text(core->session, sizeof core->session, msg->session, FLEET_SHORT_TEXT_CHARS);
    fleet_copy_text(core->participant, sizeof core->participant, msg->participant,
                    FLEET_SHORT_TEXT_CHARS);
    core->n_peers = 0;
    core->early_len = 0;
    core->mixed = msg->mixed;
    core->phase = FLEET_MEET_JOINED;
    const fleet_media_t *m = media(core);
    if (m != NULL && m->start != NULL &&
        !m->start(m->ctx, core->meeting.room, core->session, core->participant, core->meeting.mic,
                  core->meeting.has_volume ? core->meeting.volume : -1)) {
        fleet_copy_text(core->error, sizeof core->error, "audio could not start",
                        FLEET_SHORT_TEXT_CHARS);
    }
    for (size_t i = 0; i < msg->n_peers; i++) {
        fleet_peer_info_t p;
        if (fleet_meet_peer_at(msg, i, &p) && peer_add(core, p.participant) && m != NULL &&
            m->add_peer != NULL) {
            m->add_peer(m->ctx, p.participant, true); /* the newcomer offers to those present */
        }
    }
    fleet_core_logf(core, FLEET_LOG_INFO, TAG,
                    "meeting: joined room %s session %.64s as %.64s, "
                    "%lu peers (%s)",
                    core->meeting.room, core->session, core->participant,
                    (unsigned long)msg->n_peers, msg->mixed ? "mixed" : "mesh");
    fleet_core_publish_state(core);
}

/* MeetMedia: the path changed; close every connection, stay in the session, offer to each
 * entry of peers as after joined. */
static void on_media_changed(fleet_core_t *core, const fleet_meet_down_t *msg)
{
    const fleet_media_t *m = media(core);
    for (size_t i = 0; i < core->n_peers; i++) {
        if (m != NULL && m->remove_peer != NULL) {
            m->remove_peer(m->ctx, core->peers[i]);
        }
    }
    core->n_peers = 0;
    core->early_len = 0;
    core->mixed = msg->mixed;
    for (size_t i = 0; i < msg->n_peers; i++) {
        fleet_peer_info_t p;
        if (fleet_meet_peer_at(msg, i, &p) && peer_add(core, p.participant) && m != NULL &&
            m->add_peer != NULL) {
            m->add_peer(m->ctx, p.participant, true);
        }
    }
    fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: media now %s, %lu peers",
                    msg->mixed ? "mixed" : "mesh", (unsigned long)msg->n_peers);
    fleet_core_publish_state(core);
}

static void on_meet_down(fleet_core_t *core, const char *payload, size_t len)
{
    fleet_json_doc_t doc;
    fleet_perr_t err;
    fleet_meet_down_t msg;
    fleet_err_t rc = fleet_json_parse(&doc, payload, len, &err);
    if (rc == FLEET_OK) {
        rc = fleet_meet_down_parse(&doc, &msg, &err);
    }
    if (rc != FLEET_OK) {
        fleet_core_logf(core, FLEET_LOG_WARN, TAG, "meet down refused: %s", err.msg);
        fleet_json_free(&doc);
        return;
    }
    const fleet_media_t *m = media(core);
    bool joined = core->phase == FLEET_MEET_JOINED;
    switch (msg.type) {
        case FLEET_DOWN_JOINED:
            on_joined(core, &msg);
            break;
        case FLEET_DOWN_PEER_JOINED:
            if (joined && peer_add(core, msg.peer.participant)) {
                if (m != NULL && m->add_peer != NULL) {
                    m->add_peer(m->ctx, msg.peer.participant, false);
                }
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: peer %.64s (%s) joined",
                                msg.peer.participant, msg.peer.pid);
                fleet_core_publish_state(core);
            }
            break;
        case FLEET_DOWN_PEER_LEFT:
            if (joined && peer_remove(core, msg.participant)) {
                if (m != NULL && m->remove_peer != NULL) {
                    m->remove_peer(m->ctx, msg.participant);
                }
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: peer %.64s left",
                                msg.participant);
                fleet_core_publish_state(core);
            }
            break;
        case FLEET_DOWN_OFFER:
        case FLEET_DOWN_ANSWER:
            if (joined && m != NULL && m->remote_sdp != NULL) {
                bool taken = m->remote_sdp(m->ctx, msg.from, msg.type == FLEET_DOWN_OFFER, msg.sdp);
                int i = peer_index(core, msg.from);
                if (i >= 0) {
                    /* Candidates from now on belong to this SDP; those that overtook it are
                     * applied now, or dropped with an SDP that was refused. */
                    core->peer_sdp[i] = taken;
                    early_take(core, msg.from, taken);
                }
            } else {
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: %s from %.64s ignored (%s)",
                                msg.type == FLEET_DOWN_OFFER ? "offer" : "answer", msg.from,
                                m == NULL ? "no audio in this build" : "not in a session");
            }
            break;
        case FLEET_DOWN_LEFT:
            if (joined && (msg.session == NULL || strcmp(msg.session, core->session) == 0)) {
                forget_session(core);
                core->phase = FLEET_MEET_IDLE;
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: left the session");
                fleet_core_publish_state(core);
            } else {
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: stale left ignored");
            }
            break;
        case FLEET_DOWN_MEDIA:
            if (joined) {
                on_media_changed(core, &msg);
            } else {
                fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: media change ignored (%s)",
                                "not in a session");
            }
            break;
        case FLEET_DOWN_ERROR: {
            char text[FLEET_TEXT_BYTES];
            if (msg.from != NULL) {
                /* About one peer (it rejected our SDP, or the mixer failed): the session
                 * stays; the peer's connection is what failed. */
                (void)snprintf(text, sizeof text, "meeting %s from %.64s: %s", msg.code, msg.from,
                               msg.detail);
                if (joined && m != NULL && m->remove_peer != NULL) {
                    m->remove_peer(m->ctx, msg.from);
                }
            } else {
                (void)snprintf(text, sizeof text, "meeting %s: %s", msg.code, msg.detail);
            }
            fleet_copy_text(core->error, sizeof core->error, text, FLEET_SHORT_TEXT_CHARS);
            if (core->phase == FLEET_MEET_JOINING) {
                core->phase = FLEET_MEET_IDLE; /* the join was refused */
            }
            fleet_core_logf(core, FLEET_LOG_WARN, TAG, "meeting: error %.64s: %.120s", msg.code,
                            msg.detail);
            fleet_core_publish_state(core);
            break;
        }
        case FLEET_DOWN_CANDIDATE:
            on_candidate(core, &msg);
            break;
        case FLEET_DOWN_MESSAGE:
            fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting: message from %.64s (%lu chars)",
                            msg.from,
                            (unsigned long)(msg.text != NULL ? fleet_utf8_len(msg.text) : 0));
            break;
    }
    fleet_json_free(&doc);
}

bool fleet_core_send_reject(fleet_core_t *core, const char *to, const char *code,
                            const char *detail)
{
    if (core->phase != FLEET_MEET_JOINED) {
        return false;
    }
    char shortened[FLEET_TEXT_BYTES];
    fleet_copy_text(shortened, sizeof shortened, detail != NULL ? detail : "",
                    FLEET_SHORT_TEXT_CHARS);
    fleet_meet_up_t msg;
    memset(&msg, 0, sizeof msg);
    msg.type = FLEET_UP_REJECT;
    msg.to = to;
    msg.code = code != NULL ? code : "negotiation_failed";
    msg.detail = shortened;
    size_t n = fleet_meet_up_encode(&msg, core->out, sizeof core->out);
    fleet_core_logf(core, FLEET_LOG_WARN, TAG, "meeting: SDP of %.64s rejected: %.120s", to,
                    shortened);
    return n > 0 && fleet_core_publish(core, core->t_meet_up, core->out, n, 1, false);
}

bool fleet_core_send_candidate(fleet_core_t *core, const char *to, const char *mid,
                               const char *candidate)
{
    if (core->phase != FLEET_MEET_JOINED) {
        return false;
    }
    fleet_meet_up_t msg;
    memset(&msg, 0, sizeof msg);
    msg.type = FLEET_UP_CANDIDATE;
    msg.to = to;
    msg.mid = mid;
    msg.candidate = candidate;
    size_t n = fleet_meet_up_encode(&msg, core->out, sizeof core->out);
    return n > 0 && fleet_core_publish(core, core->t_meet_up, core->out, n, 1, false);
}

bool fleet_core_send_sdp(fleet_core_t *core, const char *to, bool is_offer, const char *sdp)
{
    if (core->phase != FLEET_MEET_JOINED) {
        return false;
    }
    fleet_meet_up_t msg;
    memset(&msg, 0, sizeof msg);
    msg.type = is_offer ? FLEET_UP_OFFER : FLEET_UP_ANSWER;
    msg.to = to;
    msg.sdp = sdp;
    /* SDP is up to 32 KiB and escapes grow it (CRLF -> 4 bytes): this one message gets its
     * own buffer. Once per peer connection, so not a hot path. */
    size_t cap = strlen(sdp) * 6 + strlen(to) * 6 + 64;
    char *buf = malloc(cap);
    if (buf == NULL) {
        return false;
    }
    size_t n = fleet_meet_up_encode(&msg, buf, cap);
    bool ok = n > 0 && fleet_core_publish(core, core->t_meet_up, buf, n, 1, false);
    free(buf);
    return ok;
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
    group_topic_do(core, "all", true);
    for (size_t i = 0; i < core->n_groups; i++) {
        group_topic_do(core, core->groups[i], true);
    }
    fleet_core_publish_state(core);
    fleet_cmd_confirm_pending(core);
    if (core->has_meeting) {
        send_join(core); /* the controller may have dropped us with the LWT */
    }
    core->next_tele_ms = fleet_core_now_ms(core) + core->tele_interval_ms;
}

void fleet_core_on_disconnected(fleet_core_t *core)
{
    if (!core->connected) {
        return;
    }
    core->connected = false;
    forget_session(core);
    core->phase = FLEET_MEET_IDLE;
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
                on_desired(core, SRC_OWN, payload, len);
                return;
            }
            break;
        case FLEET_TOPIC_GROUP_DESIRED:
            if (strcmp(t.name, "all") == 0) {
                on_desired(core, SRC_ALL, payload, len);
                return;
            }
            for (size_t i = 0; i < core->n_groups; i++) {
                if (strcmp(t.name, core->groups[i]) == 0) {
                    on_desired(core, SRC_GROUP0 + i, payload, len);
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
                on_meet_down(core, payload, len);
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
            const fleet_media_t *m = media(core);
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
    if (core->has_meeting && intent_lapsed(core, &core->meeting)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "meeting %s lapsed (until passed)",
                        core->meeting.room);
        set_meeting(core, NULL);
        fleet_core_publish_state(core);
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
        send_leave(core);
    }
    static const char offline[] = FLEET_LWT_PAYLOAD;
    if (fleet_core_publish(core, core->t_status, offline, sizeof offline - 1, 1, true)) {
        fleet_core_logf(core, FLEET_LOG_INFO, TAG, "offline published on %s", core->t_status);
    }
}
