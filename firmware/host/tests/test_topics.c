/*
 * test_topics.c - ids, prefixes, topic building and parsing (mirror of topics.py).
 */
#include <stdio.h>
#include <string.h>

#include "fleet_topics.h"
#include "harness.h"

static void test_ids(void)
{
    CHECK(fleet_id_valid("a"));
    CHECK(fleet_id_valid("dev-1"));
    CHECK(fleet_id_valid("0abc-"));
    char max[65];
    memset(max, 'a', 64);
    max[64] = '\0';
    CHECK(fleet_id_valid(max));
    char over[66];
    memset(over, 'a', 65);
    over[65] = '\0';
    CHECK(!fleet_id_valid(over));
    CHECK(!fleet_id_valid(""));
    CHECK(!fleet_id_valid("-a"));
    CHECK(!fleet_id_valid("Dev"));
    CHECK(!fleet_id_valid("a_b"));
    CHECK(!fleet_id_valid("a.b"));
    CHECK(!fleet_id_valid("a/b"));
    CHECK(!fleet_id_valid("a+"));
    CHECK(!fleet_id_valid("dev-1\n")); /* topics.py's `$` would take this one; pydantic not */
    CHECK(!fleet_id_valid(NULL));
    CHECK(fleet_room_valid("standup"));
    CHECK(fleet_room_valid("team.a_b-1"));
    CHECK(!fleet_room_valid(".x"));
    CHECK(!fleet_room_valid("Room"));
    CHECK(!fleet_room_valid(""));
}

static void test_prefix(void)
{
    char out[FLEET_PREFIX_MAX + 1];
    CHECK(fleet_prefix_normalize("fleet/v1", out, sizeof out));
    CHECK_STR(out, "fleet/v1");
    CHECK(fleet_prefix_normalize("//site-A/fleet.x_1/", out, sizeof out));
    CHECK_STR(out, "site-A/fleet.x_1");
    CHECK(!fleet_prefix_normalize("", out, sizeof out));
    CHECK(!fleet_prefix_normalize("/", out, sizeof out));
    CHECK(!fleet_prefix_normalize("a//b", out, sizeof out));
    CHECK(!fleet_prefix_normalize("a/+/b", out, sizeof out));
    CHECK(!fleet_prefix_normalize("a/#", out, sizeof out));
    CHECK(!fleet_prefix_normalize("$SYS", out, sizeof out));
    CHECK(!fleet_prefix_normalize("a b", out, sizeof out));
}

static void test_build(void)
{
    char t[FLEET_TOPIC_MAX];
    CHECK(fleet_topic_device(t, sizeof t, "fleet/v1", FLEET_TOPIC_STATUS, "dev-1"));
    CHECK_STR(t, "fleet/v1/dev/dev-1/status");
    CHECK(fleet_topic_device(t, sizeof t, "fleet/v1", FLEET_TOPIC_DESIRED, "dev-1"));
    CHECK_STR(t, "fleet/v1/dev/dev-1/desired");
    CHECK(fleet_topic_device(t, sizeof t, "fleet/v1", FLEET_TOPIC_TELE, "dev-1"));
    CHECK_STR(t, "fleet/v1/dev/dev-1/tele");
    CHECK(!fleet_topic_device(t, sizeof t, "fleet/v1", FLEET_TOPIC_GROUP_DESIRED, "dev-1"));
    CHECK(!fleet_topic_device(t, sizeof t, "fleet/v1", FLEET_TOPIC_CMD, "Dev"));
    CHECK(fleet_topic_group_desired(t, sizeof t, "x", "all"));
    CHECK_STR(t, "x/grp/all/desired");
    CHECK(fleet_topic_meet(t, sizeof t, "fleet/v1", "dev-1", true));
    CHECK_STR(t, "fleet/v1/meet/dev-1/up");
    CHECK(fleet_topic_meet(t, sizeof t, "fleet/v1", "dev-1", false));
    CHECK_STR(t, "fleet/v1/meet/dev-1/down");
    char tiny[10];
    CHECK(!fleet_topic_meet(tiny, sizeof tiny, "fleet/v1", "dev-1", false));
}

static bool parse(const char *prefix, const char *topic, fleet_topic_t *out)
{
    return fleet_topic_parse(prefix, topic, strlen(topic), out);
}

