/*
 * fleet_msg.h - every payload the device sends or receives, as fleet/protocol/messages.py
 * defines them, and the device's side of their codec: it parses what it receives (desired,
 * commands, meeting signalling down) and encodes what it sends (birth, state, acks,
 * telemetry, meeting signalling up). The other direction of each message, which only the
 * host tests and fuzzers need, is in controller/fleet_msg_controller.h.
 *
 * Parsing rules (pydantic strict mode, extra="ignore"):
 *  - a JSON object is required; unknown members are ignored;
 *  - wrong JSON types are refused ("5" is not an int, 5.0 is not an int, true is
 *    not a number); a float field takes an int;
 *  - an absent optional field is null; null is accepted only where the model
 *    says `| None`, an absent field with a default takes the default;
 *  - string lengths count code points, as Python does;
 *  - payloads above FLEET_MAX_PAYLOAD are refused before parsing.
 * Known, deliberate differences (all refusals of odd input, see firmware/README.md):
 * NaN/Infinity literals and numbers that overflow a double (1e400), \u0000 escapes,
 * integers beyond +-2^53, nesting deeper than FLEET_JSON_MAX_DEPTH and more than
 * FLEET_JSON_MAX_VALUES values.
 *
 * Parsed strings are views (const char *) into the cJSON tree of the
 * fleet_json_doc_t they came from: valid until fleet_json_free(). Desired and
 * Command, which the core keeps, copy what they hold into fixed arrays.
 *
 * Encoders write compact JSON with nulls left out (messages.encode does the
 * same) into a caller buffer and return its length, 0 if it did not fit.
 */
#ifndef FLEET_MSG_H
#define FLEET_MSG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fleet_json.h"
#include "fleet_topics.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FLEET_PROTOCOL_VERSION 1
#define FLEET_ROOM_MAX         64  /* chars, ASCII by pattern */
#define FLEET_SHORT_TEXT_CHARS 256 /* ShortText max_length (code points) */
#define FLEET_CMD_ID_CHARS     64  /* CommandId */
#define FLEET_OP_CHARS         32  /* Command.op */
#define FLEET_MAX_GROUPS       32  /* Status.groups max_length */
#define FLEET_MAX_CODECS       8   /* Capabilities.codecs max_length */
#define FLEET_CODEC_CHARS      16
#define FLEET_STATE_MAX_PEERS  64                 /* MeetingState.peers max_length */
#define FLEET_JOINED_MAX_PEERS 64                 /* MeetJoined.peers max_length */
#define FLEET_MAX_REV          9007199254740991LL /* messages.MAX_REV = 2^53 - 1 */
#define FLEET_TELE_MAX_AUDIO   64                 /* Telemetry.audio max_length */
#define FLEET_SDP_CHARS        (32 * 1024)
#define FLEET_CANDIDATE_CHARS  1024 /* IceCandidate max_length */
#define FLEET_MID_CHARS        32   /* MediaId max_length */
#define FLEET_SEND_TEXT_CHARS  4096
#define FLEET_SEND_B64_CHARS   8192
/* Bytes needed to hold n code points of UTF-8 plus a terminator. */
#define FLEET_UTF8_BYTES(n) ((n)*4 + 1)

#define FLEET_LWT_PAYLOAD "{\"online\":false}"

/* ---- presence ---------------------------------------------------------------------------- */

typedef struct {
    bool audio;
    bool mic;
    bool speaker;
    size_t n_codecs;
    const char *codecs[FLEET_MAX_CODECS];
} fleet_caps_t;

typedef struct {
    bool online;
    const char *fw; /* NULL = absent */
    const char *hw;
    const char *ip;
    bool has_caps;
    fleet_caps_t caps;
    size_t n_groups;
    const char *groups[FLEET_MAX_GROUPS];
    bool has_ts;
    double ts;
} fleet_status_t;

/* ---- desired and reported state ---------------------------------------------------------- */

typedef struct {
    char room[FLEET_ROOM_MAX + 1];
    bool mic; /* default true */
    bool has_volume;
    int volume; /* 0..100 */
    bool has_until;
    double until; /* Unix time after which the intent lapses */
} fleet_intent_t;

typedef struct {
    int64_t rev; /* >= 0 */
    bool has_meeting;
    fleet_intent_t meeting;
    bool has_dnd; /* dnd: bool | None (None = leave as is); only a device's own doc */
    bool dnd;
    bool has_ts;
    double ts;
} fleet_desired_t;

typedef struct {
    int64_t rev;
    bool has_meeting;
    struct {
        const char *room;
        const char *session;     /* NULL = null */
        const char *participant; /* NULL = null */
        size_t n_peers;
        const char *peers[FLEET_STATE_MAX_PEERS];
    } meeting;
    bool mic; /* default true */
    bool has_volume;
    int volume;
    const char *error; /* NULL = none */
    bool dnd;          /* default false, left out when false */
    bool has_ts;
    double ts;
} fleet_state_t;

