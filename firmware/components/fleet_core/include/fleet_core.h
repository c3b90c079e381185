/*
 * fleet_core.h - the device's brain, shared by the ESP port and the host port.
 *
 * The port owns the network and the clock; it calls in here on four occasions:
 *   fleet_core_on_connected()     the MQTT session is up (after CONNACK)
 *   fleet_core_on_disconnected()  it went down
 *   fleet_core_on_message()       a PUBLISH arrived on a subscribed topic
 *   fleet_core_tick()             periodically; it returns how long it may sleep
 * and the core answers through the fleet_port_t table: it subscribes, publishes
 * the birth, state, acks, telemetry and meeting signalling, and asks for reboots.
 *
 * What it keeps:
 *  - the latest desired doc per source topic (own, grp/all, each group); an empty
 *    payload clears a source; the highest rev is applied only if it is higher than
 *    the applied rev, so state never goes backwards;
 *  - the meeting signalling phase (idle/joining/joined) and the session it is in;
 *  - the last FLEET_CMD_RING command ids and their final acks, so a redelivered
 *    command gets the same answer and runs nothing;
 *  - the announcement playing (its command, its next chunk), the ring, do-not-disturb
 *    (fleet_intercom.c, protocol.md 14).
 *
 * All storage is inside fleet_core_t (no allocation except cJSON's while a payload
 * is parsed), so one static instance is all a device needs. Not thread-safe: call
 * it from one task.
 */
#ifndef FLEET_CORE_H
#define FLEET_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_msg.h"
#include "fleet_port.h"
#include "fleet_topics.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef FLEET_CMD_RING
#define FLEET_CMD_RING 32 /* remembered command ids (protocol.md 6.2: at least 32) */
#endif
#ifndef FLEET_ACK_ARENA
#define FLEET_ACK_ARENA 8192 /* bytes shared by the remembered ids and their acks */
#endif
#ifndef FLEET_MAX_PEERS
#define FLEET_MAX_PEERS 8 /* remote participants tracked (an ESP mesh holds 2-3) */
#endif
#ifndef FLEET_TELE_PEERS
#define FLEET_TELE_PEERS 4 /* per-peer audio stats in one telemetry sample */
#endif
#ifndef FLEET_EARLY_CANDIDATES
/* bytes of trickled candidates held until their peer's SDP has reached the media layer
 * (a candidate is ~100 bytes; a browser sends a handful before its SDP is applied) */
#define FLEET_EARLY_CANDIDATES 2048
#endif
#define FLEET_PEER_BYTES   129 /* a participant id this long or shorter is tracked */
#define FLEET_TEXT_BYTES   FLEET_UTF8_BYTES(FLEET_SHORT_TEXT_CHARS)
#define FLEET_FIELD_BYTES  65 /* fw, hw, ip */
#define FLEET_DETAIL_BYTES FLEET_ERRMSG_MAX
/* {"groups":[...]}: 32 ids of 64 chars, quoted, with commas */
#define FLEET_RESULT_BYTES (FLEET_MAX_GROUPS * (FLEET_ID_MAX + 3) + 16)
#define FLEET_OUT_MAX      4096 /* largest state/birth/ack/tele payload the core sends */
#define FLEET_SOURCES      (2 + FLEET_MAX_GROUPS)

#define FLEET_IDENTIFY_DEFAULT_S 5
#define FLEET_IDENTIFY_MAX_S     300

#define FLEET_ANN_NO_AUDIO_MS 2000   /* announce: no chunk this long after the command */
#define FLEET_ANN_STALL_MS    3000   /* chunks stopped before the last one, queue empty */
#define FLEET_ANN_MAX_MS      600000 /* announce args.duration_ms */
#define FLEET_RING_MAX_S      120
#define FLEET_CALL_TO_BYTES   (6 + FLEET_ID_MAX + 1) /* "group:" + id, or a device id */

