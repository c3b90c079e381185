/*
 * test_msg.c - every parser with good and bad input, and encoders that round-trip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_msg.h"
#include "fleet_msg_controller.h"
#include "harness.h"

static fleet_json_doc_t g_doc;
static fleet_perr_t g_err;
static char g_text[80 * 1024];

/* Parses text into the shared doc (the previous one is released). */
static fleet_err_t load(const char *text)
{
    fleet_json_free(&g_doc);
    snprintf(g_text, sizeof g_text, "%s", text);
    g_err.msg[0] = '\0';
    return fleet_json_parse(&g_doc, g_text, strlen(g_text), &g_err);
}

#define PARSE(fn, text, out) (load(text) == FLEET_OK ? fn(&g_doc, (out), &g_err) : FLEET_ERR_JSON)

/* A string of n copies of unit, in a static rotating buffer. */
static const char *rep(const char *unit, size_t n)
{
    static char bufs[4][8192];
    static int which;
    char *b = bufs[which++ % 4];
    size_t k = strlen(unit), len = 0;
    for (size_t i = 0; i < n && len + k < sizeof bufs[0]; i++) {
        memcpy(b + len, unit, k);
        len += k;
    }
    b[len] = '\0';
    return b;
}

static const char *fmt(const char *f, const char *a)
{
    static char bufs[4][16384];
    static int which;
    char *b = bufs[which++ % 4];
    snprintf(b, sizeof bufs[0], f, a);
    return b;
}

/* ---- desired ----------------------------------------------------------------------------- */

static void test_desired_good(void)
{
    fleet_desired_t d;
    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":5}", &d), FLEET_OK);
    CHECK_INT(d.rev, 5);
    CHECK(!d.has_meeting && !d.has_ts);

    CHECK_INT(PARSE(fleet_desired_parse,
                    "{\"rev\":7,\"meeting\":{\"room\":\"standup\",\"mic\":false,\"volume\":40,"
                    "\"until\":1700000100,\"extra\":[1]},\"ts\":1.5,\"future\":{\"x\":1}}",
                    &d),
              FLEET_OK);
    CHECK_INT(d.rev, 7);
    CHECK(d.has_meeting);
    CHECK_STR(d.meeting.room, "standup");
    CHECK(!d.meeting.mic);
    CHECK(d.meeting.has_volume && d.meeting.volume == 40);
    CHECK(d.meeting.has_until && d.meeting.until == 1700000100.0); /* int for a float: fine */
    CHECK(d.has_ts && d.ts == 1.5);

    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":0,\"meeting\":null,\"ts\":null}", &d), FLEET_OK);
    CHECK(!d.has_meeting && !d.has_ts && d.rev == 0);
    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":1,\"meeting\":{\"room\":\"r\"}}", &d), FLEET_OK);
    CHECK(d.meeting.mic); /* default true */
    CHECK(!d.meeting.has_volume && !d.meeting.has_until);
    CHECK_INT(PARSE(fleet_desired_parse,
                    "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"volume\":null,\"until\":null}}", &d),
              FLEET_OK);
    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":5,\"rev\":6}", &d), FLEET_OK);
    CHECK_INT(d.rev, 6); /* the last duplicate wins, as in pydantic */
    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":9007199254740991}", &d), FLEET_OK); /* MAX_REV */
    CHECK_INT(d.rev, FLEET_MAX_REV);
    CHECK_INT(PARSE(fleet_desired_parse,
                    fmt("{\"rev\":1,\"meeting\":{\"room\":\"%s\"}}", rep("r", 64)), &d),
              FLEET_OK);
}

static void test_desired_bad(void)
{
    const char *bad[] = {
        "{}",
        "{\"rev\":\"9\"}",
        "{\"rev\":5.0}",
        "{\"rev\":5e0}",
        "{\"rev\":-1}",
        "{\"rev\":true}",
        "{\"rev\":null}",
        "{\"rev\":[5]}",
        "{\"rev\":9007199254740992}",
        "{\"rev\":9007199254740994}",
        "{\"rev\":1,\"meeting\":\"standup\"}",
        "{\"rev\":1,\"meeting\":{}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"Standup\"}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"\"}}",
        "{\"rev\":1,\"meeting\":{\"room\":5}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"mic\":1}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"volume\":101}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"volume\":5.0}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"volume\":\"5\"}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"until\":\"5\"}}",
        "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"until\":true}}",
        "{\"rev\":1,\"ts\":\"now\"}",
        "[{\"rev\":1}]",
        "\"rev\"",
        "5",
        "null",
    };
    fleet_desired_t d;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_desired_parse, bad[i], &d) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad desired accepted");
        }
    }
    CHECK_INT(PARSE(fleet_desired_parse, "{\"rev\":\"9\"}", &d), FLEET_ERR_SCHEMA);
    CHECK_STR(g_err.msg, "rev: expected an integer");
    /* protocol.md 1.4: a null in a field with a default is the default. */
    CHECK_INT(
        PARSE(fleet_desired_parse, "{\"rev\":1,\"meeting\":{\"room\":\"r\",\"mic\":null}}", &d),
        FLEET_OK);
    CHECK(d.meeting.mic);
    CHECK_INT(PARSE(fleet_desired_parse, "{}", &d), FLEET_ERR_SCHEMA);
    CHECK_STR(g_err.msg, "rev: field required");
    CHECK_INT(PARSE(fleet_desired_parse,
                    fmt("{\"rev\":1,\"meeting\":{\"room\":\"%s\"}}", rep("r", 65)), &d),
              FLEET_ERR_SCHEMA);

    /* Through the one-step decoder: bad JSON and oversize payloads. */
    CHECK_INT(fleet_desired_decode("{\"rev\":", 7, &d, &g_err), FLEET_ERR_JSON);
    size_t big = 70 * 1024;
    char *p = malloc(big);
    memset(p, ' ', big);
    memcpy(p, "{\"rev\":1}", 9);
    CHECK_INT(fleet_desired_decode(p, big, &d, &g_err), FLEET_ERR_TOO_LARGE);
    free(p);
}