/* ---- commands ---------------------------------------------------------------------------- */

typedef enum {
    FLEET_ACK_OK = 0,
    FLEET_ACK_ACCEPTED,
    FLEET_ACK_UNKNOWN_OP,
    FLEET_ACK_BAD_ARGS,
    FLEET_ACK_EXPIRED,
    FLEET_ACK_FAILED,
    FLEET_ACK_BAD_REQUEST,
} fleet_ack_code_t;

typedef struct {
    char id[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)];
    char op[FLEET_UTF8_BYTES(FLEET_OP_CHARS)];
    const cJSON *args; /* the args object (view); NULL when absent (= {}) */
    int64_t ttl_ms;    /* > 0, default 30000 */
    bool has_ts;
    double ts;
} fleet_cmd_t;

typedef struct {
    const char *id;
    bool ok;
    fleet_ack_code_t code;
    const char *detail;      /* never NULL after parse ("" default) */
    bool done;               /* default true */
    const cJSON *result;     /* parse: object view or NULL */
    const char *result_json; /* encode: an encoded JSON object, or NULL */
} fleet_ack_t;

/* ---- telemetry --------------------------------------------------------------------------- */

typedef struct {
    const char *peer;
    int64_t packets_sent;
    int64_t packets_received;
    int64_t packets_lost;
    bool has_loss;
    double loss;
    bool has_jitter_ms;
    double jitter_ms;
    bool has_rtt_ms;
    double rtt_ms;
    bool has_level;
    double level;
    bool has_bitrate_kbps;
    double bitrate_kbps;
    const char *codec;
} fleet_peer_audio_t;

typedef struct {
    double ts;
    struct {
        bool has_rssi;
        int64_t rssi;
        bool has_channel;
        int64_t channel;
        int64_t reconnects;
    } wifi;
    struct {
        bool has_heap_free;
        int64_t heap_free;
        bool has_heap_min;
        int64_t heap_min;
        bool has_uptime_s;
        double uptime_s;
        bool has_cpu_load;
        double cpu_load;
        int64_t mqtt_reconnects;
    } sys;
    bool has_meeting;
    struct {
        const char *room;
        const char *session;
        const char *participant;
    } meeting;
    /* Encode: n_audio items in audio[] to write. Parse: every item is validated; the first
     * audio_cap are stored in audio[] and n_audio says how many were stored (with audio NULL,
     * n_audio counts the items and none is stored). */
    size_t n_audio;
    fleet_peer_audio_t *audio;
    size_t audio_cap;
} fleet_tele_t;

/* ---- meeting signalling ------------------------------------------------------------------ */

typedef struct {
    const char *participant;
    const char *pid; /* a device id */
    bool has_caps;
    fleet_caps_t caps;
} fleet_peer_info_t;

typedef enum {
    FLEET_UP_JOIN = 0,
    FLEET_UP_LEAVE,
    FLEET_UP_OFFER,
    FLEET_UP_ANSWER,
    FLEET_UP_MESSAGE,
    FLEET_UP_REJECT,    /* MeetReject: we cannot answer or accept `to`'s SDP */
    FLEET_UP_CANDIDATE, /* MeetCandidate: trickle ICE (protocol.md 8.6) */
} fleet_up_type_t;

typedef struct {
    fleet_up_type_t type;
    const char *room; /* join */
    bool has_caps;    /* join */
    fleet_caps_t caps;
    const char *to;        /* offer, answer, reject, candidate (required), message (optional) */
    const char *sdp;       /* offer, answer */
    const char *text;      /* message */
    const char *data_b64;  /* message */
    const char *code;      /* reject ("negotiation_failed" default) */
    const char *detail;    /* reject ("" default) */
    const char *candidate; /* candidate: an a=candidate value, NULL = end of candidates */
    const char *mid;       /* candidate ("0" default) */
} fleet_meet_up_t;

typedef enum {
    FLEET_DOWN_JOINED = 0,
    FLEET_DOWN_PEER_JOINED,
    FLEET_DOWN_PEER_LEFT,
    FLEET_DOWN_OFFER,
    FLEET_DOWN_ANSWER,
    FLEET_DOWN_LEFT,
    FLEET_DOWN_ERROR,
    FLEET_DOWN_MESSAGE,
    FLEET_DOWN_MEDIA,     /* MeetMedia: the session's media path changed */
    FLEET_DOWN_CANDIDATE, /* MeetRelayedCandidate: trickle ICE from `from` */
} fleet_down_type_t;

