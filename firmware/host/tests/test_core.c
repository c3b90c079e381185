/*
 * test_core.c - the device behaviour through the port: connect, reconciler, commands,
 * meeting signalling, telemetry, shutdown. Every payload the core publishes is checked
 * against the parsers at the end of each test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_port.h"
#include "fleet_core.h"
#include "fleet_msg_controller.h"
#include "harness.h"

static fake_port_t fp;
static fleet_core_t core;
static fleet_json_doc_t state_doc, ack_doc; /* what last_state()/last_ack() point into */

static bool setup_with(const char *id, const char *prefix, const char *const *groups, size_t n)
{
    fleet_config_t cfg;
    fp_free(&fp);
    fp_init(&fp);
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = id;
    cfg.prefix = prefix;
    cfg.groups = groups;
    cfg.n_groups = n;
    cfg.fw = "0.1.0";
    cfg.hw = "host";
    cfg.tele_interval_ms = 5000;
    if (!fleet_core_init(&core, &cfg, &fp.port)) {
        return false;
    }
    fleet_core_on_connected(&core);
    return true;
}

static void setup(void)
{
    static const char *const groups[] = {"kitchen"};
    CHECK(setup_with("dev-1", NULL, groups, 1));
}

static void deliver(const char *suffix, const char *payload)
{
    char topic[256];
    snprintf(topic, sizeof topic, "fleet/v1/%s", suffix);
    fleet_core_on_message(&core, topic, strlen(topic), payload,
                          payload != NULL ? strlen(payload) : 0);
}

/* The last state published, parsed (valid until the next call). */
static fleet_state_t *last_state(void)
{
    static fleet_state_t st;
    fleet_json_free(&state_doc);
    const fp_pub_t *p = fp_last(&fp, "/dev/dev-1/state");
    if (p == NULL || fleet_json_parse(&state_doc, p->payload, p->len, NULL) != FLEET_OK ||
        fleet_state_parse(&state_doc, &st, NULL) != FLEET_OK) {
        return NULL;
    }
    return &st;
}

/* The last ack published, parsed. */
static fleet_ack_t *last_ack(void)
{
    static fleet_ack_t ack;
    fleet_json_free(&ack_doc);
    const fp_pub_t *p = fp_last(&fp, "/dev/dev-1/ack");
    if (p == NULL || fleet_json_parse(&ack_doc, p->payload, p->len, NULL) != FLEET_OK ||
        fleet_ack_parse(&ack_doc, &ack, NULL) != FLEET_OK) {
        return NULL;
    }
    return &ack;
}

static const char *last_payload(const char *suffix)
{
    const fp_pub_t *p = fp_last(&fp, suffix);
    return p != NULL ? p->payload : "";
}

/* Every recorded publish must parse as the message its topic says. */
static void check_publishes_valid(void)
{
    for (size_t i = 0; i < fp.n_pubs; i++) {
        const fp_pub_t *p = &fp.pubs[i];
        fleet_topic_t t;
        fleet_json_doc_t doc;
        fleet_perr_t err;
        fleet_err_t rc = FLEET_ERR_SCHEMA;
        if (strstr(p->topic, "/api/by/") != NULL) {
            continue; /* the button's requests: checked by test_button */
        }
        CHECK(fleet_topic_parse(core.prefix, p->topic, strlen(p->topic), &t));
        if (fleet_json_parse(&doc, p->payload, p->len, &err) == FLEET_OK) {
            union {
                fleet_status_t status;
                fleet_state_t state;
                fleet_ack_t ack;
                fleet_tele_t tele;
                fleet_meet_up_t up;
            } u;
            memset(&u, 0, sizeof u);
            switch (t.kind) {
                case FLEET_TOPIC_STATUS:
                    rc = fleet_status_parse(&doc, &u.status, &err);
                    break;
                case FLEET_TOPIC_STATE:
                    rc = fleet_state_parse(&doc, &u.state, &err);
                    break;
                case FLEET_TOPIC_ACK:
                    rc = fleet_ack_parse(&doc, &u.ack, &err);
                    break;
                case FLEET_TOPIC_TELE:
                    rc = fleet_tele_parse(&doc, &u.tele, &err);
                    break;
                case FLEET_TOPIC_MEET_UP:
                    rc = fleet_meet_up_parse(&doc, &u.up, &err);
                    break;
                default:
                    break;
            }
            fleet_json_free(&doc);
        }
        if (rc != FLEET_OK) {
            fprintf(stderr, "  invalid publish on %s: %s (%s)\n", p->topic, p->payload, err.msg);
            CHECK(!"the core published an invalid message");
        }
    }
}

/* True if repeating the command with this id (an unknown op) resends the same bytes. */
static bool memo_ok(const char *id)
{
    char before[1024], cmd[256];
    snprintf(before, sizeof before, "%s", last_payload("/ack"));
    snprintf(cmd, sizeof cmd, "{\"id\":\"%s\",\"op\":\"ping\"}", id);
    deliver("dev/dev-1/cmd", cmd);
    return strcmp(before, last_payload("/ack")) == 0 && strstr(before, "unknown_op") != NULL;
}

/* ---- init and connect -------------------------------------------------------------------- */

static void test_init_refuses_bad_config(void)
{
    static const char *const bad_group[] = {"Kitchen"};
    CHECK(!setup_with("Dev-1", NULL, NULL, 0));
    CHECK(!setup_with("", NULL, NULL, 0));
    CHECK(!setup_with("dev-1", "fleet/+", NULL, 0));
    CHECK(!setup_with("dev-1", NULL, bad_group, 1));
    CHECK(setup_with("dev-1", "/site-a/fleet/", NULL, 0));
    CHECK_STR(fleet_core_status_topic(&core), "site-a/fleet/dev/dev-1/status");
}

static void test_connect_birth_subscriptions_state(void)
{
    setup();
    const fp_pub_t *birth = fp_last(&fp, "/dev/dev-1/status");
    CHECK(birth != NULL && birth->retain && birth->qos == 1);
    CHECK_STR(birth->topic, "fleet/v1/dev/dev-1/status");
    CHECK_STR(birth->payload, "{\"online\":true,\"fw\":\"0.1.0\",\"hw\":\"host\",\"caps\":{"
                              "\"audio\":false,\"mic\":false,\"speaker\":false,\"codecs\":[]},"
                              "\"groups\":[\"kitchen\"],\"ts\":1700000000}");
    CHECK(fp_subscribed(&fp, "fleet/v1/dev/dev-1/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/dev/dev-1/cmd"));
    CHECK(fp_subscribed(&fp, "fleet/v1/meet/dev-1/down"));
    CHECK(fp_subscribed(&fp, "fleet/v1/grp/all/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/grp/kitchen/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/dev/dev-1/ann"));
    CHECK_INT(fp.n_subs, 6);
    const fp_pub_t *state = fp_last(&fp, "/dev/dev-1/state");
    CHECK(state != NULL && state->retain && state->qos == 1);
    CHECK_STR(state->payload, "{\"rev\":0,\"mic\":true,\"ts\":1700000000}");
    CHECK_STR(FLEET_LWT_PAYLOAD, "{\"online\":false}");
    check_publishes_valid();
}

static void test_birth_without_clock_has_no_ts(void)
{
    static const char *const groups[] = {"b", "all", "a", "b"}; /* "all" implicit, dup dropped */
    fp_free(&fp);
    fp_init(&fp);
    fp.clock_set = false;
    fleet_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "d";
    cfg.groups = groups;
    cfg.n_groups = 4;
    cfg.ip = "10.1.2.3";
    CHECK(fleet_core_init(&core, &cfg, &fp.port));
    fleet_core_on_connected(&core);
    CHECK_STR(last_payload("/status"),
              "{\"online\":true,\"fw\":\"unknown\",\"hw\":\"unknown\","
              "\"ip\":\"10.1.2.3\",\"caps\":{\"audio\":false,\"mic\":false,"
              "\"speaker\":false,\"codecs\":[]},\"groups\":[\"b\",\"a\"]}");
    fp_free(&fp);
}

/* ---- desired state ----------------------------------------------------------------------- */

static void test_desired_applies_and_reports(void)
{
    setup();
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "{\"rev\":5,\"meeting\":{\"room\":\"standup\",\"mic\":true}}");
    fleet_state_t *st = last_state();
    CHECK(st != NULL);
    if (st != NULL) {
        /* Joining: the room shows, but rev 5 only once the meeting server confirms. */
        CHECK_INT(st->rev, 0);
        CHECK(st->has_meeting);
        CHECK_STR(st->meeting.room, "standup");
        CHECK(st->meeting.session == NULL && st->meeting.participant == NULL);
        CHECK(st->mic);
    }
    CHECK_STR(last_payload("/meet/dev-1/up"), "{\"type\":\"join\",\"room\":\"standup\",\"caps\":{"
                                              "\"audio\":false,\"mic\":false,\"speaker\":false,"
                                              "\"codecs\":[]}}");
    CHECK_INT(core.phase, FLEET_MEET_JOINING);
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\",\"peers\":[]}");
    st = last_state();
    CHECK(st != NULL && st->rev == 5 && st->meeting.session != NULL);

    /* A refused join reports its rev at once, with the error: the controller counts it failed. */
    deliver("dev/dev-1/desired", "{\"rev\":6,\"meeting\":{\"room\":\"retro\"}}");
    st = last_state();
    CHECK(st != NULL && st->rev == 5);
    deliver("meet/dev-1/down", "{\"type\":\"error\",\"code\":\"room_full\",\"detail\":\"cap 3\"}");
    st = last_state();
    CHECK(st != NULL && st->rev == 6 && st->error != NULL);
    check_publishes_valid();
}