static void test_desired_round_trip(void)
{
    fleet_desired_t d, back;
    char a[512], b[512];
    CHECK_INT(PARSE(fleet_desired_parse,
                    "{\"ts\":12.25,\"rev\":3,\"meeting\":{\"until\":1700000000.5,\"room\":\"x.y\","
                    "\"volume\":0,\"mic\":false}}",
                    &d),
              FLEET_OK);
    size_t n = fleet_desired_encode(&d, a, sizeof a);
    CHECK(n > 0);
    CHECK_STR(a, "{\"rev\":3,\"meeting\":{\"room\":\"x.y\",\"mic\":false,\"volume\":0,"
                 "\"until\":1700000000.5},\"ts\":12.25}");
    CHECK_INT(fleet_desired_decode(a, n, &back, &g_err), FLEET_OK);
    CHECK(fleet_desired_encode(&back, b, sizeof b) == n);
    CHECK_STR(b, a);
}

/* ---- status ------------------------------------------------------------------------------ */

static void test_status(void)
{
    fleet_status_t s;
    CHECK_INT(PARSE(fleet_status_parse, FLEET_LWT_PAYLOAD, &s), FLEET_OK);
    CHECK(!s.online && s.fw == NULL && !s.has_caps && s.n_groups == 0);
    CHECK_INT(PARSE(fleet_status_parse,
                    "{\"online\":true,\"fw\":\"0.1.0\",\"hw\":\"host\",\"ip\":null,"
                    "\"caps\":{\"audio\":true,\"codecs\":[\"opus\"]},\"groups\":[\"a\",\"b-2\"],"
                    "\"ts\":1700000000.25}",
                    &s),
              FLEET_OK);
    CHECK(s.online && s.has_caps && s.caps.audio && !s.caps.mic && s.caps.n_codecs == 1);
    CHECK_STR(s.caps.codecs[0], "opus");
    CHECK_INT(s.n_groups, 2);
    CHECK_STR(s.groups[1], "b-2");
    CHECK(s.ip == NULL && s.has_ts);
    /* 256 code points of 2-byte UTF-8 is a valid ShortText; 257 is not. */
    CHECK_INT(
        PARSE(fleet_status_parse, fmt("{\"online\":true,\"fw\":\"%s\"}", rep("\xc3\xa9", 256)), &s),
        FLEET_OK);
    CHECK_INT(
        PARSE(fleet_status_parse, fmt("{\"online\":true,\"fw\":\"%s\"}", rep("\xc3\xa9", 257)), &s),
        FLEET_ERR_SCHEMA);
    const char *bad[] = {
        "{}",
        "{\"online\":\"true\"}",
        "{\"online\":true,\"groups\":[\"A\"]}",
        "{\"online\":true,\"groups\":\"a\"}",
        "{\"online\":true,\"caps\":{\"codecs\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\","
        "\"i\"]}}",
        "{\"online\":true,\"caps\":{\"codecs\":[\"opus-opus-opus-op\"]}}",
        "{\"online\":true,\"caps\":[]}",
        "{\"online\":true,\"ts\":\"1\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_status_parse, bad[i], &s) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad status accepted");
        }
    }
    /* 32 groups is the maximum. */
    char groups[1024] = "";
    for (int i = 0; i < 33; i++) {
        char g[16];
        snprintf(g, sizeof g, "%s\"g%d\"", i == 0 ? "" : ",", i);
        strcat(groups, g);
    }
    CHECK_INT(PARSE(fleet_status_parse, fmt("{\"online\":true,\"groups\":[%s]}", groups), &s),
              FLEET_ERR_SCHEMA);
}

static void test_status_round_trip(void)
{
    fleet_status_t s, back;
    char a[1024], b[1024];
    memset(&s, 0, sizeof s);
    s.online = true;
    s.fw = "0.1.0";
    s.hw = "esp32s3";
    s.ip = "10.0.0.7";
    s.has_caps = true;
    s.caps.audio = true;
    s.caps.mic = true;
    s.caps.n_codecs = 1;
    s.caps.codecs[0] = "opus";
    s.n_groups = 2;
    s.groups[0] = "kitchen";
    s.groups[1] = "floor-2";
    s.has_ts = true;
    s.ts = 1700000000.5;
    size_t n = fleet_status_encode(&s, a, sizeof a);
    CHECK_STR(a, "{\"online\":true,\"fw\":\"0.1.0\",\"hw\":\"esp32s3\",\"ip\":\"10.0.0.7\","
                 "\"caps\":{\"audio\":true,\"mic\":true,\"speaker\":false,\"codecs\":[\"opus\"]},"
                 "\"groups\":[\"kitchen\",\"floor-2\"],\"ts\":1700000000.5}");
    CHECK_INT(PARSE(fleet_status_parse, a, &back), FLEET_OK);
    CHECK(fleet_status_encode(&back, b, sizeof b) == n);
    CHECK_STR(b, a);
}

/* ---- state ------------------------------------------------------------------------------- */

