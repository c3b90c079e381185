/* esp_http_client as in ESP-IDF v5.3.1 components/esp_http_client/include/esp_http_client.h
 * (subset: the config fields main/ sets). */
#pragma once
#include <stdbool.h>
#include "esp_err.h"
typedef struct esp_http_client_config {
    const char *url;
    int timeout_ms;
    bool keep_alive_enable;
    esp_err_t (*crt_bundle_attach)(void *conf);
} esp_http_client_config_t;