static void test_highest_rev_wins_never_backwards(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":5,\"meeting\":{\"room\":\"standup\",\"mic\":true}}");
    fp_clear(&fp);
    deliver("grp/kitchen/desired", "{\"rev\":7,\"meeting\":null}");
    fleet_state_t *st = last_state();
    CHECK(st != NULL && st->rev == 7 && !st->has_meeting);
    CHECK_STR(last_payload("/meet/dev-1/up"), "{\"type\":\"leave\"}");
    CHECK_INT(core.phase, FLEET_MEET_IDLE);

    /* Lower and equal revs, from any source, change nothing. */
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "{\"rev\":6,\"meeting\":{\"room\":\"late\"}}");
    deliver("grp/all/desired", "{\"rev\":7,\"meeting\":{\"room\":\"same\"}}");
    CHECK_INT(fp_count(&fp, "/state"), 0);
    CHECK_INT(fp_count(&fp, "/up"), 0);
    CHECK_INT(core.applied_rev, 7);

    /* A newer one from grp/all applies. */
    deliver("grp/all/desired", "{\"rev\":8,\"meeting\":{\"room\":\"all-hands\",\"mic\":false}}");
    st = last_state();
    CHECK(st != NULL && st->rev == 7 && st->has_meeting && !st->mic); /* joining */
    CHECK_INT(core.applied_rev, 8);
    CHECK_STR(st != NULL ? st->meeting.room : "", "all-hands");
    check_publishes_valid();
}

/* Puts a doc straight into a source slot, as if it had arrived without being applied. */
static void plant(size_t slot, int64_t rev, const char *room)
{
    memset(&core.sources[slot], 0, sizeof core.sources[slot]);
    core.sources[slot].has_doc = true;
    core.sources[slot].doc.rev = rev;
    core.sources[slot].doc.has_meeting = true;
    snprintf(core.sources[slot].doc.meeting.room, sizeof core.sources[slot].doc.meeting.room, "%s",
             room);
    core.sources[slot].doc.meeting.mic = true;
}

static void test_equal_rev_prefers_device_then_group_then_all(void)
{
    /* grp/all (slot 1) and kitchen (slot 2) hold rev 9; a lower own doc makes the core
     * evaluate: the named group wins the tie. */
    setup();
    plant(1, 9, "from-all");
    plant(2, 9, "from-group");
    deliver("dev/dev-1/desired", "{\"rev\":8}");
    CHECK_INT(core.applied_rev, 9);
    CHECK_STR(core.meeting.room, "from-group");
    /* The device's own doc beats both. */
    setup();
    plant(1, 9, "from-all");
    plant(2, 9, "from-group");
    deliver("dev/dev-1/desired", "{\"rev\":9,\"meeting\":{\"room\":\"from-device\"}}");
    CHECK_STR(core.meeting.room, "from-device");
}

static void test_room_switch_leaves_then_joins(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":1,\"meeting\":{\"room\":\"a\"}}");
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "{\"rev\":2,\"meeting\":{\"room\":\"b\"}}");
    CHECK_INT(fp_count(&fp, "/meet/dev-1/up"), 2);
    CHECK_STR(fp.pubs[0].payload, "{\"type\":\"leave\"}");
    CHECK(strstr(fp.pubs[1].payload, "\"room\":\"b\"") != NULL);
    /* Same room, mic change: no rejoin. */
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "{\"rev\":3,\"meeting\":{\"room\":\"b\",\"mic\":false}}");
    CHECK_INT(fp_count(&fp, "/meet/dev-1/up"), 0);
    CHECK(last_state() != NULL && !last_state()->mic);
    check_publishes_valid();
}

static void test_empty_payload_clears_source(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":9,\"meeting\":{\"room\":\"r\"}}");
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "");
    CHECK(!core.sources[0].has_doc);
    CHECK_INT(fp_count(&fp, "/state"), 0); /* what is applied stays applied */
    CHECK_INT(core.applied_rev, 9);
    deliver("grp/all/desired", "{\"rev\":8}");
    CHECK_INT(core.applied_rev, 9);
    CHECK(core.sources[1].has_doc);
    deliver("grp/all/desired", "{\"rev\":10}");
    CHECK_INT(core.applied_rev, 10);
    CHECK(!core.has_meeting);
    fleet_core_on_message(&core, "fleet/v1/grp/all/desired", 24, NULL, 0);
    CHECK(!core.sources[1].has_doc);
    check_publishes_valid();
}

static void test_malformed_desired_refused(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":5,\"meeting\":{\"room\":\"standup\"}}");
    fp_clear(&fp);
    deliver("dev/dev-1/desired", "{\"rev\":");
    deliver("dev/dev-1/desired", "{\"rev\":\"9\"}");
    deliver("dev/dev-1/desired", "{\"rev\":9.0}");
    deliver("dev/dev-1/desired", "[9]");
    size_t big = 70 * 1024;
    char *p = malloc(big);
    memset(p, ' ', big);
    memcpy(p, "{\"rev\":99}", 10);
    fleet_core_on_message(&core, "fleet/v1/dev/dev-1/desired", 26, p, big);
    free(p);
    CHECK_INT(fp.n_pubs, 0);
    CHECK_INT(core.applied_rev, 5);
    CHECK(core.sources[0].has_doc && core.sources[0].doc.rev == 5); /* the good one is kept */
    CHECK(core.has_meeting);
}

static void test_foreign_and_unknown_topics_ignored(void)
{
    setup();
    fp_clear(&fp);
    deliver("dev/dev-2/desired", "{\"rev\":50}");
    deliver("grp/other/desired", "{\"rev\":50}");
    deliver("dev/dev-2/cmd", "{\"id\":\"x\",\"op\":\"ping\"}");
    deliver("meet/dev-2/down", "{\"type\":\"left\"}");
    deliver("dev/dev-1/state", "{\"rev\":50}");
    fleet_core_on_message(&core, "elsewhere/x", 11, "{}", 2);
    CHECK_INT(fp.n_pubs, 0);
    CHECK_INT(core.applied_rev, 0);
}

static void test_until_past_means_no_meeting(void)
{
    setup();
    fp.unix_now = 1700000000.0;
    deliver("dev/dev-1/desired",
            "{\"rev\":3,\"meeting\":{\"room\":\"old\",\"until\":1699999999.5}}");
    fleet_state_t *st = last_state();
    CHECK(st != NULL && st->rev == 3 && !st->has_meeting);
    CHECK_INT(fp_count(&fp, "/meet/dev-1/up"), 0);

    /* A future until holds until the clock passes it. */
    deliver("dev/dev-1/desired", "{\"rev\":4,\"meeting\":{\"room\":\"now\",\"until\":1700000010}}");
    st = last_state();
    CHECK(st != NULL && st->rev == 3 && st->has_meeting); /* joining */
    CHECK_INT(core.applied_rev, 4);
    fp.unix_now = 1700000009.0;
    (void)fleet_core_tick(&core);
    CHECK(core.has_meeting);
    fp_clear(&fp);
    fp.unix_now = 1700000010.5;
    (void)fleet_core_tick(&core);
    st = last_state();
    CHECK(st != NULL && st->rev == 4 && !st->has_meeting);
    CHECK_STR(last_payload("/meet/dev-1/up"), "{\"type\":\"leave\"}");
    check_publishes_valid();
}

static void test_until_waits_for_clock(void)
{
    setup();
    fp.clock_set = false;
    deliver("dev/dev-1/desired", "{\"rev\":3,\"meeting\":{\"room\":\"r\",\"until\":1000}}");
    CHECK(core.has_meeting); /* no clock, no way to know it lapsed */
    (void)fleet_core_tick(&core);
    CHECK(core.has_meeting);
    fp.clock_set = true;
    (void)fleet_core_tick(&core);
    CHECK(!core.has_meeting);
    CHECK_INT(core.applied_rev, 3);
}

/* ---- commands ---------------------------------------------------------------------------- */

static void test_cmd_ping(void)
{
    setup();
    fp.now_ms = 12345;
    deliver("dev/dev-1/cmd", "{\"id\":\"c1\",\"op\":\"ping\",\"args\":{},\"ttl_ms\":30000}");
    const fp_pub_t *p = fp_last(&fp, "/dev/dev-1/ack");
    CHECK(p != NULL && p->qos == 1 && !p->retain);
    CHECK_STR(p != NULL ? p->payload : "", "{\"id\":\"c1\",\"ok\":true,\"code\":\"ok\",\"detail\":"
                                           "\"\",\"done\":true,\"result\":{\"uptime_s\":12.345}}");
    check_publishes_valid();
}