static void test_state(void)
{
    fleet_state_t s;
    CHECK_INT(PARSE(fleet_state_parse, "{\"rev\":2}", &s), FLEET_OK);
    CHECK(s.rev == 2 && !s.has_meeting && s.mic && s.error == NULL);
    CHECK_INT(PARSE(fleet_state_parse,
                    "{\"rev\":2,\"meeting\":{\"room\":\"r\",\"session\":null,\"peers\":[\"p1\"]},"
                    "\"mic\":false,\"volume\":3,\"error\":\"e\",\"ts\":1}",
                    &s),
              FLEET_OK);
    CHECK(s.has_meeting && s.meeting.session == NULL && s.meeting.n_peers == 1 && !s.mic);
    CHECK_STR(s.meeting.peers[0], "p1");
    CHECK_STR(s.error, "e");
    const char *bad[] = {
        "{\"rev\":\"2\"}",
        "{\"rev\":2,\"meeting\":{\"session\":\"s\"}}",
        "{\"rev\":2,\"meeting\":{\"room\":\"r\",\"peers\":[1]}}",
        "{\"rev\":2,\"volume\":-1}",
        "{\"rev\":2,\"error\":5}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_state_parse, bad[i], &s) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad state accepted");
        }
    }
    char peers[2048] = "";
    for (int i = 0; i < 65; i++) {
        strcat(peers, i == 0 ? "\"p\"" : ",\"p\"");
    }
    CHECK_INT(PARSE(fleet_state_parse,
                    fmt("{\"rev\":1,\"meeting\":{\"room\":\"r\",\"peers\":[%s]}}", peers), &s),
              FLEET_ERR_SCHEMA);
}

static void test_state_round_trip(void)
{
    fleet_state_t s, back;
    char a[1024], b[1024];
    memset(&s, 0, sizeof s);
    s.rev = 12;
    s.has_meeting = true;
    s.meeting.room = "standup";
    s.meeting.session = "s-1";
    s.meeting.participant = "p-\"q\"";
    s.meeting.n_peers = 2;
    s.meeting.peers[0] = "p-2";
    s.meeting.peers[1] = "p-3";
    s.mic = false;
    s.error = "line\nbreak";
    size_t n = fleet_state_encode(&s, a, sizeof a);
    CHECK_STR(a, "{\"rev\":12,\"meeting\":{\"room\":\"standup\",\"session\":\"s-1\","
                 "\"participant\":\"p-\\\"q\\\"\",\"peers\":[\"p-2\",\"p-3\"]},\"mic\":false,"
                 "\"error\":\"line\\nbreak\"}");
    CHECK_INT(PARSE(fleet_state_parse, a, &back), FLEET_OK);
    CHECK_STR(back.meeting.participant, "p-\"q\"");
    CHECK(fleet_state_encode(&back, b, sizeof b) == n);
    CHECK_STR(b, a);
    /* Meeting null: left out, like messages.encode does. */
    memset(&s, 0, sizeof s);
    s.rev = 7;
    s.mic = true;
    fleet_state_encode(&s, a, sizeof a);
    CHECK_STR(a, "{\"rev\":7,\"mic\":true}");
}

/* ---- command and ack --------------------------------------------------------------------- */

static void test_cmd(void)
{
    fleet_cmd_t c;
    CHECK_INT(PARSE(fleet_cmd_parse, "{\"id\":\"c1\",\"op\":\"ping\"}", &c), FLEET_OK);
    CHECK_STR(c.id, "c1");
    CHECK_STR(c.op, "ping");
    CHECK(c.args == NULL && c.ttl_ms == 30000 && !c.has_ts);
    CHECK_INT(PARSE(fleet_cmd_parse,
                    "{\"id\":\"c2\",\"op\":\"set_groups\",\"args\":{\"groups\":[\"a\"]},"
                    "\"ttl_ms\":500,\"ts\":1700000000.5,\"extra\":true}",
                    &c),
              FLEET_OK);
    CHECK(cJSON_IsObject(c.args) && c.ttl_ms == 500 && c.has_ts);
    CHECK_INT(PARSE(fleet_cmd_parse,
                    fmt("{\"id\":\"%s\",\"op\":\"ping\"}", rep("\xf0\x9f\x8e\xa7", 64)), &c),
              FLEET_OK); /* 64 code points, 256 bytes */
    CHECK_INT(strlen(c.id), 256);
    const char *bad[] = {
        "{\"op\":\"ping\"}",
        "{\"id\":\"\",\"op\":\"ping\"}",
        "{\"id\":5,\"op\":\"ping\"}",
        "{\"id\":\"c\"}",
        "{\"id\":\"c\",\"op\":\"\"}",
        "{\"id\":\"c\",\"op\":\"ping\",\"args\":[]}",
        "{\"id\":\"c\",\"op\":\"ping\",\"ttl_ms\":0}",
        "{\"id\":\"c\",\"op\":\"ping\",\"ttl_ms\":-5}",
        "{\"id\":\"c\",\"op\":\"ping\",\"ttl_ms\":1.5}",
        "{\"id\":\"c\",\"op\":\"ping\",\"ttl_ms\":\"100\"}",
        "{\"id\":\"c\",\"op\":\"ping\",\"ts\":\"x\"}",
        "[]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_cmd_parse, bad[i], &c) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad command accepted");
        }
    }
    CHECK_INT(PARSE(fleet_cmd_parse, fmt("{\"id\":\"%s\",\"op\":\"ping\"}", rep("a", 65)), &c),
              FLEET_ERR_SCHEMA);
    CHECK_INT(PARSE(fleet_cmd_parse, fmt("{\"id\":\"c\",\"op\":\"%s\"}", rep("a", 33)), &c),
              FLEET_ERR_SCHEMA);

    /* Salvaging the id of a command that did not parse. */
    char id[300];
    CHECK_INT(load("{\"id\":\"c9\",\"op\":7}"), FLEET_OK);
    CHECK(fleet_cmd_salvage_id(&g_doc, id, sizeof id));
    CHECK_STR(id, "c9");
    CHECK_INT(load("{\"id\":\"\",\"op\":7}"), FLEET_OK);
    CHECK(!fleet_cmd_salvage_id(&g_doc, id, sizeof id));
    CHECK_INT(load("[\"id\"]"), FLEET_OK);
    CHECK(!fleet_cmd_salvage_id(&g_doc, id, sizeof id));
}

