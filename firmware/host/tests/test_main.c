/*
 * test_main.c - runs every suite; the last line printed is "N passed, N failed".
 */
#include "harness.h"

int main(void)
{
    suite_json();
    suite_topics();
    suite_msg();
    suite_core();
    suite_host_url();
    return th_summary();
}