static void test_cmd_identify(void)
{
    setup();
    deliver("dev/dev-1/cmd", "{\"id\":\"i1\",\"op\":\"identify\"}");
    CHECK(fp.identifies == 1 && fp.identify_s == FLEET_IDENTIFY_DEFAULT_S);
    CHECK(last_ack() != NULL && last_ack()->ok);
    deliver("dev/dev-1/cmd", "{\"id\":\"i2\",\"op\":\"identify\",\"args\":{\"seconds\":3}}");
    CHECK(fp.identifies == 2 && fp.identify_s == 3);
    deliver("dev/dev-1/cmd", "{\"id\":\"i3\",\"op\":\"identify\",\"args\":{\"seconds\":300}}");
    CHECK(fp.identifies == 3 && fp.identify_s == 300);
    deliver("dev/dev-1/cmd", "{\"id\":\"i4\",\"op\":\"identify\",\"args\":{\"seconds\":null}}");
    CHECK(fp.identifies == 4 && fp.identify_s == FLEET_IDENTIFY_DEFAULT_S);
    const char *bad[] = {"\"3\"", "3.0", "0", "301", "true", "[]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd,
                 "{\"id\":\"ib%lu\",\"op\":\"identify\",\"args\":{\"seconds\":%s}}",
                 (unsigned long)i, bad[i]);
        deliver("dev/dev-1/cmd", cmd);
        fleet_ack_t *a = last_ack();
        CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_BAD_ARGS);
    }
    CHECK_INT(fp.identifies, 4);
    check_publishes_valid();
}

static void test_cmd_reboot(void)
{
    setup();
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"reboot\"}");
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->ok && a->code == FLEET_ACK_ACCEPTED && !a->done);
    CHECK_STR(a != NULL ? a->detail : "", "rebooting");
    CHECK_INT(fp.reboots, 1);
    CHECK_INT(fp_count(&fp, "/ack"), 1);
    CHECK_STR(fp.pending, "r1"); /* saved for the next boot's final ack */
    check_publishes_valid();
}

static void test_reboot_final_ack_after_restart(void)
{
    fleet_config_t cfg;
    fp_free(&fp);
    fp_init(&fp);
    strcpy(fp.pending, "r1");
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "dev-1";
    cfg.pending_cmd_id = "r1";
    CHECK(fleet_core_init(&core, &cfg, &fp.port));
    CHECK_INT(fp.n_pubs, 0); /* nothing before the connection */
    fleet_core_on_connected(&core);
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->ok && a->code == FLEET_ACK_OK && a->done);
    CHECK_STR(a != NULL ? a->id : "", "r1");
    CHECK_STR(fp.pending, "");
    /* The birth and the state go out before the final ack. */
    CHECK(fp.n_pubs >= 3 && strstr(fp.pubs[0].topic, "/status") != NULL);
    /* A redelivered reboot command now gets that final ack, and does not reboot. */
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"reboot\"}");
    CHECK_INT(fp.reboots, 0);
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_OK);
    /* Reconnecting does not confirm it twice. */
    fp_clear(&fp);
    fleet_core_on_disconnected(&core);
    fleet_core_on_connected(&core);
    CHECK_INT(fp_count(&fp, "/ack"), 0);
    check_publishes_valid();
}

static void test_cmd_ota(void)
{
    setup();
    fp_clear(&fp);
    deliver("dev/dev-1/cmd",
            "{\"id\":\"o1\",\"op\":\"ota\",\"args\":{\"url\":\"http://x/fw.bin\"}}");
    CHECK_INT(fp_count(&fp, "/ack"), 2);
    CHECK(strstr(fp.pubs[0].payload, "\"code\":\"accepted\"") != NULL);
    CHECK(strstr(fp.pubs[0].payload, "\"done\":false") != NULL);
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_FAILED && a->done);
    CHECK_STR(a != NULL ? a->detail : "", "not supported in this build");
    const char *bad[] = {"{}", "{\"url\":5}", "{\"url\":null}", "{\"url\":\"ftp://x/fw\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "{\"id\":\"ob%lu\",\"op\":\"ota\",\"args\":%s}", (unsigned long)i,
                 bad[i]);
        deliver("dev/dev-1/cmd", cmd);
        CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    }
    CHECK_STR(last_ack() != NULL ? last_ack()->detail : "", "args.url: an http:// or https:// URL");
    check_publishes_valid();
}

static char ota_started[128];

static bool fp_ota(void *ctx, const char *cmd_id, const char *url)
{
    (void)ctx;
    snprintf(ota_started, sizeof ota_started, "%s %s", cmd_id, url);
    return true;
}

static void test_cmd_ota_by_the_port(void)
{
    setup();
    fp.port.ota = fp_ota;
    ota_started[0] = '\0';
    fp_clear(&fp);
    deliver("dev/dev-1/cmd",
            "{\"id\":\"o1\",\"op\":\"ota\",\"args\":{\"url\":\"http://x/fw.bin\"}}");
    /* Accepted, and the port runs it: no final ack until it ends. */
    CHECK_INT(fp_count(&fp, "/ack"), 1);
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->ok && a->code == FLEET_ACK_ACCEPTED && !a->done);
    CHECK_STR(ota_started, "o1 http://x/fw.bin");
    fleet_core_ota_failed(&core, "o1", "image header: invalid magic byte");
    a = last_ack();
    CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_FAILED && a->done);
    CHECK_STR(a != NULL ? a->detail : "", "image header: invalid magic byte");
    /* A redelivery gets that final answer and starts nothing. */
    ota_started[0] = '\0';
    deliver("dev/dev-1/cmd",
            "{\"id\":\"o1\",\"op\":\"ota\",\"args\":{\"url\":\"http://x/fw.bin\"}}");
    CHECK_STR(ota_started, "");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_FAILED);
    check_publishes_valid();
}

/* After the restart into the new image, or back in the old one after a rollback. */
static void test_ota_final_ack_after_restart(void)
{
    for (int rolled_back = 0; rolled_back < 2; rolled_back++) {
        fleet_config_t cfg;
        fp_free(&fp);
        fp_init(&fp);
        memset(&cfg, 0, sizeof cfg);
        cfg.device_id = "dev-1";
        cfg.fw = "0.2.0";
        cfg.pending_cmd_id = "o1";
        cfg.pending_is_ota = true;
        cfg.pending_error = rolled_back ? "rolled back: the new image did not start" : NULL;
        CHECK(fleet_core_init(&core, &cfg, &fp.port));
        fleet_core_on_connected(&core);
        fleet_ack_t *a = last_ack();
        CHECK(a != NULL && a->done);
        CHECK_STR(a != NULL ? a->id : "", "o1");
        if (rolled_back) {
            CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_FAILED);
            CHECK_STR(a != NULL ? a->detail : "", "rolled back: the new image did not start");
        } else {
            CHECK(a != NULL && a->ok && a->code == FLEET_ACK_OK);
            CHECK(strstr(last_payload("/ack"), "\"result\":{\"fw\":\"0.2.0\"}") != NULL);
        }
        CHECK_STR(fp.pending, "");
        check_publishes_valid();
    }
}

static void test_cmd_set_groups(void)
{
    static const char *const groups[] = {"kitchen", "floor-1"};
    CHECK(setup_with("dev-1", NULL, groups, 2));
    deliver("grp/floor-1/desired", "{\"rev\":2}");
    deliver("grp/kitchen/desired", "{\"rev\":3}");
    fp_clear(&fp);
    deliver("dev/dev-1/cmd",
            "{\"id\":\"g1\",\"op\":\"set_groups\",\"args\":{\"groups\":[\"floor-1\",\"lab\","
            "\"lab\",\"all\"]}}");
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->ok && a->code == FLEET_ACK_OK);
    CHECK(strstr(last_payload("/ack"), "\"result\":{\"groups\":[\"floor-1\",\"lab\"]}") != NULL);
    CHECK(!fp_subscribed(&fp, "fleet/v1/grp/kitchen/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/grp/floor-1/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/grp/lab/desired"));
    CHECK(fp_subscribed(&fp, "fleet/v1/grp/all/desired"));
    CHECK_INT(fp.n_unsubs, 1);
    CHECK_INT(fp.saved_groups, 1);
    CHECK(strstr(last_payload("/status"), "\"groups\":[\"floor-1\",\"lab\"]") != NULL);
    CHECK(fp_last(&fp, "/status")->retain);
    CHECK_INT(core.n_groups, 2);
    CHECK(core.sources[2].has_doc && core.sources[2].doc.rev == 2); /* floor-1's doc kept */
    CHECK(!core.sources[3].has_doc);                                /* lab: nothing yet */
    /* The dropped group's docs no longer count, and its topic is not ours any more. */
    fp_clear(&fp);
    deliver("grp/kitchen/desired", "{\"rev\":40}");
    CHECK_INT(fp.n_pubs, 0);
    deliver("grp/lab/desired", "{\"rev\":41}");
    CHECK(last_state() != NULL && last_state()->rev == 41);

    const char *bad[] = {
        "{}",
        "{\"groups\":\"lab\"}",
        "{\"groups\":[\"Lab\"]}",
        "{\"groups\":[5]}",
        "{\"groups\":null}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "{\"id\":\"gb%lu\",\"op\":\"set_groups\",\"args\":%s}",
                 (unsigned long)i, bad[i]);
        deliver("dev/dev-1/cmd", cmd);
        a = last_ack();
        CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_BAD_ARGS);
    }
    char many[1024] = "{\"id\":\"gm\",\"op\":\"set_groups\",\"args\":{\"groups\":[";
    for (int i = 0; i < 33; i++) {
        char g[16];
        snprintf(g, sizeof g, "%s\"g%d\"", i == 0 ? "" : ",", i);
        strcat(many, g);
    }
    strcat(many, "]}}");
    deliver("dev/dev-1/cmd", many);
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    CHECK_INT(core.n_groups, 2);
    check_publishes_valid();
}

