/* ESP-IDF components/esp_system/include/esp_system.h (subset). */
#pragma once
#include <stdint.h>
#include "esp_err.h"
void esp_restart(void) __attribute__((__noreturn__));
uint32_t esp_get_free_heap_size(void);
uint32_t esp_get_minimum_free_heap_size(void);