static void test_cmd_round_trip(void)
{
    fleet_cmd_t c, back;
    char a[512], b[512];
    CHECK_INT(PARSE(fleet_cmd_parse,
                    "{\"id\":\"x\",\"op\":\"identify\",\"args\":{\"seconds\":3,\"l\":[true,null]},"
                    "\"ts\":5}",
                    &c),
              FLEET_OK);
    size_t n = fleet_cmd_encode(&c, a, sizeof a);
    CHECK_STR(a, "{\"id\":\"x\",\"op\":\"identify\",\"args\":{\"seconds\":3,\"l\":[true,null]},"
                 "\"ttl_ms\":30000,\"ts\":5}");
    CHECK_INT(PARSE(fleet_cmd_parse, a, &back), FLEET_OK);
    CHECK(fleet_cmd_encode(&back, b, sizeof b) == n);
    CHECK_STR(b, a);
}

static void test_ack(void)
{
    fleet_ack_t a;
    CHECK_INT(PARSE(fleet_ack_parse, "{\"id\":\"c1\",\"ok\":true,\"code\":\"ok\"}", &a), FLEET_OK);
    CHECK(a.ok && a.code == FLEET_ACK_OK && a.done && a.result == NULL);
    CHECK_STR(a.detail, "");
    CHECK_INT(PARSE(fleet_ack_parse,
                    "{\"id\":\"c1\",\"ok\":true,\"code\":\"accepted\",\"done\":false,"
                    "\"detail\":\"d\",\"result\":{\"uptime_s\":1.5}}",
                    &a),
              FLEET_OK);
    CHECK(a.code == FLEET_ACK_ACCEPTED && !a.done && cJSON_IsObject(a.result));
    const char *bad[] = {
        "{\"id\":\"c1\",\"ok\":true,\"code\":\"great\"}",
        "{\"id\":\"c1\",\"ok\":true,\"code\":5}",
        "{\"id\":\"c1\",\"ok\":\"yes\",\"code\":\"ok\"}",
        "{\"id\":\"c1\",\"ok\":true}",
        "{\"id\":\"c1\",\"ok\":true,\"code\":\"ok\",\"result\":[]}",
        "{\"ok\":true,\"code\":\"ok\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_ack_parse, bad[i], &a) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad ack accepted");
        }
    }
    for (int code = FLEET_ACK_OK; code <= FLEET_ACK_BAD_REQUEST; code++) {
        fleet_ack_code_t back;
        CHECK(fleet_ack_code_from_name(fleet_ack_code_name((fleet_ack_code_t)code), &back));
        CHECK_INT(back, code);
    }
}

static void test_ack_round_trip(void)
{
    fleet_ack_t a, back;
    char x[512], y[512];
    memset(&a, 0, sizeof a);
    a.id = "c1";
    a.ok = true;
    a.code = FLEET_ACK_OK;
    a.detail = "";
    a.done = true;
    a.result_json = "{\"uptime_s\":12.5}";
    size_t n = fleet_ack_encode(&a, x, sizeof x);
    CHECK_STR(x, "{\"id\":\"c1\",\"ok\":true,\"code\":\"ok\",\"detail\":\"\",\"done\":true,"
                 "\"result\":{\"uptime_s\":12.5}}");
    CHECK_INT(PARSE(fleet_ack_parse, x, &back), FLEET_OK);
    CHECK(fleet_ack_encode(&back, y, sizeof y) == n);
    CHECK_STR(y, x);
}

/* ---- telemetry --------------------------------------------------------------------------- */