typedef struct {
    const char *device_id; /* [a-z0-9][a-z0-9-]{0,63} */
    const char *prefix;    /* NULL = "fleet/v1" */
    const char *const *groups;
    size_t n_groups;
    const char *fw;
    const char *hw;
    const char *ip;            /* NULL = not reported */
    fleet_caps_t caps;         /* codec strings must outlive the core */
    uint32_t tele_interval_ms; /* 0 = no telemetry */
    /* The id of a reboot command that restarted the device (persisted by the port across
     * the restart), or NULL: its final ack goes out after the first connect. */
    const char *pending_cmd_id;
    /* The pending command was an ota: its final ack carries {"fw": fw}. */
    bool pending_is_ota;
    /* NULL, or why the pending command failed after all (an ota image that did not boot
     * and was rolled back): its final ack is then failed with this detail. */
    const char *pending_error;
    /* Where the call button calls: a device id, "group:NAME", or NULL/"" = nowhere
     * (NVS key call_to). */
    const char *call_to;
} fleet_config_t;

typedef enum {
    FLEET_MEET_IDLE = 0, /* no signalling session (the intent may still name a room) */
    FLEET_MEET_JOINING,  /* join sent, waiting for joined */
    FLEET_MEET_JOINED,   /* a participant of a session */
} fleet_meet_phase_t;

typedef struct {
    bool has_doc;
    fleet_desired_t doc;
} fleet_source_t;

typedef enum {
    FLEET_ANN_IDLE = 0, /* nothing to play */
    FLEET_ANN_WAITING,  /* the command came, its first chunk has not */
    FLEET_ANN_PLAYING,  /* chunks are coming and playing */
    FLEET_ANN_DRAINING, /* the last chunk came: the rest of the queue plays out */
} fleet_ann_phase_t;

/* What a button press means (the port debounces and times it). */
typedef enum {
    FLEET_BUTTON_SHORT = 0, /* answer a ring, hang up a call, or call call_to */
} fleet_button_t;

/* A remembered command: its id and the last ack sent for it live in the arena. */
typedef struct {
    bool used;
    uint32_t hash; /* FNV-1a of the id, to skip most comparisons */
    uint16_t off;
    uint16_t id_len;
    uint16_t ack_len;
} fleet_ack_memo_t;

typedef struct fleet_core {
    const fleet_port_t *port;

    /* configuration (copied) */
    char id[FLEET_ID_MAX + 1];
    char prefix[FLEET_PREFIX_MAX + 1];
    char fw[FLEET_FIELD_BYTES];
    char hw[FLEET_FIELD_BYTES];
    char ip[FLEET_FIELD_BYTES];
    bool has_ip;
    fleet_caps_t caps;
    char groups[FLEET_MAX_GROUPS][FLEET_ID_MAX + 1];
    size_t n_groups;
    uint32_t tele_interval_ms;

    /* topics built once */
    char t_status[FLEET_TOPIC_MAX];
    char t_state[FLEET_TOPIC_MAX];
    char t_ack[FLEET_TOPIC_MAX];
    char t_tele[FLEET_TOPIC_MAX];
    char t_desired[FLEET_TOPIC_MAX];
    char t_cmd[FLEET_TOPIC_MAX];
    char t_meet_up[FLEET_TOPIC_MAX];
    char t_meet_down[FLEET_TOPIC_MAX];
    char t_ann[FLEET_TOPIC_MAX];

    bool connected;

    /* desired state: [0] own, [1] grp/all, [2 + i] groups[i] */
    fleet_source_t sources[FLEET_SOURCES];
    int64_t applied_rev;
    /* What state reports: applied_rev once what it asks holds; while a join is unanswered,
     * the rev before it, so nobody counts the device converged early (protocol.md 5). */
    int64_t reported_rev;
    bool has_meeting; /* the applied intent has a meeting */
    fleet_intent_t meeting;
    char error[FLEET_TEXT_BYTES]; /* reported in state when not empty */
    bool dnd;                     /* do-not-disturb, from the own desired doc only */

    /* meeting signalling */
    fleet_meet_phase_t phase;
    char session[FLEET_TEXT_BYTES];
    char participant[FLEET_TEXT_BYTES];
    char peers[FLEET_MAX_PEERS][FLEET_PEER_BYTES];
    size_t n_peers;
    bool peer_sdp[FLEET_MAX_PEERS]; /* peers[i]'s SDP went to the media layer */
    bool mixed;                     /* the session's media path: one peer, the mixer */
    /* trickled candidates of peers whose SDP has not: "peer\0mid\0candidate\0" records,
     * an empty candidate = end of candidates */
    char early[FLEET_EARLY_CANDIDATES];
    size_t early_len;

    /* commands */
    fleet_ack_memo_t memo[FLEET_CMD_RING];
    size_t memo_next;
    char arena[FLEET_ACK_ARENA];
    size_t arena_pos;
    char pending_cmd[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)]; /* a reboot to confirm, or "" */
    bool pending_is_ota;
    char pending_error[FLEET_DETAIL_BYTES]; /* "" = the pending command succeeded */
    char result[FLEET_RESULT_BYTES];        /* scratch for ack results */
    /* set_groups' scratch (about 5 KB: more than a device task's stack can spare) */
    char new_groups[FLEET_MAX_GROUPS][FLEET_ID_MAX + 1];
    char old_groups[FLEET_MAX_GROUPS][FLEET_ID_MAX + 1];
    fleet_source_t old_sources[FLEET_MAX_GROUPS];

    /* announcements, ring, the call button (fleet_intercom.c) */
    struct {
        fleet_ann_phase_t phase;
        char ann[FLEET_ANN_ID_CHARS + 1];
        char cmd[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)]; /* the announce command to answer */
        bool urgent;
        int64_t next_seq;
        uint64_t since_ms; /* the command (WAITING) or the latest chunk */
        uint32_t dropped;  /* frames the player had no room for */
    } ann;
    bool ringing;
    uint64_t ring_until_ms;
    char ring_call[FLEET_ROOM_MAX + 1];
    char call_to[FLEET_CALL_TO_BYTES];
    uint32_t api_seq;                   /* numbers the button's request ids */
    uint8_t frame[FLEET_ANN_FRAME_MAX]; /* one decoded announcement frame */

    /* telemetry */
    uint64_t next_tele_ms;
    bool tele_waits_for_clock;

    char out[FLEET_OUT_MAX]; /* scratch for outgoing payloads */
} fleet_core_t;