static void test_cmd_unknown_bad_request_expired(void)
{
    setup();
    deliver("dev/dev-1/cmd", "{\"id\":\"u1\",\"op\":\"selfdestruct\"}");
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && !a->ok && a->code == FLEET_ACK_UNKNOWN_OP);
    CHECK_STR(a != NULL ? a->detail : "", "unknown op 'selfdestruct'");

    deliver("dev/dev-1/cmd", "{not json");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_BAD_REQUEST && !a->ok);
    CHECK_STR(a != NULL ? a->id : "", "?");

    deliver("dev/dev-1/cmd", "{\"id\":\"b1\",\"op\":\"ping\",\"ttl_ms\":\"5\"}");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_BAD_REQUEST);
    CHECK_STR(a != NULL ? a->id : "", "b1");
    CHECK_STR(a != NULL ? a->detail : "", "ttl_ms: expected an integer");

    /* An id answered before, reused by a payload that does not decode: bad_request (decoding
     * comes first, protocol.md 6.2), not the old ack; that refusal is what the id gets now. */
    deliver("dev/dev-1/cmd", "{\"id\":\"k1\",\"op\":\"ping\"}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_OK);
    deliver("dev/dev-1/cmd", "{\"id\":\"k1\",\"op\":5}");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_BAD_REQUEST);
    CHECK_STR(a != NULL ? a->id : "", "k1");
    deliver("dev/dev-1/cmd", "{\"id\":\"k1\",\"op\":\"ping\"}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_REQUEST);

    fp.unix_now = 1700000000.0;
    deliver("dev/dev-1/cmd",
            "{\"id\":\"e1\",\"op\":\"identify\",\"ts\":1699999990,\"ttl_ms\":5000}");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_EXPIRED && !a->ok);
    CHECK_STR(a != NULL ? a->detail : "", "issued 10 s ago, ttl 5 s");
    CHECK_INT(fp.identifies, 0);
    deliver("dev/dev-1/cmd",
            "{\"id\":\"e2\",\"op\":\"identify\",\"ts\":1699999990,\"ttl_ms\":20000}");
    CHECK(last_ack() != NULL && last_ack()->ok);
    /* Without a set clock the device cannot judge age: it runs the command. */
    fp.clock_set = false;
    deliver("dev/dev-1/cmd", "{\"id\":\"e3\",\"op\":\"identify\",\"ts\":1,\"ttl_ms\":1}");
    CHECK(last_ack() != NULL && last_ack()->ok);
    CHECK_INT(fp.identifies, 2);

    size_t big = FLEET_MAX_PAYLOAD + 10;
    char *p = malloc(big);
    memset(p, ' ', big);
    fp_clear(&fp);
    fleet_core_on_message(&core, "fleet/v1/dev/dev-1/cmd", 22, p, big);
    free(p);
    CHECK_INT(fp.n_pubs, 0); /* refused before parsing: not even an ack */
    check_publishes_valid();
}

static void test_cmd_idempotent(void)
{
    setup();
    deliver("dev/dev-1/cmd", "{\"id\":\"c1\",\"op\":\"identify\",\"args\":{\"seconds\":2}}");
    char first[512];
    snprintf(first, sizeof first, "%s", last_payload("/ack"));
    fp.now_ms += 1000;
    deliver("dev/dev-1/cmd", "{\"id\":\"c1\",\"op\":\"identify\",\"args\":{\"seconds\":2}}");
    CHECK_STR(last_payload("/ack"), first);
    CHECK_INT(fp.identifies, 1);

    /* ping's result (uptime) is frozen in the remembered ack. */
    deliver("dev/dev-1/cmd", "{\"id\":\"p1\",\"op\":\"ping\"}");
    snprintf(first, sizeof first, "%s", last_payload("/ack"));
    fp.now_ms += 5000;
    deliver("dev/dev-1/cmd", "{\"id\":\"p1\",\"op\":\"ping\"}");
    CHECK_STR(last_payload("/ack"), first);

    /* A repeated reboot does not reboot twice. */
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"reboot\"}");
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"reboot\"}");
    CHECK_INT(fp.reboots, 1);

    /* After FLEET_CMD_RING other commands the id is forgotten and runs again. */
    for (int i = 0; i < FLEET_CMD_RING; i++) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "{\"id\":\"x%d\",\"op\":\"ping\"}", i);
        deliver("dev/dev-1/cmd", cmd);
    }
    deliver("dev/dev-1/cmd", "{\"id\":\"c1\",\"op\":\"identify\",\"args\":{\"seconds\":2}}");
    CHECK_INT(fp.identifies, 2);

    /* The last 32 ids are all remembered (protocol.md 6.2). */
    for (int i = 0; i < FLEET_CMD_RING; i++) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "{\"id\":\"k%d\",\"op\":\"identify\"}", i);
        deliver("dev/dev-1/cmd", cmd);
    }
    int before = fp.identifies;
    for (int i = 0; i < FLEET_CMD_RING; i++) {
        char cmd[64];
        snprintf(cmd, sizeof cmd, "{\"id\":\"k%d\",\"op\":\"identify\"}", i);
        deliver("dev/dev-1/cmd", cmd);
    }
    CHECK_INT(fp.identifies, before);

    /* A bad request with a readable id is remembered too; "?" is not. */
    deliver("dev/dev-1/cmd", "{\"id\":\"bad1\",\"op\":7}");
    snprintf(first, sizeof first, "%s", last_payload("/ack"));
    deliver("dev/dev-1/cmd", "{\"id\":\"bad1\",\"op\":\"identify\"}");
    CHECK_STR(last_payload("/ack"), first);
    CHECK_INT(fp.identifies, before);
    check_publishes_valid();
}

static void test_cmd_memo_arena_evicts_big_acks(void)
{
    /* Acks with long ids and details fill the arena before the ring: old entries are
     * forgotten safely, new ones always answer the same. */
    setup();
    char id[80], cmd[256];
    for (int i = 0; i < 200; i++) {
        snprintf(id, sizeof id, "%060d", i);
        snprintf(cmd, sizeof cmd, "{\"id\":\"%s\",\"op\":\"unknown-op-with-a-long-name-xx\"}", id);
        deliver("dev/dev-1/cmd", cmd);
        CHECK(memo_ok(id));
    }
    CHECK(core.arena_pos <= FLEET_ACK_ARENA);
    check_publishes_valid();
}

/* ---- meeting signalling ------------------------------------------------------------------ */

static void join_standup(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":5,\"meeting\":{\"room\":\"standup\",\"mic\":true}}");
}

static void test_meeting_joined_and_peers(void)
{
    join_standup();
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\",\"peers\":[{\"participant\":\"p-0\","
                               "\"pid\":\"dev-0\"}]}");
    CHECK_INT(core.phase, FLEET_MEET_JOINED);
    fleet_state_t *st = last_state();
    CHECK(st != NULL && st->has_meeting && st->meeting.n_peers == 1);
    CHECK_STR(st != NULL ? st->meeting.session : "", "s-1");
    CHECK_STR(st != NULL ? st->meeting.participant : "", "p-1");
    CHECK_STR(st != NULL ? st->meeting.peers[0] : "", "p-0");

    deliver("meet/dev-1/down", "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p-2\","
                               "\"pid\":\"dev-2\"}}");
    st = last_state();
    CHECK(st != NULL && st->meeting.n_peers == 2);
    deliver("meet/dev-1/down", "{\"type\":\"peer_left\",\"participant\":\"p-0\"}");
    st = last_state();
    CHECK(st != NULL && st->meeting.n_peers == 1);
    CHECK_STR(st != NULL ? st->meeting.peers[0] : "", "p-2");

    /* Offers are logged and dropped in a build without audio. */
    fp_clear(&fp);
    deliver("meet/dev-1/down", "{\"type\":\"offer\",\"from\":\"p-2\",\"sdp\":\"v=0\"}");
    CHECK_INT(fp.n_pubs, 0);

    /* A left for another session is stale; ours ends the session but keeps the room. */
    deliver("meet/dev-1/down", "{\"type\":\"left\",\"session\":\"s-0\"}");
    CHECK_INT(core.phase, FLEET_MEET_JOINED);
    deliver("meet/dev-1/down", "{\"type\":\"left\",\"session\":\"s-1\"}");
    CHECK_INT(core.phase, FLEET_MEET_IDLE);
    st = last_state();
    CHECK(st != NULL && st->has_meeting && st->meeting.session == NULL);
    check_publishes_valid();
}

static void test_meeting_stale_joined_and_error(void)
{
    join_standup();
    fp_clear(&fp);
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"other\",\"session\":\"s\","
                               "\"participant\":\"p\"}");
    CHECK_INT(core.phase, FLEET_MEET_JOINING);
    CHECK_INT(fp.n_pubs, 0);

    deliver("meet/dev-1/down", "{\"type\":\"error\",\"code\":\"room_full\",\"detail\":\"cap 3\"}");
    CHECK_INT(core.phase, FLEET_MEET_IDLE);
    fleet_state_t *st = last_state();
    CHECK(st != NULL && st->has_meeting);
    CHECK_STR(st != NULL ? st->error : "", "meeting room_full: cap 3");
    deliver("meet/dev-1/down", "{\"type\":\"bogus\"}"); /* refused, logged */
    deliver("dev/dev-1/desired", "{\"rev\":6,\"meeting\":null}");
    st = last_state();
    CHECK(st != NULL && st->error == NULL && !st->has_meeting);
    check_publishes_valid();
}