static void test_tele(void)
{
    fleet_tele_t t;
    fleet_peer_audio_t audio[4];
    memset(&t, 0, sizeof t);
    t.audio = audio;
    t.audio_cap = 4;
    CHECK_INT(PARSE(fleet_tele_parse, "{\"ts\":1}", &t), FLEET_OK);
    CHECK(t.ts == 1.0 && !t.wifi.has_rssi && t.wifi.reconnects == 0 && t.n_audio == 0);
    CHECK(t.audio == audio); /* storage survives the reset */
    CHECK_INT(PARSE(fleet_tele_parse,
                    "{\"ts\":1.5,\"wifi\":{\"rssi\":-60,\"channel\":6,\"reconnects\":1},"
                    "\"sys\":{\"heap_free\":1000,\"heap_min\":900,\"uptime_s\":3,\"cpu_load\":0.5,"
                    "\"mqtt_reconnects\":2},\"meeting\":{\"room\":\"r\",\"session\":\"s\"},"
                    "\"audio\":[{\"peer\":\"p1\",\"packets_sent\":10,\"loss\":0.01,"
                    "\"jitter_ms\":3,\"codec\":\"opus\"}]}",
                    &t),
              FLEET_OK);
    CHECK(t.wifi.has_rssi && t.wifi.rssi == -60 && t.sys.heap_min == 900 && t.sys.cpu_load == 0.5);
    CHECK(t.has_meeting && t.meeting.participant == NULL && t.n_audio == 1);
    CHECK_STR(audio[0].peer, "p1");
    CHECK(audio[0].packets_sent == 10 && audio[0].has_loss && !audio[0].has_rtt_ms);
    const char *bad[] = {
        "{}",
        "{\"ts\":\"1\"}",
        "{\"ts\":1,\"wifi\":{\"rssi\":-60.5}}",
        "{\"ts\":1,\"sys\":{\"cpu_load\":1.5}}",
        "{\"ts\":1,\"meeting\":{}}",
        "{\"ts\":1,\"audio\":[5]}",
        "{\"ts\":1,\"audio\":[{}]}",
        "{\"ts\":1,\"audio\":[{\"peer\":\"p\",\"loss\":-0.1}]}",
        "{\"ts\":1,\"audio\":[{\"peer\":\"p\",\"packets_lost\":\"1\"}]}",
        "{\"ts\":1,\"audio\":[{\"peer\":\"p\",\"packets_lost\":-1}]}",
        "{\"ts\":1,\"wifi\":{\"reconnects\":-1}}",
        "{\"ts\":1,\"sys\":{\"mqtt_reconnects\":-2}}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_tele_parse, bad[i], &t) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad telemetry accepted");
        }
    }
    CHECK_INT(PARSE(fleet_tele_parse, "{\"ts\":1,\"audio\":[{\"peer\":\"p\",\"loss\":-0.1}]}", &t),
              FLEET_ERR_SCHEMA);
    CHECK_STR(g_err.msg, "audio.0.loss: number out of range");
    /* More items than storage: all validated, the first audio_cap kept. */
    char items[2048] = "";
    for (int i = 0; i < 6; i++) {
        strcat(items, i == 0 ? "{\"peer\":\"a\"}" : ",{\"peer\":\"b\"}");
    }
    CHECK_INT(PARSE(fleet_tele_parse, fmt("{\"ts\":1,\"audio\":[%s]}", items), &t), FLEET_OK);
    CHECK_INT(t.n_audio, 4); /* six validated, four stored */
    CHECK_INT(PARSE(fleet_tele_parse, "{\"ts\":1e400}", &t), FLEET_ERR_SCHEMA);
}

static void test_tele_round_trip(void)
{
    fleet_tele_t t, back;
    fleet_peer_audio_t a[1], b[1];
    char x[1024], y[1024];
    memset(&t, 0, sizeof t);
    memset(a, 0, sizeof a);
    t.ts = 1700000000.25;
    t.wifi.has_rssi = true;
    t.wifi.rssi = -55;
    t.wifi.reconnects = 3;
    t.sys.has_heap_free = true;
    t.sys.heap_free = 150000;
    t.sys.has_uptime_s = true;
    t.sys.uptime_s = 12.5;
    t.has_meeting = true;
    t.meeting.room = "r";
    a[0].peer = "p1";
    a[0].packets_received = 99;
    a[0].has_rtt_ms = true;
    a[0].rtt_ms = 4.5;
    t.audio = a;
    t.n_audio = 1;
    size_t n = fleet_tele_encode(&t, x, sizeof x);
    CHECK_STR(x, "{\"ts\":1700000000.25,\"wifi\":{\"rssi\":-55,\"reconnects\":3},"
                 "\"sys\":{\"heap_free\":150000,\"uptime_s\":12.5,\"mqtt_reconnects\":0},"
                 "\"meeting\":{\"room\":\"r\"},\"audio\":[{\"peer\":\"p1\",\"packets_sent\":0,"
                 "\"packets_received\":99,\"packets_lost\":0,\"rtt_ms\":4.5}]}");
    memset(&back, 0, sizeof back);
    back.audio = b;
    back.audio_cap = 1;
    CHECK_INT(PARSE(fleet_tele_parse, x, &back), FLEET_OK);
    CHECK(fleet_tele_encode(&back, y, sizeof y) == n);
    CHECK_STR(y, x);
}

/* ---- meeting signalling ------------------------------------------------------------------ */

static void test_meet_up(void)
{
    fleet_meet_up_t m;
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"join\",\"room\":\"r\"}", &m), FLEET_OK);
    CHECK(m.type == FLEET_UP_JOIN && !m.has_caps);
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"leave\",\"x\":1}", &m), FLEET_OK);
    CHECK(m.type == FLEET_UP_LEAVE);
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"offer\",\"to\":\"p\",\"sdp\":\"v=0\"}", &m),
              FLEET_OK);
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"answer\",\"to\":\"p\",\"sdp\":\"v=0\"}", &m),
              FLEET_OK);
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"message\",\"text\":\"hi\"}", &m), FLEET_OK);
    CHECK(m.type == FLEET_UP_MESSAGE && m.to == NULL);
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"message\",\"to\":\"p\"}", &m),
              FLEET_ERR_SCHEMA); /* neither text nor data_b64 */
    const char *bad[] = {
        "{}",
        "{\"type\":\"joined\"}",
        "{\"type\":\"join\"}",
        "{\"type\":\"join\",\"room\":\"R\"}",
        "{\"type\":\"offer\",\"to\":\"p\",\"sdp\":\"\"}",
        "{\"type\":\"offer\",\"sdp\":\"v=0\"}",
        "{\"type\":null}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_meet_up_parse, bad[i], &m) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad meet up accepted");
        }
    }
    CHECK_INT(PARSE(fleet_meet_up_parse,
                    fmt("{\"type\":\"message\",\"text\":\"%s\"}", rep("x", 4097)), &m),
              FLEET_ERR_SCHEMA);
}

