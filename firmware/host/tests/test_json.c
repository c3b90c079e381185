/*
 * test_json.c - the strict validator, integer literals, member lookup, UTF-8, the writer.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fleet_json.h"
#include "harness.h"

static bool valid(const char *s)
{
    return fleet_json_validate(s, strlen(s), NULL);
}

static void test_validator_accepts_json(void)
{
    CHECK(valid("{}"));
    CHECK(valid(" [ ] "));
    CHECK(valid("{\"a\":[1,-2,3.5,-0.25e-3,1E+9,true,false,null,\"x\"]}"));
    CHECK(valid("\"caf\xc3\xa9 \xf0\x9f\x8e\xa7\"")); /* 2- and 4-byte UTF-8 */
    CHECK(valid("\"\\ud83c\\udfa7 \\u00e9 \\\" \\\\ \\/ \\b\\f\\n\\r\\t\""));
    CHECK(valid("0"));
    CHECK(valid("\r\n\t{\"k\" : 1 }\n"));
}

static void test_validator_refuses_lenient_json(void)
{
    const char *bad[] = {
        "",
        " ",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "{'a':1}",
        "01",
        "1.",
        "-.5",
        ".5",
        "1e",
        "+1",
        "-",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "{\"a\" 1}",
        "{1:2}",
        "[1 2]",
        "{} {}",
        "\"abc",
        "\"\\x\"",
        "\"\\u12g4\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\u0000\"",
        "\"a\tb\"",
        "\xef\xbb\xbf{}",
        "\"\xff\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xe2\x82\"",
        "1 2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (valid(bad[i])) {
            fprintf(stderr, "  accepted: %s\n", bad[i]);
            CHECK(!"lenient JSON accepted");
        }
    }
    /* An embedded NUL byte is not JSON either. */
    CHECK(!fleet_json_validate("{}\0", 3, NULL));
    CHECK(!fleet_json_validate("\"a\0b\"", 5, NULL));
    /* Numbers past cJSON's 63-character scratch buffer. */
    char big[80];
    memset(big, '1', 70);
    big[70] = '\0';
    CHECK(!valid(big));
}

static void test_validator_bounds_depth_and_size(void)
{
    char deep[2 * FLEET_JSON_MAX_DEPTH + 8];
    size_t n = 0;
    for (int i = 0; i < FLEET_JSON_MAX_DEPTH; i++) {
        deep[n++] = '[';
    }
    for (int i = 0; i < FLEET_JSON_MAX_DEPTH; i++) {
        deep[n++] = ']';
    }
    CHECK(fleet_json_validate(deep, n, NULL));
    char deeper[2 * FLEET_JSON_MAX_DEPTH + 8];
    n = 0;
    for (int i = 0; i <= FLEET_JSON_MAX_DEPTH; i++) {
        deeper[n++] = '[';
    }
    for (int i = 0; i <= FLEET_JSON_MAX_DEPTH; i++) {
        deeper[n++] = ']';
    }
    fleet_perr_t err;
    CHECK(!fleet_json_validate(deeper, n, &err));
    CHECK(strstr(err.msg, "nested too deeply") != NULL);

    /* Too many values: a long array of zeros. */
    size_t count = FLEET_JSON_MAX_VALUES + 1;
    char *many = malloc(count * 2 + 2);
    n = 0;
    many[n++] = '[';
    for (size_t i = 0; i < count; i++) {
        many[n++] = '0';
        many[n++] = ',';
    }
    many[n - 1] = ']';
    CHECK(!fleet_json_validate(many, n, &err));
    CHECK(strstr(err.msg, "too many values") != NULL);
    free(many);
}

static void test_parse_refuses_oversize_before_parsing(void)
{
    size_t len = FLEET_MAX_PAYLOAD + 1;
    char *p = malloc(len);
    memset(p, ' ', len);
    p[0] = '{';
    p[len - 1] = '}';
    fleet_json_doc_t doc;
    fleet_perr_t err;
    CHECK_INT(fleet_json_parse(&doc, p, len, &err), FLEET_ERR_TOO_LARGE);
    CHECK(doc.root == NULL);
    /* Exactly the limit is fine. */
    CHECK_INT(fleet_json_parse(&doc, p, len - 1, &err), FLEET_ERR_JSON); /* no closing brace */
    p[len - 2] = '}';
    CHECK_INT(fleet_json_parse(&doc, p, len - 1, &err), FLEET_OK);
    fleet_json_free(&doc);
    free(p);
}