typedef struct {
    fleet_down_type_t type;
    const char *room;        /* joined */
    const char *session;     /* joined (required), left (optional) */
    const char *participant; /* joined, peer_left */
    const cJSON *peers;      /* joined, media: validated array of PeerInfo (view), NULL = [] */
    size_t n_peers;
    bool mixed;              /* joined (default mesh), media: the session's media path */
    fleet_peer_info_t peer; /* peer_joined */
    const char *from;       /* offer, answer, message, candidate; error (NULL = the server) */
    const char *sdp;        /* offer, answer */
    const char *candidate;  /* candidate: NULL = end of candidates */
    const char *mid;        /* candidate ("0" default) */
    const char *code;       /* error */
    const char *detail;     /* error ("" default) */
    const char *text;       /* message */
    const char *data_b64;   /* message */
} fleet_meet_down_t;

/* ---- announcements and the device's own API requests (protocol.md 14) ---------------------- */

#define FLEET_ANN_ID_CHARS   64   /* [A-Za-z0-9_-]{1,64} */
#define FLEET_ANN_MAX_FRAMES 50   /* AnnounceChunk.frames max_length */
#define FLEET_ANN_FRAME_MAX  1275 /* bytes: the largest Opus frame (RFC 6716 3.4) */
#define FLEET_ANN_PCMU_FRAME 160  /* bytes: 20 ms at 8 kHz */

typedef enum {
    FLEET_ANN_OPUS = 0, /* 48 kHz mono, 20 ms frames */
    FLEET_ANN_PCMU,     /* 8 kHz, 160-byte 20 ms frames */
} fleet_ann_codec_t;

typedef struct {
    const char *ann; /* the announcement's id */
    int64_t seq;     /* >= 0 */
    fleet_ann_codec_t codec;
    const cJSON *frames; /* validated array of base64 strings (view) */
    size_t n_frames;     /* 1..FLEET_ANN_MAX_FRAMES */
    bool last;           /* default false */
    bool urgent;         /* priority: "normal" (default) | "urgent" */
} fleet_ann_chunk_t;

/* An ApiRequest the device itself sends on api/by/{id}/{op} (its button: call, answer,
 * hangup). NULL members are left out. */
typedef struct {
    const char *id;
    const char *device;
    const char *to;
    const char *group;
} fleet_api_req_t;

/* [A-Za-z0-9_-]{1,64}, the whole string. */
bool fleet_ann_id_valid(const char *s);
/* Decoded length of strict base64 (standard alphabet, padded, no whitespace), -1 if not. */
long fleet_b64_len(const char *s);
/* Decodes strict base64 into out; the decoded length, or -1 (bad input, or cap too small). */
long fleet_b64_decode(const char *s, uint8_t *out, size_t cap);

/* ---- parsers: doc must hold a successfully parsed document --------------------------------- */

fleet_err_t fleet_desired_parse(const fleet_json_doc_t *doc, fleet_desired_t *out,
                                fleet_perr_t *err);
fleet_err_t fleet_cmd_parse(const fleet_json_doc_t *doc, fleet_cmd_t *out, fleet_perr_t *err);
fleet_err_t fleet_meet_down_parse(const fleet_json_doc_t *doc, fleet_meet_down_t *out,
                                  fleet_perr_t *err);
/* Every frame is checked (base64, 1..FLEET_ANN_FRAME_MAX bytes, 160 for pcmu) before any is
 * used: a chunk is taken whole or refused. */
fleet_err_t fleet_ann_chunk_parse(const fleet_json_doc_t *doc, fleet_ann_chunk_t *out,
                                  fleet_perr_t *err);
/* The i-th entry of a parsed joined or media message's peers (already validated). */
bool fleet_meet_peer_at(const fleet_meet_down_t *msg, size_t i, fleet_peer_info_t *out);

/* Raw bytes to a Desired in one step (size check, JSON, schema); no view outlives the call. */
fleet_err_t fleet_desired_decode(const char *payload, size_t len, fleet_desired_t *out,
                                 fleet_perr_t *err);

/* When the command could not be parsed: its id if the payload has a valid one. */
bool fleet_cmd_salvage_id(const fleet_json_doc_t *doc, char *out, size_t cap);

/* ---- encoders ---------------------------------------------------------------------------- */

size_t fleet_status_encode(const fleet_status_t *m, char *buf, size_t cap);
size_t fleet_state_encode(const fleet_state_t *m, char *buf, size_t cap);
size_t fleet_ack_encode(const fleet_ack_t *m, char *buf, size_t cap);
size_t fleet_tele_encode(const fleet_tele_t *m, char *buf, size_t cap);
size_t fleet_meet_up_encode(const fleet_meet_up_t *m, char *buf, size_t cap);
size_t fleet_api_req_encode(const fleet_api_req_t *m, char *buf, size_t cap);

const char *fleet_ack_code_name(fleet_ack_code_t code);

#ifdef __cplusplus
}
#endif

#endif /* FLEET_MSG_H */
