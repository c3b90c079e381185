/*
 * fuzz_inbound.c - libFuzzer target over every inbound parse path.
 *
 * The first byte picks the path:
 *   0 desired  1 cmd  2 meet down  3 status  4 state  5 ack  6 tele  7 meet up
 *     parse the rest; whatever parses must encode, and the encoding must parse and
 *     encode to the same bytes (a fixed point);
 *   8 a device session: a fresh core, then the rest split at 0xFF bytes into messages,
 *     each with its first byte picking the topic (own desired, grp/all, a group, cmd,
 *     meet down, announcement chunks, a foreign one) and with clock, disconnects and
 *     button presses stirred in, a media layer that takes SDP (or refuses it) and trickled
 *     candidates, and a player with a small queue that plays a frame per tick;
 *   9 on_message with a fuzzed topic: "topic\npayload".
 * In 8 and 9 every payload the core publishes must parse as its topic's message.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_core.h"
#include "fleet_msg.h"
#include "fleet_msg_controller.h"

static const char *TAG = "fuzz";

/* Encodings can be 6x their source (control characters become \u00XX). */
#define ENC_MAX (7 * FLEET_MAX_PAYLOAD + 1024)
static char enc1[ENC_MAX], enc2[ENC_MAX];

static void die(const char *what, const char *detail) __attribute__((noreturn));
static void die(const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s: %s\n", TAG, what, detail != NULL ? detail : "");
    abort();
}

typedef size_t (*encode_any_fn)(const void *msg, char *buf, size_t cap);
typedef fleet_err_t (*parse_any_fn)(const fleet_json_doc_t *doc, void *out, fleet_perr_t *err);

/* Storage big enough for any message struct, with room for telemetry audio items. */
typedef struct {
    union {
        fleet_status_t status;
        fleet_desired_t desired;
        fleet_state_t state;
        fleet_cmd_t cmd;
        fleet_ack_t ack;
        fleet_tele_t tele;
        fleet_meet_up_t up;
        fleet_meet_down_t down;
    } u;
    fleet_peer_audio_t audio[FLEET_TELE_MAX_AUDIO];
} any_msg_t;

static fleet_err_t parse_kind(int kind, const fleet_json_doc_t *doc, any_msg_t *m,
                              fleet_perr_t *err)
{
    memset(m, 0, sizeof *m);
    switch (kind) {
        case 0:
            return fleet_desired_parse(doc, &m->u.desired, err);
        case 1:
            return fleet_cmd_parse(doc, &m->u.cmd, err);
        case 2:
            return fleet_meet_down_parse(doc, &m->u.down, err);
        case 3:
            return fleet_status_parse(doc, &m->u.status, err);
        case 4:
            return fleet_state_parse(doc, &m->u.state, err);
        case 5:
            return fleet_ack_parse(doc, &m->u.ack, err);
        case 6:
            m->u.tele.audio = m->audio;
            m->u.tele.audio_cap = FLEET_TELE_MAX_AUDIO;
            return fleet_tele_parse(doc, &m->u.tele, err);
        default:
            return fleet_meet_up_parse(doc, &m->u.up, err);
    }
}

static size_t encode_kind(int kind, const any_msg_t *m, char *buf, size_t cap)
{
    switch (kind) {
        case 0:
            return fleet_desired_encode(&m->u.desired, buf, cap);
        case 1:
            return fleet_cmd_encode(&m->u.cmd, buf, cap);
        case 2:
            return fleet_meet_down_encode(&m->u.down, buf, cap);
        case 3:
            return fleet_status_encode(&m->u.status, buf, cap);
        case 4:
            return fleet_state_encode(&m->u.state, buf, cap);
        case 5:
            return fleet_ack_encode(&m->u.ack, buf, cap);
        case 6:
            return fleet_tele_encode(&m->u.tele, buf, cap);
        default:
            return fleet_meet_up_encode(&m->u.up, buf, cap);
    }
}

