/*
 * test_media_main.c - runs the media core's suite; the last line is "N passed, N failed".
 */
#include "harness.h"

int main(void)
{
    suite_media();
    return th_summary();
}