static void test_parse(void)
{
    fleet_topic_t t;
    static const struct {
        const char *topic;
        fleet_topic_kind_t kind;
        const char *name;
    } good[] = {
        {"fleet/v1/dev/d1/status", FLEET_TOPIC_STATUS, "d1"},
        {"fleet/v1/dev/d1/desired", FLEET_TOPIC_DESIRED, "d1"},
        {"fleet/v1/dev/d1/state", FLEET_TOPIC_STATE, "d1"},
        {"fleet/v1/dev/d1/cmd", FLEET_TOPIC_CMD, "d1"},
        {"fleet/v1/dev/d1/ack", FLEET_TOPIC_ACK, "d1"},
        {"fleet/v1/dev/d1/tele", FLEET_TOPIC_TELE, "d1"},
        {"fleet/v1/grp/all/desired", FLEET_TOPIC_GROUP_DESIRED, "all"},
        {"fleet/v1/meet/p-9/up", FLEET_TOPIC_MEET_UP, "p-9"},
        {"fleet/v1/meet/p-9/down", FLEET_TOPIC_MEET_DOWN, "p-9"},
        {"fleet/v1/api/join-all", FLEET_TOPIC_API, "join-all"},
        {"fleet/v1/api/result", FLEET_TOPIC_API_RESULT, "result"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        memset(&t, 0, sizeof t);
        CHECK(parse("fleet/v1", good[i].topic, &t));
        CHECK_INT(t.kind, good[i].kind);
        CHECK_STR(t.name, good[i].name);
    }
    const char *bad[] = {
        "fleet/v1/dev/d1/status/x",
        "fleet/v1/dev/d1",
        "fleet/v1/dev/D1/status",
        "fleet/v1/dev//status",
        "fleet/v1/dev/d1/other",
        "fleet/v2/dev/d1/status",
        "fleet/v1x/dev/d1/status",
        "fleet/v1/grp/g/state",
        "fleet/v1/meet/p/sideways",
        "fleet/v1/api/Join",
        "fleet/v1/api/",
        "fleet/v1/api/a/b",
        "fleet/v1/dev/d1/status\n",
        "fleet/v1",
        "fleet/v1/",
        "other/dev/d1/status",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse("fleet/v1", bad[i], &t)) {
            fprintf(stderr, "  parsed: %s\n", bad[i]);
            CHECK(!"foreign topic parsed");
        }
    }
    /* A multi-level prefix, and a topic that is not NUL-terminated at its length. */
    CHECK(parse("site/a/fleet", "site/a/fleet/dev/x/cmd", &t));
    CHECK_INT(t.kind, FLEET_TOPIC_CMD);
    CHECK(fleet_topic_parse("fleet/v1", "fleet/v1/dev/d1/ackXYZ", 19, &t));
    CHECK_INT(t.kind, FLEET_TOPIC_ACK);
    CHECK_STR(fleet_topic_kind_name(FLEET_TOPIC_MEET_DOWN), "meet_down");
}

static void test_announce_and_api_by(void)
{
    char buf[FLEET_TOPIC_MAX + FLEET_API_OP_MAX];
    fleet_topic_t t;
    CHECK(fleet_topic_device(buf, sizeof buf, "fleet/v1", FLEET_TOPIC_ANNOUNCE, "dev-1"));
    CHECK_STR(buf, "fleet/v1/dev/dev-1/ann");
    CHECK(fleet_topic_parse("fleet/v1", buf, strlen(buf), &t));
    CHECK_INT(t.kind, FLEET_TOPIC_ANNOUNCE);
    CHECK_STR(t.name, "dev-1");
    CHECK_STR(fleet_topic_kind_name(FLEET_TOPIC_ANNOUNCE), "announce");
    CHECK(!fleet_topic_device(buf, sizeof buf, "fleet/v1", FLEET_TOPIC_ANNOUNCE, "Dev"));
    CHECK(fleet_topic_api_by(buf, sizeof buf, "fleet/v1", "dev-1", "call"));
    CHECK_STR(buf, "fleet/v1/api/by/dev-1/call");
    CHECK(!fleet_topic_api_by(buf, sizeof buf, "fleet/v1", "dev-1", "Call"));
    CHECK(!fleet_topic_api_by(buf, sizeof buf, "fleet/v1", "dev/1", "call"));
    CHECK(!fleet_topic_api_by(buf, 10, "fleet/v1", "dev-1", "call"));
}

void suite_topics(void)
{
    RUN(test_ids);
    RUN(test_prefix);
    RUN(test_build);
    RUN(test_parse);
    RUN(test_announce_and_api_by);
}