static void parse_path(int kind, const char *data, size_t len)
{
    static any_msg_t m1, m2;
    fleet_json_doc_t doc1, doc2;
    fleet_perr_t err;
    if (fleet_json_parse(&doc1, data, len, &err) != FLEET_OK) {
        return;
    }
    if (kind == 1) {
        char id[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)];
        (void)fleet_cmd_salvage_id(&doc1, id, sizeof id);
    }
    if (parse_kind(kind, &doc1, &m1, &err) == FLEET_OK) {
        size_t n1 = encode_kind(kind, &m1, enc1, sizeof enc1);
        if (n1 == 0) {
            die("a parsed message did not encode", data);
        }
        if (fleet_json_parse(&doc2, enc1, n1, &err) != FLEET_OK ||
            parse_kind(kind, &doc2, &m2, &err) != FLEET_OK) {
            fprintf(stderr, "%s: encoded: %s\n", TAG, enc1);
            die("an encoded message did not parse", err.msg);
        }
        size_t n2 = encode_kind(kind, &m2, enc2, sizeof enc2);
        if (n2 != n1 || memcmp(enc1, enc2, n1) != 0) {
            fprintf(stderr, "%s: first: %s\nsecond: %s\n", TAG, enc1, enc2);
            die("encoding is not a fixed point", "");
        }
        fleet_json_free(&doc2);
    }
    fleet_json_free(&doc1);
}

/* ---- a port that checks what the core publishes ------------------------------------------ */

typedef struct {
    uint64_t now_ms;
    bool clock_set;
    double unix_now;
} fuzz_port_t;

static fuzz_port_t fport;
static fleet_port_t port;
static fleet_core_t core;

static uint64_t p_now_ms(void *ctx)
{
    return ((fuzz_port_t *)ctx)->now_ms;
}

static bool p_clock_is_set(void *ctx)
{
    return ((fuzz_port_t *)ctx)->clock_set;
}

static double p_unix_time(void *ctx)
{
    return ((fuzz_port_t *)ctx)->unix_now;
}

static bool p_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos,
                      bool retain)
{
    static any_msg_t m;
    fleet_topic_t t;
    fleet_json_doc_t doc;
    fleet_perr_t err;
    int kind;
    (void)ctx;
    (void)qos;
    (void)retain;
    static const char by[] = "fleet/v1/api/by/dev-1/";
    if (strncmp(topic, by, sizeof by - 1) == 0) {
        /* the button's ApiRequest: an object */
        if (fleet_json_parse(&doc, payload, len, &err) != FLEET_OK || !cJSON_IsObject(doc.root)) {
            die("the button published an invalid request", topic);
        }
        fleet_json_free(&doc);
        return true;
    }
    if (!fleet_topic_parse(core.prefix, topic, strlen(topic), &t)) {
        die("published on a foreign topic", topic);
    }
    switch (t.kind) {
        case FLEET_TOPIC_STATUS:
            kind = 3;
            break;
        case FLEET_TOPIC_STATE:
            kind = 4;
            break;
        case FLEET_TOPIC_ACK:
            kind = 5;
            break;
        case FLEET_TOPIC_TELE:
            kind = 6;
            break;
        case FLEET_TOPIC_MEET_UP:
            kind = 7;
            break;
        default:
            die("published on a topic the device does not own", topic);
            return false;
    }
    if (fleet_json_parse(&doc, payload, len, &err) != FLEET_OK ||
        parse_kind(kind, &doc, &m, &err) != FLEET_OK) {
        fprintf(stderr, "%s: on %s: %.*s\n", TAG, topic, (int)len, payload);
        die("the core published an invalid message", err.msg);
    }
    fleet_json_free(&doc);
    return true;
}

static bool p_sub(void *ctx, const char *topic, int qos)
{
    (void)ctx;
    (void)topic;
    (void)qos;
    return true;
}

static bool p_unsub(void *ctx, const char *topic)
{
    (void)ctx;
    (void)topic;
    return true;
}

static void p_reboot(void *ctx)
{
    (void)ctx;
}

static void p_identify(void *ctx, uint32_t s)
{
    (void)ctx;
    (void)s;
}

static void p_log(void *ctx, fleet_log_level_t level, const char *tag, const char *msg)
{
    (void)ctx;
    (void)level;
    (void)tag;
    (void)msg;
}

/* A media layer for the session path, so that SDP and trickled candidates reach it: an SDP
 * of even length is taken, one of odd length refused; a candidate must be a real one. */
static bool m_sdp(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    (void)ctx;
    (void)from;
    (void)is_offer;
    return strlen(sdp) % 2 == 0;
}

static bool m_candidate(void *ctx, const char *from, const char *mid, const char *cand)
{
    (void)ctx;
    if (from[0] == '\0' || mid[0] == '\0' || (cand != NULL && cand[0] == '\0') ||
        core.early_len > sizeof core.early) {
        die("a candidate the core should not have handed over", cand);
    }
    return true;
}

static const fleet_media_t fuzz_media = {.remote_sdp = m_sdp, .remote_candidate = m_candidate};

/* A player with room for 8 frames; each tick plays one. */
static uint32_t pl_queued, pl_played;