static void test_meeting_rejoins_after_reconnect(void)
{
    join_standup();
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\"}");
    fleet_core_on_disconnected(&core);
    CHECK_INT(core.phase, FLEET_MEET_IDLE);
    fp_clear(&fp);
    fleet_core_on_connected(&core);
    CHECK(strstr(last_payload("/meet/dev-1/up"), "\"type\":\"join\"") != NULL);
    CHECK_INT(core.phase, FLEET_MEET_JOINING);
    /* State on reconnect still says rev 5 and the room. */
    CHECK(last_state() != NULL && last_state()->rev == 5 && last_state()->has_meeting);
    check_publishes_valid();
}

/* A recording media layer, to see the core drive it. */
static struct {
    int starts, stops, sdps, removes;
    int offers_by_us;
    char last_peer[64];
    char last_removed[64];
} media_log;

static bool m_start(void *ctx, const char *room, const char *session, const char *participant,
                    bool mic, int volume)
{
    (void)ctx;
    (void)room;
    (void)session;
    (void)participant;
    (void)mic;
    (void)volume;
    media_log.starts++;
    return true;
}

static bool m_add_peer(void *ctx, const char *participant, bool we_offer)
{
    (void)ctx;
    snprintf(media_log.last_peer, sizeof media_log.last_peer, "%s", participant);
    media_log.offers_by_us += we_offer;
    return true;
}

static bool m_remote_sdp(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    (void)ctx;
    (void)from;
    (void)is_offer;
    (void)sdp;
    media_log.sdps++;
    return true;
}

/* Trickled candidates the media layer got, as "peer/mid/candidate;" ("-" = end of them). */
static char cand_log[512];
static bool refuse_sdp;

static bool m_remote_candidate(void *ctx, const char *from, const char *mid, const char *cand)
{
    (void)ctx;
    size_t n = strlen(cand_log);
    snprintf(cand_log + n, sizeof cand_log - n, "%s/%s/%.12s;", from, mid,
             cand != NULL ? cand : "-");
    return true;
}

static bool m_remote_sdp_maybe(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    (void)m_remote_sdp(ctx, from, is_offer, sdp);
    return !refuse_sdp;
}

static void m_stop(void *ctx)
{
    (void)ctx;
    media_log.stops++;
}

static void m_remove_peer(void *ctx, const char *participant)
{
    (void)ctx;
    snprintf(media_log.last_removed, sizeof media_log.last_removed, "%s", participant);
    media_log.removes++;
}

static size_t m_stats(void *ctx, fleet_peer_audio_t *out, size_t cap)
{
    (void)ctx;
    if (cap < 1) {
        return 0;
    }
    memset(out, 0, sizeof *out);
    out->peer = "mixer";
    out->packets_received = 250;
    out->has_level = true;
    out->level = 0.25;
    out->codec = "opus";
    return 1;
}

/* Mixed rooms (one peer: the mixer), MeetMedia, errors from a peer, MeetReject, and the
 * media layer's stats in telemetry. */
static void test_mixed_session_media_change_and_reject(void)
{
    static fleet_media_t m;
    memset(&m, 0, sizeof m);
    memset(&media_log, 0, sizeof media_log);
    m.start = m_start;
    m.add_peer = m_add_peer;
    m.remote_sdp = m_remote_sdp;
    m.remove_peer = m_remove_peer;
    m.stop = m_stop;
    m.stats = m_stats;
    join_standup();
    fp.port.media = &m;
    CHECK(!fleet_core_send_reject(&core, "p-0", NULL, "x")); /* not in a session */
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\",\"media\":\"mixed\",\"peers\":[{"
                               "\"participant\":\"mixer\",\"pid\":\"janus-1\"}]}");
    CHECK(core.mixed);
    CHECK_STR(media_log.last_peer, "mixer");
    CHECK_INT(media_log.offers_by_us, 1);
    CHECK(last_state() != NULL && last_state()->meeting.n_peers == 1);
    CHECK_STR(last_state()->meeting.peers[0], "mixer");
    /* The mixer died: the server moves the session to another one. */
    deliver("meet/dev-1/down", "{\"type\":\"media\",\"media\":\"mixed\",\"peers\":[{"
                               "\"participant\":\"mixer\",\"pid\":\"janus-2\"}]}");
    CHECK_INT(media_log.removes, 1);
    CHECK_STR(media_log.last_removed, "mixer");
    CHECK_INT(media_log.offers_by_us, 2);
    CHECK_INT(media_log.stops, 0); /* same session */
    CHECK_STR(core.session, "s-1");
    /* Back to a mesh of two. */
    deliver("meet/dev-1/down", "{\"type\":\"media\",\"media\":\"mesh\",\"peers\":[{"
                               "\"participant\":\"p-0\",\"pid\":\"dev-0\"}]}");
    CHECK(!core.mixed);
    CHECK_INT(core.n_peers, 1);
    CHECK_STR(core.peers[0], "p-0");
    /* An error from a peer closes that connection, not the session. */
    deliver("meet/dev-1/down", "{\"type\":\"error\",\"code\":\"negotiation_failed\","
                               "\"detail\":\"no codec\",\"from\":\"p-0\"}");
    CHECK_STR(media_log.last_removed, "p-0");
    CHECK(core.phase == FLEET_MEET_JOINED);
    CHECK(last_state() != NULL && last_state()->error != NULL &&
          strstr(last_state()->error, "from p-0") != NULL);
    /* Rejecting an SDP. */
    CHECK(fleet_core_send_reject(&core, "p-0", NULL, "no audio codec in common"));
    CHECK_STR(last_payload("/meet/dev-1/up"),
              "{\"type\":\"reject\",\"to\":\"p-0\",\"code\":\"negotiation_failed\","
              "\"detail\":\"no audio codec in common\"}");
    /* Telemetry carries the media layer's per-peer stats. */
    fp.unix_now = 1700000000.0;
    fp.now_ms += 60000;
    (void)fleet_core_tick(&core);
    const char *tele = last_payload("/tele");
    CHECK(tele != NULL && strstr(tele, "\"audio\":[{\"peer\":\"mixer\"") != NULL);
    CHECK(tele != NULL && strstr(tele, "\"codec\":\"opus\"") != NULL);
    /* MeetMedia outside a session changes nothing. */
    deliver("dev/dev-1/desired", "{\"rev\":6}");
    int offers = media_log.offers_by_us;
    deliver("meet/dev-1/down", "{\"type\":\"media\",\"media\":\"mixed\",\"peers\":[{"
                               "\"participant\":\"mixer\",\"pid\":\"janus-2\"}]}");
    CHECK_INT(media_log.offers_by_us, offers);
    fp.port.media = NULL;
    check_publishes_valid();
}

static void test_media_hooks(void)
{
    static fleet_media_t m;
    memset(&m, 0, sizeof m);
    memset(&media_log, 0, sizeof media_log);
    m.start = m_start;
    m.add_peer = m_add_peer;
    m.remote_sdp = m_remote_sdp;
    m.stop = m_stop;
    join_standup();
    fp.port.media = &m;
    CHECK(!fleet_core_send_sdp(&core, "p-0", true, "v=0")); /* not in a session yet */
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\",\"peers\":[{\"participant\":\"p-0\","
                               "\"pid\":\"dev-0\"}]}");
    CHECK_INT(media_log.starts, 1);
    CHECK_INT(media_log.offers_by_us, 1);
    CHECK_STR(media_log.last_peer, "p-0");
    deliver("meet/dev-1/down", "{\"type\":\"answer\",\"from\":\"p-0\",\"sdp\":\"v=0\"}");
    CHECK_INT(media_log.sdps, 1);
    CHECK(fleet_core_send_sdp(&core, "p-0", true, "v=0\r\ns=-\r\n"));
    CHECK_STR(last_payload("/meet/dev-1/up"),
              "{\"type\":\"offer\",\"to\":\"p-0\",\"sdp\":\"v=0\\r\\ns=-\\r\\n\"}");
    deliver("dev/dev-1/desired", "{\"rev\":6}");
    CHECK_INT(media_log.stops, 1);
    fp.port.media = NULL;
    check_publishes_valid();
}

#define CAND(from, value) \
    "{\"type\":\"candidate\",\"from\":\"" from "\",\"candidate\":" value ",\"mid\":\"0\"}"
#define LINE(n) "\"candidate:" #n " 1 udp 2122260223 10.1.0.2 5000" #n " typ host\""

/* Trickle ICE (protocol.md 8.6): a peer's candidates reach the media layer only after its
 * SDP, in the order they came; those that overtake it are held, dropped with a refused SDP
 * or a peer that leaves; strangers' are ignored; our own go out as MeetCandidate. */
