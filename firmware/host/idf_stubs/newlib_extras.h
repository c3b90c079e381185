/* What ESP-IDF's newlib <string.h> has and glibc before 2.38 lacks (force-included). */
#pragma once
#include <stddef.h>
size_t strlcpy(char *dst, const char *src, size_t size);