static bool pl_frame(void *ctx, fleet_ann_codec_t codec, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (len == 0 || len > FLEET_ANN_FRAME_MAX || data == NULL ||
        (codec == FLEET_ANN_PCMU && len != FLEET_ANN_PCMU_FRAME)) {
        die("a frame the core should not have handed over", "");
    }
    if (pl_queued >= 8) {
        return false;
    }
    pl_queued++;
    return true;
}

static void pl_flush(void *ctx)
{
    (void)ctx;
    pl_queued = 0;
    pl_played = 0;
}

static void pl_progress(void *ctx, uint32_t *queued, uint32_t *played)
{
    (void)ctx;
    *queued = pl_queued;
    *played = pl_played;
}

static void pl_ring(void *ctx, bool on)
{
    (void)ctx;
    (void)on;
}

static const fleet_player_t fuzz_player = {NULL, pl_frame, pl_flush, pl_progress, pl_ring};

static void start_core(void)
{
    static const char *const groups[] = {"kitchen", "floor-1"};
    fleet_config_t cfg;
    memset(&port, 0, sizeof port);
    port.ctx = &fport;
    port.now_ms = p_now_ms;
    port.clock_is_set = p_clock_is_set;
    port.unix_time = p_unix_time;
    port.publish = p_publish;
    port.subscribe = p_sub;
    port.unsubscribe = p_unsub;
    port.reboot = p_reboot;
    port.identify = p_identify;
    port.log = p_log;
    port.media = &fuzz_media;
    port.player = &fuzz_player;
    pl_queued = 0;
    pl_played = 0;
    fport.now_ms = 1000;
    fport.clock_set = true;
    fport.unix_now = 1700000000.0;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "dev-1";
    cfg.groups = groups;
    cfg.n_groups = 2;
    cfg.fw = "fuzz";
    cfg.hw = "host";
    cfg.tele_interval_ms = 1000;
    cfg.call_to = "dev-2";
    if (!fleet_core_init(&core, &cfg, &port)) {
        die("core init", "");
    }
    fleet_core_on_connected(&core);
}

static const char *const TOPICS[] = {
    "fleet/v1/dev/dev-1/desired",   "fleet/v1/grp/all/desired", "fleet/v1/grp/kitchen/desired",
    "fleet/v1/grp/floor-1/desired", "fleet/v1/dev/dev-1/cmd",   "fleet/v1/meet/dev-1/down",
    "fleet/v1/dev/dev-2/cmd",       "fleet/v1/grp/lab/desired", "fleet/v1/dev/dev-1/ann",
};

static void session_path(const uint8_t *data, size_t len)
{
    start_core();
    size_t i = 0;
    while (i < len) {
        size_t end = i;
        while (end < len && data[end] != 0xFF) {
            end++;
        }
        if (end > i) {
            uint8_t sel = data[i];
            const char *topic = TOPICS[sel % (sizeof TOPICS / sizeof TOPICS[0])];
            /* High bits stir time, the clock and the connection between messages. */
            fport.now_ms += (uint64_t)(sel >> 3) * 700;
            fport.unix_now += (double)(sel >> 3);
            if (sel & 0x80) {
                fport.clock_set = !fport.clock_set;
            }
            if ((sel & 0xF8) == 0xF8) {
                fleet_core_on_disconnected(&core);
                fleet_core_on_connected(&core);
            }
            if ((sel & 0xF8) == 0xF0) {
                fleet_core_button(&core, FLEET_BUTTON_SHORT);
            }
            fleet_core_on_message(&core, topic, strlen(topic), (const char *)data + i + 1,
                                  end - i - 1);
            if (pl_queued > 0) {
                pl_queued--;
                pl_played++;
            }
            (void)fleet_core_tick(&core);
        }
        i = end + 1;
    }
    fleet_core_shutdown(&core);
}

static void topic_path(const uint8_t *data, size_t len)
{
    start_core();
    const uint8_t *nl = memchr(data, '\n', len);
    size_t tlen = nl != NULL ? (size_t)(nl - data) : len;
    const char *payload = nl != NULL ? (const char *)nl + 1 : "";
    size_t plen = nl != NULL ? len - tlen - 1 : 0;
    fleet_core_on_message(&core, (const char *)data, tlen, payload, plen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    int mode = data[0] % 10;
    if (mode < 8) {
        parse_path(mode, (const char *)data + 1, size - 1);
    } else if (mode == 8) {
        session_path(data + 1, size - 1);
    } else {
        topic_path(data + 1, size - 1);
    }
    return 0;
}