static void test_int_literal_tracks_source_text(void)
{
    const char *text = "{\"s\":\"12 3.5 -7\",\"a\":5,\"b\":5.0,\"c\":[1e2,-0,{\"d\":7}],\"e\":-3}";
    fleet_json_doc_t doc;
    CHECK_INT(fleet_json_parse(&doc, text, strlen(text), NULL), FLEET_OK);
    const cJSON *c = fleet_json_get(doc.root, "c");
    CHECK(fleet_json_is_int_literal(&doc, fleet_json_get(doc.root, "a")));
    CHECK(!fleet_json_is_int_literal(&doc, fleet_json_get(doc.root, "b")));
    CHECK(!fleet_json_is_int_literal(&doc, cJSON_GetArrayItem(c, 0)));
    CHECK(fleet_json_is_int_literal(&doc, cJSON_GetArrayItem(c, 1)));
    CHECK(fleet_json_is_int_literal(&doc, fleet_json_get(cJSON_GetArrayItem(c, 2), "d")));
    CHECK(fleet_json_is_int_literal(&doc, fleet_json_get(doc.root, "e")));
    CHECK(!fleet_json_is_int_literal(&doc, fleet_json_get(doc.root, "s"))); /* not a number */
    fleet_json_free(&doc);
}

static void test_get_takes_last_duplicate(void)
{
    const char *text = "{\"rev\":5,\"x\":1,\"rev\":6}";
    fleet_json_doc_t doc;
    CHECK_INT(fleet_json_parse(&doc, text, strlen(text), NULL), FLEET_OK);
    const cJSON *rev = fleet_json_get(doc.root, "rev");
    CHECK(rev != NULL && rev->valuedouble == 6.0);
    CHECK(fleet_json_is_int_literal(&doc, rev));
    CHECK(fleet_json_get(doc.root, "REV") == NULL); /* case-sensitive */
    CHECK(fleet_json_get(NULL, "rev") == NULL);
    fleet_json_free(&doc);
}

static void test_utf8_helpers(void)
{
    CHECK_INT(fleet_utf8_len(""), 0);
    CHECK_INT(fleet_utf8_len("abc"), 3);
    CHECK_INT(fleet_utf8_len("\xc3\xa9\xf0\x9f\x8e\xa7"), 2);
    CHECK(fleet_utf8_valid("\xc3\xa9", 2));
    CHECK(!fleet_utf8_valid("\xc3", 1));
    CHECK(!fleet_utf8_valid("\xe0\x80\x80", 3)); /* overlong */
}

static void test_writer_escapes_and_bounds(void)
{
    char buf[128];
    fleet_jw_t w;
    fleet_jw_init(&w, buf, sizeof buf);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "s");
    fleet_jw_str(&w, "a\"b\\c\n\x01\xc3\xa9\xff");
    fleet_jw_key(&w, "n");
    fleet_jw_num(&w, 0.1);
    fleet_jw_key(&w, "i");
    fleet_jw_int(&w, -42);
    fleet_jw_key(&w, "inf");
    fleet_jw_num(&w, HUGE_VAL);
    fleet_jw_key(&w, "l");
    fleet_jw_arr_begin(&w);
    fleet_jw_bool(&w, true);
    fleet_jw_null(&w);
    fleet_jw_raw(&w, "{}");
    fleet_jw_arr_end(&w);
    fleet_jw_obj_end(&w);
    size_t n = fleet_jw_finish(&w);
    CHECK(n > 0);
    CHECK_STR(buf, "{\"s\":\"a\\\"b\\\\c\\n\\u0001\xc3\xa9?\",\"n\":0.1,\"i\":-42,\"inf\":null,"
                   "\"l\":[true,null,{}]}");
    CHECK(fleet_json_validate(buf, n, NULL));

    /* Overflow is sticky and reported as 0 with an empty buffer. */
    char small[8];
    fleet_jw_init(&w, small, sizeof small);
    fleet_jw_obj_begin(&w);
    fleet_jw_key(&w, "long-key");
    fleet_jw_int(&w, 1);
    fleet_jw_obj_end(&w);
    CHECK_INT(fleet_jw_finish(&w), 0);
    CHECK_STR(small, "");

    /* Unbalanced nesting is refused. */
    fleet_jw_init(&w, buf, sizeof buf);
    fleet_jw_obj_begin(&w);
    CHECK_INT(fleet_jw_finish(&w), 0);
}

static void test_writer_numbers_round_trip(void)
{
    const double values[] = {0.0, 1.0, -1.5, 1700000000.123, 1e-7, 123456789.123456789, 1e300};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        char buf[64];
        fleet_jw_t w;
        fleet_jw_init(&w, buf, sizeof buf);
        fleet_jw_num(&w, values[i]);
        CHECK(fleet_jw_finish(&w) > 0);
        CHECK(strtod(buf, NULL) == values[i]);
        CHECK(valid(buf));
    }
}

void suite_json(void)
{
    RUN(test_validator_accepts_json);
    RUN(test_validator_refuses_lenient_json);
    RUN(test_validator_bounds_depth_and_size);
    RUN(test_parse_refuses_oversize_before_parsing);
    RUN(test_int_literal_tracks_source_text);
    RUN(test_get_takes_last_duplicate);
    RUN(test_utf8_helpers);
    RUN(test_writer_escapes_and_bounds);
    RUN(test_writer_numbers_round_trip);
}
