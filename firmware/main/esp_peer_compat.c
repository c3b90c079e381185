/*
 * esp_peer_compat.c - what esp_peer's prebuilt library (libpeer_default.a) needs of ESP-IDF
 * and an older IDF lacks. The library is compiled against IDF 5.5, whose ESP_LOGx macros call
 * esp_log(config, tag, format, ...): with log version 1 (the default) the format already holds
 * the "I (%lu) %s: " prefix and the timestamp and tag come first among the arguments, exactly
 * what esp_log_writev() takes; the level is the low 3 bits of config.
 */
#include <stdarg.h>
#include <stdint.h>

#include "esp_idf_version.h"
#include "esp_log.h"
#include "sdkconfig.h"

#if CONFIG_IDF_TARGET_ESP32S3 && ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 5, 0)

void esp_log(uint32_t config, const char *tag, const char *format, ...);

void esp_log(uint32_t config, const char *tag, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    esp_log_writev((esp_log_level_t)(config & 7u), tag, format, args);
    va_end(args);
}

#endif