/* False if the config is unusable (bad id, prefix or group); the reason is logged. */
bool fleet_core_init(fleet_core_t *core, const fleet_config_t *cfg, const fleet_port_t *port);

/* The device's address changed (DHCP): the next birth reports it. NULL = none. */
void fleet_core_set_ip(fleet_core_t *core, const char *ip);

/* The port's ota download or install failed (fleet_port_t.ota): the final ack, failed. */
void fleet_core_ota_failed(fleet_core_t *core, const char *cmd_id, const char *detail);

/* For the port's MQTT setup: the LWT goes retained on this topic with FLEET_LWT_PAYLOAD. */
const char *fleet_core_status_topic(const fleet_core_t *core);

void fleet_core_on_connected(fleet_core_t *core);
void fleet_core_on_disconnected(fleet_core_t *core);
void fleet_core_on_message(fleet_core_t *core, const char *topic, size_t topic_len,
                           const char *payload, size_t len);
/* Runs timers (telemetry, meeting.until); returns the milliseconds until it wants to run. */
uint32_t fleet_core_tick(fleet_core_t *core);
/* Orderly stop: leave the meeting, publish {"online":false} retained. Then disconnect. */
void fleet_core_shutdown(fleet_core_t *core);

/* The device's button (the port debounces it): a short press answers a ring, hangs up a
 * call room (call-...) or calls call_to, as an ApiRequest on api/by/{id}/{op}. */
void fleet_core_button(fleet_core_t *core, fleet_button_t event);

/* For the media layer: send SDP to a participant of our session through the controller. */
bool fleet_core_send_sdp(fleet_core_t *core, const char *to, bool is_offer, const char *sdp);
/* For the media layer: trickle one of our ICE candidates to `to` (candidate NULL = the end
 * of them; mid NULL = "0"). */
bool fleet_core_send_candidate(fleet_core_t *core, const char *to, const char *mid,
                               const char *candidate);
/* For the media layer: we cannot answer or accept `to`'s SDP (MeetReject; the server tells
 * `to` with an error from us). code NULL = "negotiation_failed". */
bool fleet_core_send_reject(fleet_core_t *core, const char *to, const char *code,
                            const char *detail);

/* Encoders the core uses, exposed for tests. */
size_t fleet_core_encode_birth(fleet_core_t *core, char *buf, size_t cap);
size_t fleet_core_encode_state(fleet_core_t *core, char *buf, size_t cap);

const char *fleet_meet_phase_name(fleet_meet_phase_t phase);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_CORE_H */