static void test_trickled_candidates(void)
{
    static fleet_media_t m;
    memset(&m, 0, sizeof m);
    memset(&media_log, 0, sizeof media_log);
    cand_log[0] = '\0';
    refuse_sdp = false;
    m.start = m_start;
    m.add_peer = m_add_peer;
    m.remote_sdp = m_remote_sdp_maybe;
    m.remove_peer = m_remove_peer;
    m.stop = m_stop;
    m.remote_candidate = m_remote_candidate;
    join_standup();
    fp.port.media = &m;
    deliver("meet/dev-1/down", CAND("p-0", LINE(1))); /* not in a session yet */
    CHECK(!fleet_core_send_candidate(&core, "p-0", NULL, NULL));
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-1\","
                               "\"participant\":\"p-1\",\"peers\":[{\"participant\":\"p-0\","
                               "\"pid\":\"dev-0\"}]}");
    /* We offered to p-0: its candidates before its answer wait, strangers' are ignored. */
    deliver("meet/dev-1/down", CAND("p-0", LINE(1)));
    deliver("meet/dev-1/down", CAND("p-9", LINE(9)));
    deliver("meet/dev-1/down", CAND("p-0", LINE(2)));
    CHECK_STR(cand_log, "");
    deliver("meet/dev-1/down", "{\"type\":\"answer\",\"from\":\"p-0\",\"sdp\":\"v=0\"}");
    CHECK_INT(media_log.sdps, 1);
    CHECK_STR(cand_log, "p-0/0/candidate:1 ;p-0/0/candidate:2 ;");
    CHECK_INT(core.early_len, 0);
    /* After its SDP: at once, the end of them too. */
    deliver("meet/dev-1/down", CAND("p-0", "null"));
    CHECK_STR(cand_log, "p-0/0/candidate:1 ;p-0/0/candidate:2 ;p-0/0/-;");
    /* p-2 joins and will offer: its early candidates leave with it. */
    cand_log[0] = '\0';
    deliver("meet/dev-1/down",
            "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p-2\",\"pid\":\"dev-2\"}}");
    deliver("meet/dev-1/down", CAND("p-2", LINE(3)));
    deliver("meet/dev-1/down", "{\"type\":\"peer_left\",\"participant\":\"p-2\"}");
    CHECK_INT(core.early_len, 0);
    deliver("meet/dev-1/down",
            "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p-2\",\"pid\":\"dev-2\"}}");
    deliver("meet/dev-1/down", CAND("p-2", LINE(4)));
    deliver("meet/dev-1/down", CAND("p-0", LINE(5))); /* p-0's SDP is in: not held */
    deliver("meet/dev-1/down", "{\"type\":\"offer\",\"from\":\"p-2\",\"sdp\":\"v=0\"}");
    CHECK_STR(cand_log, "p-0/0/candidate:5 ;p-2/0/candidate:4 ;");
    /* A refused SDP takes the candidates that came before it along, and holds later ones. */
    cand_log[0] = '\0';
    refuse_sdp = true;
    deliver("meet/dev-1/down", CAND("p-2", LINE(6)));
    CHECK_STR(cand_log, "p-2/0/candidate:6 ;");
    deliver("meet/dev-1/down", "{\"type\":\"offer\",\"from\":\"p-2\",\"sdp\":\"v=0\"}");
    deliver("meet/dev-1/down", CAND("p-2", LINE(7)));
    CHECK_STR(cand_log, "p-2/0/candidate:6 ;");
    refuse_sdp = false;
    deliver("meet/dev-1/down", "{\"type\":\"offer\",\"from\":\"p-2\",\"sdp\":\"v=0\"}");
    CHECK_STR(cand_log, "p-2/0/candidate:6 ;p-2/0/candidate:7 ;");
    /* A peer that floods candidates before its SDP fills the bounded store, and no more. */
    deliver("meet/dev-1/down", "{\"type\":\"peer_left\",\"participant\":\"p-2\"}");
    deliver("meet/dev-1/down",
            "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p-2\",\"pid\":\"dev-2\"}}");
    for (int i = 0; i < 100; i++) {
        deliver("meet/dev-1/down", CAND("p-2", LINE(8)));
    }
    CHECK(core.early_len > sizeof core.early - 64 && core.early_len <= sizeof core.early);
    cand_log[0] = '\0';
    deliver("meet/dev-1/down", "{\"type\":\"offer\",\"from\":\"p-2\",\"sdp\":\"v=0\"}");
    CHECK(strlen(cand_log) > 0 && core.early_len == 0);
    /* A malformed one is refused by the parser and changes nothing. */
    cand_log[0] = '\0';
    deliver("meet/dev-1/down", "{\"type\":\"candidate\",\"from\":\"p-0\",\"candidate\":\"\"}");
    deliver("meet/dev-1/down", "{\"type\":\"candidate\",\"from\":\"p-0\",\"candidate\":5}");
    CHECK_STR(cand_log, "");
    /* Our own, trickled. */
    CHECK(fleet_core_send_candidate(&core, "p-0", NULL, "candidate:1 1 udp 1 10.0.0.1 9 typ host"));
    CHECK_STR(last_payload("/meet/dev-1/up"),
              "{\"type\":\"candidate\",\"to\":\"p-0\",\"candidate\":\"candidate:1 1 udp 1 "
              "10.0.0.1 9 typ host\",\"mid\":\"0\"}");
    CHECK(fleet_core_send_candidate(&core, "p-0", "0", NULL));
    CHECK_STR(last_payload("/meet/dev-1/up"),
              "{\"type\":\"candidate\",\"to\":\"p-0\",\"candidate\":null,\"mid\":\"0\"}");
    /* Leaving the session forgets what is held. */
    deliver("meet/dev-1/down",
            "{\"type\":\"peer_joined\",\"peer\":{\"participant\":\"p-3\",\"pid\":\"dev-3\"}}");
    deliver("meet/dev-1/down", CAND("p-3", LINE(9)));
    CHECK(core.early_len > 0);
    deliver("dev/dev-1/desired", "{\"rev\":6}");
    CHECK_INT(core.early_len, 0);
    /* A media layer without trickle support: candidates are only logged. */
    m.remote_candidate = NULL;
    join_standup();
    fp.port.media = &m;
    deliver("meet/dev-1/down", "{\"type\":\"joined\",\"room\":\"standup\",\"session\":\"s-2\","
                               "\"participant\":\"p-1\",\"peers\":[{\"participant\":\"p-0\","
                               "\"pid\":\"dev-0\"}]}");
    deliver("meet/dev-1/down", CAND("p-0", LINE(1)));
    CHECK_INT(core.early_len, 0);
    fp.port.media = NULL;
    check_publishes_valid();
}

/* ---- telemetry, shutdown ----------------------------------------------------------------- */

static void test_telemetry(void)
{
    join_standup();
    fp_clear(&fp);
    uint32_t wait = fleet_core_tick(&core);
    CHECK(wait > 0 && wait <= 1000);
    CHECK_INT(fp_count(&fp, "/tele"), 0);
    fp.now_ms += 5000;
    (void)fleet_core_tick(&core);
    const fp_pub_t *t = fp_last(&fp, "/dev/dev-1/tele");
    CHECK(t != NULL && t->qos == 0 && !t->retain);
    CHECK_STR(t != NULL ? t->payload : "",
              "{\"ts\":1700000000,\"wifi\":{\"rssi\":-51,\"reconnects\":2},\"sys\":{\"heap_free\":"
              "120000,\"heap_min\":90000,\"uptime_s\":6,\"mqtt_reconnects\":1},\"meeting\":{"
              "\"room\":\"standup\"},\"audio\":[]}");
    (void)fleet_core_tick(&core);
    CHECK_INT(fp_count(&fp, "/tele"), 1); /* not again before the interval */
    fp.now_ms += 5000;
    fp.clock_set = false;
    (void)fleet_core_tick(&core);
    CHECK_INT(fp_count(&fp, "/tele"), 1); /* ts is required: no clock, no telemetry */
    fleet_core_on_disconnected(&core);
    fp.clock_set = true;
    fp.now_ms += 5000;
    (void)fleet_core_tick(&core);
    CHECK_INT(fp_count(&fp, "/tele"), 1);
    check_publishes_valid();
}

static void test_shutdown_publishes_offline(void)
{
    join_standup();
    fp_clear(&fp);
    fleet_core_shutdown(&core);
    const fp_pub_t *s = fp_last(&fp, "/dev/dev-1/status");
    CHECK(s != NULL && s->retain && s->qos == 1);
    CHECK_STR(s != NULL ? s->payload : "", "{\"online\":false}");
    CHECK_STR(fp.pubs[0].payload, "{\"type\":\"leave\"}"); /* leave goes first */
    check_publishes_valid();
}

static void test_publish_refused_is_survived(void)
{
    setup();
    fp.refuse_publish = true;
    deliver("dev/dev-1/desired", "{\"rev\":5,\"meeting\":{\"room\":\"r\"}}");
    deliver("dev/dev-1/cmd", "{\"id\":\"c1\",\"op\":\"ping\"}");
    CHECK_INT(core.applied_rev, 5);
    fp.refuse_publish = false;
}

/* ---- announcements, ring, dnd, the button (protocol.md 14) -------------------------------- */

static struct {
    uint32_t queued, played, frames, flushes, rings_on, rings_off;
    size_t last_len;
    fleet_ann_codec_t codec;
    uint32_t room; /* frames the fake buffer takes */
} pl;

static bool pl_frame(void *ctx, fleet_ann_codec_t codec, const uint8_t *data, size_t len)
{
    (void)ctx;
    (void)data;
    if (pl.queued >= pl.room) {
        return false;
    }
    pl.queued++;
    pl.frames++;
    pl.codec = codec;
    pl.last_len = len;
    return true;
}

static void pl_flush(void *ctx)
{
    (void)ctx;
    pl.queued = 0;
    pl.played = 0;
    pl.flushes++;
}

static void pl_progress(void *ctx, uint32_t *queued, uint32_t *played)
{
    (void)ctx;
    *queued = pl.queued;
    *played = pl.played;
}

static void pl_ring(void *ctx, bool on)
{
    (void)ctx;
    if (on) {
        pl.rings_on++;
    } else {
        pl.rings_off++;
    }
}

static fleet_player_t fake_player = {NULL, pl_frame, pl_flush, pl_progress, pl_ring};