static void test_meet_up_round_trip(void)
{
    const char *msgs[] = {
        "{\"type\":\"join\",\"room\":\"standup\",\"caps\":{\"audio\":false,\"mic\":false,"
        "\"speaker\":false,\"codecs\":[]}}",
        "{\"type\":\"leave\"}",
        "{\"type\":\"offer\",\"to\":\"p-2\",\"sdp\":\"v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\n\"}",
        "{\"type\":\"message\",\"to\":\"p\",\"data_b64\":\"AAE=\"}",
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        fleet_meet_up_t m;
        char out[512];
        CHECK_INT(PARSE(fleet_meet_up_parse, msgs[i], &m), FLEET_OK);
        CHECK(fleet_meet_up_encode(&m, out, sizeof out) == strlen(msgs[i]));
        CHECK_STR(out, msgs[i]);
    }
}

static void test_meet_down(void)
{
    fleet_meet_down_t m;
    fleet_peer_info_t p;
    CHECK_INT(
        PARSE(fleet_meet_down_parse,
              "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s1\",\"participant\":\"p1\","
              "\"peers\":[{\"participant\":\"p2\",\"pid\":\"dev-2\",\"caps\":{\"audio\":true}}]}",
              &m),
        FLEET_OK);
    CHECK(m.type == FLEET_DOWN_JOINED && m.n_peers == 1);
    CHECK(fleet_meet_peer_at(&m, 0, &p));
    CHECK_STR(p.participant, "p2");
    CHECK_STR(p.pid, "dev-2");
    CHECK(p.has_caps && p.caps.audio);
    CHECK(!fleet_meet_peer_at(&m, 1, &p));
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\"}",
                    &m),
              FLEET_OK);
    CHECK(m.n_peers == 0);
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p3\",\"pid\":\"d3\"}}",
                    &m),
              FLEET_OK);
    CHECK_STR(m.peer.pid, "d3");
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"peer_left\",\"participant\":\"p3\"}", &m),
              FLEET_OK);
    CHECK_INT(
        PARSE(fleet_meet_down_parse, "{\"type\":\"offer\",\"from\":\"p2\",\"sdp\":\"v=0\"}", &m),
        FLEET_OK);
    CHECK_STR(m.from, "p2");
    CHECK_INT(
        PARSE(fleet_meet_down_parse, "{\"type\":\"answer\",\"from_\":\"p2\",\"sdp\":\"v\"}", &m),
        FLEET_OK); /* populate_by_name: the field name works as well as the alias */
    CHECK_STR(m.from, "p2");
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"left\",\"session\":null}", &m), FLEET_OK);
    CHECK(m.type == FLEET_DOWN_LEFT && m.session == NULL);
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"error\",\"code\":\"room_full\"}", &m),
              FLEET_OK);
    CHECK_STR(m.detail, "");
    CHECK_INT(
        PARSE(fleet_meet_down_parse, "{\"type\":\"message\",\"from\":\"p\",\"text\":null}", &m),
        FLEET_OK);
    const char *bad[] = {
        "{}",
        "{\"type\":5}",
        "{\"type\":\"join\",\"room\":\"r\"}",
        "{\"type\":\"joined\",\"room\":\"r\",\"participant\":\"p\"}",
        "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\","
        "\"peers\":[{\"participant\":\"p2\",\"pid\":\"Dev\"}]}",
        "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\",\"peers\":[1]"
        "}",
        "{\"type\":\"peer_joined\"}",
        "{\"type\":\"peer_left\",\"participant\":null}",
        "{\"type\":\"offer\",\"sdp\":\"v=0\"}",
        "{\"type\":\"offer\",\"from\":null,\"from_\":\"p\",\"sdp\":\"v=0\"}",
        "{\"type\":\"error\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (PARSE(fleet_meet_down_parse, bad[i], &m) == FLEET_OK) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"bad meet down accepted");
        }
    }
}

static void test_meet_down_sdp_limit(void)
{
    fleet_meet_down_t md;
    /* MeetDelivered text is bounded like MeetSend's (4096), joined peers at 64. */
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    fmt("{\"type\":\"message\",\"from\":\"p\",\"text\":\"%s\"}", rep("x", 4097)),
                    &md),
              FLEET_ERR_SCHEMA);
    char peers[8192] = "";
    for (int i = 0; i < 65; i++) {
        strcat(peers, i == 0 ? "{\"participant\":\"x\",\"pid\":\"d\"}"
                             : ",{\"participant\":\"x\",\"pid\":\"d\"}");
    }
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    fmt("{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":"
                        "\"p\",\"peers\":[%s]}",
                        peers),
                    &md),
              FLEET_ERR_SCHEMA);

    /* 32768 characters of SDP is the maximum. */
    size_t n = 32 * 1024;
    char *text = malloc(n + 128);
    char *sdp = malloc(n + 2);
    fleet_meet_down_t m;
    memset(sdp, 'v', n + 1);
    sdp[n] = '\0';
    snprintf(text, n + 128, "{\"type\":\"offer\",\"from\":\"p\",\"sdp\":\"%s\"}", sdp);
    CHECK_INT(PARSE(fleet_meet_down_parse, text, &m), FLEET_OK);
    sdp[n] = 'v';
    sdp[n + 1] = '\0';
    free(text);
    text = malloc(n + 128);
    snprintf(text, n + 128, "{\"type\":\"offer\",\"from\":\"p\",\"sdp\":\"%s\"}", sdp);
    CHECK_INT(PARSE(fleet_meet_down_parse, text, &m), FLEET_ERR_SCHEMA);
    free(text);
    free(sdp);
}

