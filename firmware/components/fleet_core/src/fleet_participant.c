/*
 * fleet_participant.c - the device as a participant of a meeting (protocol.md 8), the C
 * twin of the Python MeetingParticipant: join and leave as the applied intent says, the
 * session joined names, its peers coming and going, SDP to and from the media layer, and
 * the trickled candidates held until their peer's SDP has reached it.
 */
#include "fleet_core_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const TAG = fleet_core_tag;

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

/* ---- join and leave ---------------------------------------------------------------------- */

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

void fleet_participant_join(fleet_core_t *core)
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

void fleet_participant_leave(fleet_core_t *core)
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

void fleet_participant_set_intent(fleet_core_t *core, const fleet_intent_t *want)
{
    if (core->has_meeting && (want == NULL || strcmp(want->room, core->meeting.room) != 0)) {
        fleet_participant_leave(core);
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
        fleet_participant_join(core);
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

void fleet_participant_on_down(fleet_core_t *core, const char *payload, size_t len)
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

/* ---- from the media layer: SDP, rejections and candidates to a peer -------------------------- */

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