static void setup_player(void)
{
    setup();
    memset(&pl, 0, sizeof pl);
    pl.room = 100;
    fp.port.player = &fake_player;
}

/* Plays everything queued (the fake's audio task). */
static void pl_play_all(void)
{
    pl.played += pl.queued;
    pl.queued = 0;
}

/* "AAAA" is 3 zero bytes: a tiny but valid Opus payload as far as the core is concerned. */
#define OPUS_FRAMES3 "[\"AAAA\",\"AAAA\",\"AAAA\"]"

static void test_announce_plays_and_acks(void)
{
    setup_player();
    fp.now_ms = 1000;
    deliver("dev/dev-1/cmd", "{\"id\":\"a1\",\"op\":\"announce\",\"args\":{\"ann\":\"ann-1\","
                             "\"priority\":\"normal\",\"duration_ms\":1200}}");
    CHECK_INT(fp_count(&fp, "/ack"), 0); /* accepted only when it starts playing */
    /* redelivered before any ack: still the same announcement, no answer */
    deliver("dev/dev-1/cmd", "{\"id\":\"a1\",\"op\":\"announce\",\"args\":{\"ann\":\"ann-1\"}}");
    CHECK_INT(fp_count(&fp, "/ack"), 0);
    CHECK_INT(core.ann.phase, FLEET_ANN_WAITING);
    deliver("dev/dev-1/ann",
            "{\"ann\":\"ann-1\",\"seq\":0,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3
            ",\"priority\":\"normal\"}");
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_ACCEPTED && !a->done && a->ok);
    CHECK_INT(pl.frames, 3);
    CHECK_INT(pl.codec, FLEET_ANN_OPUS);
    CHECK_INT(pl.last_len, 3);
    CHECK_INT(fleet_core_tick(&core), 20); /* it watches the player every frame */
    /* a redelivered chunk is not played twice; another announcement's chunk is ignored */
    deliver("dev/dev-1/ann",
            "{\"ann\":\"ann-1\",\"seq\":0,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3 "}");
    deliver("dev/dev-1/ann",
            "{\"ann\":\"other\",\"seq\":1,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3 "}");
    CHECK_INT(pl.frames, 3);
    deliver("dev/dev-1/ann",
            "{\"ann\":\"ann-1\",\"seq\":1,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3
            ",\"last\":true}");
    CHECK_INT(pl.frames, 6);
    pl.played = 4;
    pl.queued = 2;
    (void)fleet_core_tick(&core);
    CHECK_INT(fp_count(&fp, "/ack"), 1); /* still playing */
    pl_play_all();
    (void)fleet_core_tick(&core);
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_OK && a->done && a->ok);
    CHECK_STR(last_payload("/ack"), "{\"id\":\"a1\",\"ok\":true,\"code\":\"ok\",\"detail\":\"\","
                                    "\"done\":true,\"result\":{\"played_ms\":120}}");
    CHECK_INT(core.ann.phase, FLEET_ANN_IDLE);
    /* the same command again: the final ack again, nothing plays */
    deliver("dev/dev-1/cmd", "{\"id\":\"a1\",\"op\":\"announce\",\"args\":{\"ann\":\"ann-1\"}}");
    CHECK_INT(core.ann.phase, FLEET_ANN_IDLE);
    CHECK(strstr(last_payload("/ack"), "played_ms") != NULL);
    check_publishes_valid();
    fp.port.player = NULL;
}

static void test_announce_failures(void)
{
    setup_player();
    /* bad args */
    deliver("dev/dev-1/cmd", "{\"id\":\"b1\",\"op\":\"announce\",\"args\":{}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    deliver("dev/dev-1/cmd", "{\"id\":\"b2\",\"op\":\"announce\",\"args\":{\"ann\":\"a b\"}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    deliver("dev/dev-1/cmd", "{\"id\":\"b3\",\"op\":\"announce\",\"args\":{\"ann\":\"x\","
                             "\"priority\":\"loud\"}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    deliver("dev/dev-1/cmd", "{\"id\":\"b4\",\"op\":\"announce\",\"args\":{\"ann\":\"x\","
                             "\"duration_ms\":0}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    CHECK_INT(core.ann.phase, FLEET_ANN_IDLE);

    /* no chunk within 2 s: failed "no audio" */
    fp.now_ms = 1000;
    deliver("dev/dev-1/cmd", "{\"id\":\"n1\",\"op\":\"announce\",\"args\":{\"ann\":\"quiet\"}}");
    fp.now_ms = 2900;
    (void)fleet_core_tick(&core);
    CHECK_INT(core.ann.phase, FLEET_ANN_WAITING);
    fp.now_ms = 3000;
    (void)fleet_core_tick(&core);
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_FAILED && a->done);
    CHECK_STR(a != NULL ? a->detail : "", "no audio");

    /* an urgent one interrupts a normal one; a normal one does not interrupt */
    deliver("dev/dev-1/cmd", "{\"id\":\"n2\",\"op\":\"announce\",\"args\":{\"ann\":\"first\"}}");
    deliver("dev/dev-1/ann", "{\"ann\":\"first\",\"seq\":0,\"codec\":\"pcmu\",\"frames\":[\""
                             "/////////////////////////////////////////////////////////////////////"
                             "///////////////////////////////"
                             "/////////////////////////////////////////////////////////////////////"
                             "///////////////////////////////"
                             "/////////////w==\"]}");
    CHECK_INT(pl.codec, FLEET_ANN_PCMU);
    CHECK_INT(pl.last_len, 160);
    deliver("dev/dev-1/cmd", "{\"id\":\"n3\",\"op\":\"announce\",\"args\":{\"ann\":\"second\"}}");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_FAILED);
    CHECK_STR(a != NULL ? a->detail : "", "busy: first is playing");
    CHECK_STR(core.ann.ann, "first");
    uint32_t flushes = pl.flushes;
    deliver("dev/dev-1/cmd", "{\"id\":\"u1\",\"op\":\"announce\",\"args\":{\"ann\":\"fire\","
                             "\"priority\":\"urgent\"}}");
    CHECK(pl.flushes > flushes);
    CHECK_INT(pl.queued, 0);
    CHECK_STR(core.ann.ann, "fire");
    bool interrupted = false;
    for (size_t i = 0; i < fp.n_pubs; i++) {
        interrupted = interrupted || (strstr(fp.pubs[i].payload, "\"id\":\"n2\"") != NULL &&
                                      strstr(fp.pubs[i].payload, "interrupted by fire") != NULL);
    }
    CHECK(interrupted);

    /* chunks stop before the last one: failed once the queue ran dry */
    fp.now_ms = 10000;
    deliver("dev/dev-1/ann",
            "{\"ann\":\"fire\",\"seq\":0,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3
            ",\"priority\":\"urgent\"}");
    pl_play_all();
    fp.now_ms = 12000;
    (void)fleet_core_tick(&core);
    CHECK_INT(core.ann.phase, FLEET_ANN_PLAYING);
    fp.now_ms = 13000;
    (void)fleet_core_tick(&core);
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_FAILED);
    CHECK_STR(a != NULL ? a->detail : "", "audio stopped after 60 ms");

    /* a full buffer drops frames, the rest plays */
    pl.room = 2;
    deliver("dev/dev-1/cmd", "{\"id\":\"f1\",\"op\":\"announce\",\"args\":{\"ann\":\"full\"}}");
    deliver("dev/dev-1/ann",
            "{\"ann\":\"full\",\"seq\":0,\"codec\":\"opus\",\"frames\":" OPUS_FRAMES3
            ",\"last\":true}");
    CHECK_INT(core.ann.dropped, 1);
    pl_play_all();
    (void)fleet_core_tick(&core);
    CHECK(strstr(last_payload("/ack"), "{\"played_ms\":40}") != NULL);

    /* no speaker: failed at once */
    fp.port.player = NULL;
    deliver("dev/dev-1/cmd", "{\"id\":\"s1\",\"op\":\"announce\",\"args\":{\"ann\":\"mute\"}}");
    a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_FAILED);
    CHECK_STR(a != NULL ? a->detail : "", "no speaker");
    check_publishes_valid();
}

static void test_bad_chunks_refused(void)
{
    static const char *const bad[] = {
        "",
        "not json",
        "[]",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\"}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[]}",
        "{\"ann\":\"a\",\"seq\":-1,\"codec\":\"opus\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a\",\"seq\":\"0\",\"codec\":\"opus\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a\",\"seq\":0.5,\"codec\":\"opus\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a b\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"mp3\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAA\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"A=AA\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AA!A\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[5]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"pcmu\",\"frames\":[\"AAAA\"]}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAAA\"],\"last\":1}",
        "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAAA\"],\"priority\":\"high\"}",
    };
    setup_player();
    deliver("dev/dev-1/cmd", "{\"id\":\"a1\",\"op\":\"announce\",\"args\":{\"ann\":\"a\"}}");
    int logs = fp.logs;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        deliver("dev/dev-1/ann", bad[i]);
        if (pl.frames != 0) {
            fprintf(stderr, "  chunk taken: %s\n", bad[i]);
            CHECK(!"bad chunk taken");
        }
    }
    CHECK(fp.logs >= logs + (int)(sizeof bad / sizeof bad[0])); /* each refusal is logged */
    CHECK_INT(core.ann.phase, FLEET_ANN_WAITING);
    CHECK_INT(fp_count(&fp, "/ack"), 0);
    /* 51 frames: one too many */
    char big[1024];
    size_t n = (size_t)snprintf(big, sizeof big,
                                "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[");
    for (int i = 0; i < 51; i++) {
        n += (size_t)snprintf(big + n, sizeof big - n, "%s\"AAAA\"", i > 0 ? "," : "");
    }
    (void)snprintf(big + n, sizeof big - n, "]}");
    deliver("dev/dev-1/ann", big);
    CHECK_INT(pl.frames, 0);
    /* the device still works */
    deliver("dev/dev-1/ann", "{\"ann\":\"a\",\"seq\":0,\"codec\":\"opus\",\"frames\":[\"AAAA\"]}");
    CHECK_INT(pl.frames, 1);
    fp.port.player = NULL;
}

