/*
 * test_host_url.c - the host device's --broker URL parser.
 */
#include <string.h>

#include "harness.h"
#include "host_url.h"

static void test_url_good(void)
{
    host_url_t u;
    char why[160];
    CHECK(host_url_parse("mqtt://dev-1:s3cret@127.0.0.1:18830", &u, why, sizeof why));
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_INT(u.port, 18830);
    CHECK(u.has_user && u.has_pass);
    CHECK_STR(u.user, "dev-1");
    CHECK_STR(u.pass, "s3cret");
    CHECK(host_url_parse("mqtt://localhost", &u, why, sizeof why));
    CHECK(!u.has_user && u.port == 1883);
    CHECK(host_url_parse("tcp://u@h:1/", &u, why, sizeof why));
    CHECK(u.has_user && !u.has_pass && u.port == 1);
    CHECK(host_url_parse("mqtt://u:p%40ss%3Aw%2Fd@[::1]:1884", &u, why, sizeof why));
    CHECK_STR(u.pass, "p@ss:w/d");
    CHECK_STR(u.host, "::1");
    CHECK_INT(u.port, 1884);
    CHECK(host_url_parse("mqtt://u:a@b@host", &u, why, sizeof why)); /* raw '@' in a password */
    CHECK_STR(u.pass, "a@b");
    CHECK_STR(u.host, "host");
    CHECK(host_url_parse("mqtt://u:@h", &u, why, sizeof why));
    CHECK(u.has_pass && u.pass[0] == '\0');
}

static void test_url_bad(void)
{
    host_url_t u;
    char why[160];
    const char *bad[] = {
        "",
        "localhost:1883",
        "http://h",
        "mqtts://h:8883",
        "mqtt://",
        "mqtt://h:0",
        "mqtt://h:65536",
        "mqtt://h:12ab",
        "mqtt://h:",
        "mqtt://h/path",
        "mqtt://:p@h",
        "mqtt://u:%zz@h",
        "mqtt://u:%4@h",
        "mqtt://u:%00@h",
        "mqtt://[::1",
        "mqtt://[::1]x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(!host_url_parse(bad[i], &u, why, sizeof why));
    }
    CHECK(!host_url_parse("mqtts://h", &u, why, sizeof why));
    CHECK(strstr(why, "TLS") != NULL);
}

void suite_host_url(void)
{
    RUN(test_url_good);
    RUN(test_url_bad);
}
