/*
 * harness.c - counting and reporting for the unit tests.
 */
#include "harness.h"

#include <stdio.h>
#include <string.h>

static int passed, failed, check_failures;

void th_check(bool ok, const char *expr, const char *file, int line)
{
    if (!ok) {
        check_failures++;
        fprintf(stderr, "  check failed: %s (%s:%d)\n", expr, file, line);
    }
}

void th_check_str(const char *got, const char *want, const char *expr, const char *file, int line)
{
    if (got == NULL || want == NULL ? got != want : strcmp(got, want) != 0) {
        check_failures++;
        fprintf(stderr, "  check failed: %s == \"%s\", got \"%s\" (%s:%d)\n", expr,
                want != NULL ? want : "(null)", got != NULL ? got : "(null)", file, line);
    }
}

void th_check_int(long long got, long long want, const char *expr, const char *file, int line)
{
    if (got != want) {
        check_failures++;
        fprintf(stderr, "  check failed: %s == %lld, got %lld (%s:%d)\n", expr, want, got, file,
                line);
    }
}

void th_run(const char *name, void (*fn)(void))
{
    int before = check_failures;
    fn();
    if (check_failures == before) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL %s\n", name);
    }
}

int th_summary(void)
{
    fflush(stderr);
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed == 0 ? 0 : 1;
}