static void test_meet_down_round_trip(void)
{
    const char *msgs[] = {
        "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\","
        "\"peers\":[{\"participant\":\"p2\",\"pid\":\"d2\"}],\"media\":\"mesh\"}",
        "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\","
        "\"peers\":[{\"participant\":\"mixer\",\"pid\":\"janus-1\"}],\"media\":\"mixed\"}",
        "{\"type\":\"media\",\"peers\":[{\"participant\":\"mixer\",\"pid\":\"janus-2\"}],"
        "\"media\":\"mixed\"}",
        "{\"type\":\"error\",\"code\":\"negotiation_failed\",\"detail\":\"no codec\","
        "\"from\":\"p2\"}",
        "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p3\",\"pid\":\"d3\","
        "\"caps\":{\"audio\":true,\"mic\":true,\"speaker\":true,\"codecs\":[\"opus\"]}}}",
        "{\"type\":\"peer_left\",\"participant\":\"p3\"}",
        "{\"type\":\"answer\",\"from\":\"p2\",\"sdp\":\"v=0\"}",
        "{\"type\":\"left\",\"session\":\"s\"}",
        "{\"type\":\"error\",\"code\":\"room_full\",\"detail\":\"cap 3\"}",
        "{\"type\":\"message\",\"from\":\"p\",\"text\":\"hi\"}",
    };
    for (size_t i = 0; i < sizeof msgs / sizeof msgs[0]; i++) {
        fleet_meet_down_t m;
        char out[512];
        CHECK_INT(PARSE(fleet_meet_down_parse, msgs[i], &m), FLEET_OK);
        CHECK(fleet_meet_down_encode(&m, out, sizeof out) == strlen(msgs[i]));
        CHECK_STR(out, msgs[i]);
    }
    /* media defaults to mesh in joined, is required in media, and is one of two words. */
    fleet_meet_down_t m;
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    "{\"type\":\"joined\",\"room\":\"r\",\"session\":\"s\",\"participant\":\"p\"}",
                    &m),
              FLEET_OK);
    CHECK(!m.mixed);
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"media\",\"peers\":[]}", &m),
              FLEET_ERR_SCHEMA);
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"media\",\"media\":\"sfu\"}", &m),
              FLEET_ERR_SCHEMA);
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"media\",\"media\":\"mesh\"}", &m),
              FLEET_OK);
    CHECK_INT(m.n_peers, 0);
    /* MeetReject, up: to required, code and detail defaulted. */
    fleet_meet_up_t up;
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"reject\",\"to\":\"p1\"}", &up), FLEET_OK);
    CHECK_STR(up.code, "negotiation_failed");
    char out[256];
    CHECK(fleet_meet_up_encode(&up, out, sizeof out) > 0);
    CHECK_STR(out, "{\"type\":\"reject\",\"to\":\"p1\",\"code\":\"negotiation_failed\","
                   "\"detail\":\"\"}");
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"reject\"}", &up), FLEET_ERR_SCHEMA);
}

/* MeetCandidate up and MeetRelayedCandidate down (protocol.md 8.6): a value or null (end of
 * candidates, also when absent), mid defaulting to "0", the bounds of both. */
static void test_meet_candidate(void)
{
    static const char *const ups[] = {
        "{\"type\":\"candidate\",\"to\":\"p-1\",\"candidate\":\"candidate:842163049 1 udp "
        "1677729535 192.168.1.41 50123 typ srflx raddr 0.0.0.0 rport 0\",\"mid\":\"0\"}",
        "{\"type\":\"candidate\",\"to\":\"mixer\",\"candidate\":null,\"mid\":\"audio\"}",
    };
    for (size_t i = 0; i < sizeof ups / sizeof ups[0]; i++) {
        fleet_meet_up_t up;
        char out[512];
        CHECK_INT(PARSE(fleet_meet_up_parse, ups[i], &up), FLEET_OK);
        CHECK_INT(up.type, FLEET_UP_CANDIDATE);
        CHECK(fleet_meet_up_encode(&up, out, sizeof out) == strlen(ups[i]));
        CHECK_STR(out, ups[i]);
    }
    fleet_meet_up_t up;
    CHECK_INT(PARSE(fleet_meet_up_parse, "{\"type\":\"candidate\",\"to\":\"p-1\"}", &up), FLEET_OK);
    CHECK(up.candidate == NULL);
    CHECK_STR(up.mid, "0");
    static const char *const bad_ups[] = {
        "{\"type\":\"candidate\",\"candidate\":\"candidate:1 1 udp 1 h 1 typ host\"}",
        "{\"type\":\"candidate\",\"to\":\"p-1\",\"candidate\":\"\"}",
        "{\"type\":\"candidate\",\"to\":\"p-1\",\"candidate\":7}",
        "{\"type\":\"candidate\",\"to\":\"p-1\",\"mid\":\"\"}",
        "{\"type\":\"candidate\",\"to\":\"p-1\",\"mid\":\"012345678901234567890123456789012\"}",
    };
    for (size_t i = 0; i < sizeof bad_ups / sizeof bad_ups[0]; i++) {
        CHECK_INT(PARSE(fleet_meet_up_parse, bad_ups[i], &up), FLEET_ERR_SCHEMA);
    }
    /* 1024 characters are a candidate, 1025 are not. */
    static char big[1200];
    int n = snprintf(big, sizeof big, "{\"type\":\"candidate\",\"to\":\"p\",\"candidate\":\"");
    memset(big + n, 'c', 1024);
    memcpy(big + n + 1024, "\"}", 3);
    CHECK_INT(PARSE(fleet_meet_up_parse, big, &up), FLEET_OK);
    memmove(big + n + 1, big + n, strlen(big + n) + 1);
    CHECK_INT(PARSE(fleet_meet_up_parse, big, &up), FLEET_ERR_SCHEMA);

    fleet_meet_down_t m;
    const char *down = "{\"type\":\"candidate\",\"from\":\"p-2\",\"candidate\":\"candidate:1 1 "
                       "udp 2122260223 10.1.0.2 50000 typ host\",\"mid\":\"0\"}";
    char out[512];
    CHECK_INT(PARSE(fleet_meet_down_parse, down, &m), FLEET_OK);
    CHECK_INT(m.type, FLEET_DOWN_CANDIDATE);
    CHECK_STR(m.from, "p-2");
    CHECK(fleet_meet_down_encode(&m, out, sizeof out) == strlen(down));
    CHECK_STR(out, down);
    CHECK_INT(PARSE(fleet_meet_down_parse,
                    "{\"type\":\"candidate\",\"from\":\"p-2\",\"candidate\":null}", &m),
              FLEET_OK);
    CHECK(m.candidate == NULL);
    CHECK_STR(m.mid, "0");
    CHECK(fleet_meet_down_encode(&m, out, sizeof out) > 0);
    CHECK_STR(out, "{\"type\":\"candidate\",\"from\":\"p-2\",\"candidate\":null,\"mid\":\"0\"}");
    CHECK_INT(PARSE(fleet_meet_down_parse, "{\"type\":\"candidate\",\"candidate\":null}", &m),
              FLEET_ERR_SCHEMA); /* from is required */
}

