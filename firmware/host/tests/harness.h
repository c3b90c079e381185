/*
 * harness.h - a tiny test harness. Each TEST is a function; a test fails when any of its
 * checks fails. The runner prints "N passed, N failed" as its last line.
 */
#ifndef FLEET_TEST_HARNESS_H
#define FLEET_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>

void th_check(bool ok, const char *expr, const char *file, int line);
void th_check_str(const char *got, const char *want, const char *expr, const char *file, int line);
void th_check_int(long long got, long long want, const char *expr, const char *file, int line);
void th_run(const char *name, void (*fn)(void));
int th_summary(void);

#define CHECK(cond)          th_check((cond), #cond, __FILE__, __LINE__)
#define CHECK_STR(got, want) th_check_str((got), (want), #got, __FILE__, __LINE__)
#define CHECK_INT(got, want) \
    th_check_int((long long)(got), (long long)(want), #got, __FILE__, __LINE__)
#define RUN(fn) th_run(#fn, fn)

/* Suites (one per file). */
void suite_json(void);
void suite_topics(void);
void suite_msg(void);
void suite_core(void);
void suite_host_url(void);
void suite_media(void);

#endif