static void test_ring(void)
{
    setup_player();
    fp.now_ms = 1000;
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"ring\",\"args\":{\"call\":\"call-x\","
                             "\"seconds\":10}}");
    fleet_ack_t *a = last_ack();
    CHECK(a != NULL && a->code == FLEET_ACK_OK && a->done);
    CHECK(core.ringing);
    CHECK_INT(pl.rings_on, 1);
    CHECK(fleet_core_tick(&core) <= 1000);
    fp.now_ms = 10999;
    (void)fleet_core_tick(&core);
    CHECK(core.ringing);
    fp.now_ms = 11000;
    (void)fleet_core_tick(&core);
    CHECK(!core.ringing);
    CHECK_INT(pl.rings_off, 1);
    /* 0 stops; bad args */
    deliver("dev/dev-1/cmd", "{\"id\":\"r2\",\"op\":\"ring\",\"args\":{\"seconds\":30}}");
    CHECK(core.ringing);
    deliver("dev/dev-1/cmd", "{\"id\":\"r3\",\"op\":\"ring\",\"args\":{\"seconds\":0}}");
    CHECK(!core.ringing);
    deliver("dev/dev-1/cmd", "{\"id\":\"r4\",\"op\":\"ring\",\"args\":{\"seconds\":121}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    deliver("dev/dev-1/cmd", "{\"id\":\"r5\",\"op\":\"ring\",\"args\":{}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    deliver("dev/dev-1/cmd", "{\"id\":\"r6\",\"op\":\"ring\",\"args\":{\"call\":5,\"seconds\":3}}");
    CHECK(last_ack() != NULL && last_ack()->code == FLEET_ACK_BAD_ARGS);
    CHECK(!core.ringing);
    /* the desired meeting changes: the ring stops; a new rev with the same room does not */
    deliver("dev/dev-1/cmd", "{\"id\":\"r7\",\"op\":\"ring\",\"args\":{\"seconds\":30}}");
    deliver("grp/all/desired", "{\"rev\":3}");
    CHECK(core.ringing);
    deliver("grp/all/desired", "{\"rev\":4,\"meeting\":{\"room\":\"call-x\"}}");
    CHECK(!core.ringing);
    check_publishes_valid();
    fp.port.player = NULL;
}

static void test_dnd_from_own_doc_only(void)
{
    setup();
    deliver("dev/dev-1/desired", "{\"rev\":2,\"dnd\":true}");
    fleet_state_t *st = last_state();
    CHECK(core.dnd);
    CHECK(strstr(last_payload("/dev/dev-1/state"), "\"dnd\":true") != NULL);
    (void)st;
    /* a group doc's higher rev wins the meeting, never dnd */
    deliver("grp/kitchen/desired", "{\"rev\":5,\"meeting\":{\"room\":\"r\"},\"dnd\":false}");
    CHECK(core.dnd);
    CHECK_INT(core.applied_rev, 5);
    CHECK(strstr(last_payload("/dev/dev-1/state"), "\"dnd\":true") != NULL);
    /* an own doc with a lower rev still sets dnd; None leaves it */
    deliver("dev/dev-1/desired", "{\"rev\":3,\"dnd\":false}");
    CHECK(!core.dnd);
    CHECK(strstr(last_payload("/dev/dev-1/state"), "dnd") == NULL); /* false: left out */
    CHECK_INT(core.applied_rev, 5);
    deliver("dev/dev-1/desired", "{\"rev\":6,\"dnd\":true}");
    deliver("dev/dev-1/desired", "{\"rev\":7,\"dnd\":null}");
    CHECK(core.dnd);
    deliver("dev/dev-1/desired", "{\"rev\":8,\"dnd\":\"yes\"}");
    CHECK(core.dnd);
    CHECK_INT(core.applied_rev, 7);
    check_publishes_valid();
}

static void test_button(void)
{
    static const char *const groups[] = {"kitchen"};
    fleet_config_t cfg;
    fp_free(&fp);
    fp_init(&fp);
    memset(&cfg, 0, sizeof cfg);
    cfg.device_id = "dev-1";
    cfg.groups = groups;
    cfg.n_groups = 1;
    cfg.call_to = "dev-2";
    CHECK(fleet_core_init(&core, &cfg, &fp.port));
    fleet_core_button(&core, FLEET_BUTTON_SHORT); /* not connected: nothing */
    CHECK_INT(fp.n_pubs, 0);
    fleet_core_on_connected(&core);
    fp_clear(&fp);
    fp.now_ms = 5000;
    fleet_core_button(&core, FLEET_BUTTON_SHORT);
    const fp_pub_t *p = fp_last(&fp, "/call");
    CHECK(p != NULL && p->qos == 1 && !p->retain);
    CHECK_STR(p != NULL ? p->topic : "", "fleet/v1/api/by/dev-1/call");
    CHECK_STR(p != NULL ? p->payload : "",
              "{\"id\":\"btn-5000-1\",\"device\":\"dev-1\",\"to\":\"dev-2\"}");
    /* ringing: answer (and the ring stops) */
    deliver("dev/dev-1/cmd", "{\"id\":\"r1\",\"op\":\"ring\",\"args\":{\"seconds\":30}}");
    fleet_core_button(&core, FLEET_BUTTON_SHORT);
    p = fp_last(&fp, "/answer");
    CHECK_STR(p != NULL ? p->topic : "", "fleet/v1/api/by/dev-1/answer");
    CHECK_STR(p != NULL ? p->payload : "", "{\"id\":\"btn-5000-2\",\"device\":\"dev-1\"}");
    CHECK(!core.ringing);
    /* in a call room: hang up */
    deliver("dev/dev-1/desired", "{\"rev\":9,\"meeting\":{\"room\":\"call-ab12\"}}");
    fleet_core_button(&core, FLEET_BUTTON_SHORT);
    p = fp_last(&fp, "/hangup");
    CHECK_STR(p != NULL ? p->topic : "", "fleet/v1/api/by/dev-1/hangup");
    CHECK_STR(p != NULL ? p->payload : "", "{\"id\":\"btn-5000-3\",\"device\":\"dev-1\"}");
    check_publishes_valid();

    /* a group target; none; a bad one is ignored at init */
    static const char *const targets[] = {"group:kitchen", NULL, "Bad Target"};
    for (size_t i = 0; i < 3; i++) {
        fp_free(&fp);
        fp_init(&fp);
        cfg.call_to = targets[i];
        CHECK(fleet_core_init(&core, &cfg, &fp.port));
        fleet_core_on_connected(&core);
        fp_clear(&fp);
        fleet_core_button(&core, FLEET_BUTTON_SHORT);
        p = fp_last(&fp, "/call");
        if (i == 0) {
            CHECK(p != NULL && strstr(p->payload, "\"group\":\"kitchen\"") != NULL);
        } else {
            CHECK(p == NULL);
        }
    }
}

void suite_core(void)
{
    RUN(test_init_refuses_bad_config);
    RUN(test_connect_birth_subscriptions_state);
    RUN(test_birth_without_clock_has_no_ts);
    RUN(test_desired_applies_and_reports);
    RUN(test_highest_rev_wins_never_backwards);
    RUN(test_equal_rev_prefers_device_then_group_then_all);
    RUN(test_room_switch_leaves_then_joins);
    RUN(test_empty_payload_clears_source);
    RUN(test_malformed_desired_refused);
    RUN(test_foreign_and_unknown_topics_ignored);
    RUN(test_until_past_means_no_meeting);
    RUN(test_until_waits_for_clock);
    RUN(test_cmd_ping);
    RUN(test_cmd_identify);
    RUN(test_cmd_reboot);
    RUN(test_reboot_final_ack_after_restart);
    RUN(test_cmd_ota);
    RUN(test_cmd_ota_by_the_port);
    RUN(test_ota_final_ack_after_restart);
    RUN(test_cmd_set_groups);
    RUN(test_cmd_unknown_bad_request_expired);
    RUN(test_cmd_idempotent);
    RUN(test_cmd_memo_arena_evicts_big_acks);
    RUN(test_meeting_joined_and_peers);
    RUN(test_meeting_stale_joined_and_error);
    RUN(test_meeting_rejoins_after_reconnect);
    RUN(test_media_hooks);
    RUN(test_mixed_session_media_change_and_reject);
    RUN(test_trickled_candidates);
    RUN(test_telemetry);
    RUN(test_shutdown_publishes_offline);
    RUN(test_publish_refused_is_survived);
    RUN(test_announce_plays_and_acks);
    RUN(test_announce_failures);
    RUN(test_bad_chunks_refused);
    RUN(test_ring);
    RUN(test_dnd_from_own_doc_only);
    RUN(test_button);
    fp_free(&fp);
    fleet_json_free(&state_doc);
    fleet_json_free(&ack_doc);
}