static void test_encoders_refuse_small_buffers(void)
{
    fleet_state_t s;
    char tiny[8];
    memset(&s, 0, sizeof s);
    s.rev = 123456;
    CHECK_INT(fleet_state_encode(&s, tiny, sizeof tiny), 0);
    CHECK_STR(tiny, "");
}

static void cleanup(void)
{
    fleet_json_free(&g_doc);
}

static void test_base64(void)
{
    uint8_t out[8];
    CHECK_INT(fleet_b64_len("AAAA"), 3);
    CHECK_INT(fleet_b64_len("AA=="), 1);
    CHECK_INT(fleet_b64_len("AAA="), 2);
    CHECK_INT(fleet_b64_len(""), -1);
    CHECK_INT(fleet_b64_len("AAA"), -1);
    CHECK_INT(fleet_b64_len("A==="), -1);
    CHECK_INT(fleet_b64_len("AA=A"), -1);
    CHECK_INT(fleet_b64_len("AA==AAAA"), -1);
    CHECK_INT(fleet_b64_len("AA A"), -1);
    CHECK_INT(fleet_b64_decode("aGVsbG8=", out, sizeof out), 5);
    CHECK(memcmp(out, "hello", 5) == 0);
    CHECK_INT(fleet_b64_decode("+/+/", out, sizeof out), 3);
    CHECK_INT(out[0], 0xfb);
    CHECK_INT(fleet_b64_decode("aGVsbG8gd29ybGQ=", out, sizeof out), -1); /* 11 > 8 */
    CHECK(fleet_ann_id_valid("Ann_1-x"));
    CHECK(!fleet_ann_id_valid(""));
    CHECK(!fleet_ann_id_valid("a.b"));
}

static void test_ann_chunk_and_api_req(void)
{
    fleet_ann_chunk_t c;
    CHECK_INT(PARSE(fleet_ann_chunk_parse,
                    "{\"ann\":\"a\",\"seq\":3,\"codec\":\"opus\",\"frames\":[\"AAAA\",\"AA==\"],"
                    "\"last\":true,\"priority\":\"urgent\",\"extra\":1}",
                    &c),
              FLEET_OK);
    CHECK_INT(c.seq, 3);
    CHECK_INT(c.n_frames, 2);
    CHECK(c.last && c.urgent);
    CHECK_INT(c.codec, FLEET_ANN_OPUS);
    char buf[128];
    fleet_api_req_t r = {.id = "b1", .device = "dev-1", .to = NULL, .group = "g"};
    CHECK(fleet_api_req_encode(&r, buf, sizeof buf) > 0);
    CHECK_STR(buf, "{\"id\":\"b1\",\"device\":\"dev-1\",\"group\":\"g\"}");
    CHECK_INT(fleet_api_req_encode(&r, buf, 8), 0);
}

void suite_msg(void)
{
    RUN(test_desired_good);
    RUN(test_desired_bad);
    RUN(test_desired_round_trip);
    RUN(test_status);
    RUN(test_status_round_trip);
    RUN(test_state);
    RUN(test_state_round_trip);
    RUN(test_cmd);
    RUN(test_cmd_round_trip);
    RUN(test_ack);
    RUN(test_ack_round_trip);
    RUN(test_tele);
    RUN(test_tele_round_trip);
    RUN(test_meet_up);
    RUN(test_meet_up_round_trip);
    RUN(test_meet_down);
    RUN(test_meet_down_sdp_limit);
    RUN(test_meet_down_round_trip);
    RUN(test_meet_candidate);
    RUN(test_encoders_refuse_small_buffers);
    RUN(test_base64);
    RUN(test_ann_chunk_and_api_req);
    cleanup();
}
