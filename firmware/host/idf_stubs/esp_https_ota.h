/* ESP-IDF v5.3.1 components/esp_https_ota/include/esp_https_ota.h (subset). */
#pragma once
#include <stdbool.h>
#include "esp_err.h"
#include "esp_http_client.h"
typedef struct { const esp_http_client_config_t *http_config; void *http_client_init_cb;
                 bool bulk_flash_erase; bool partial_http_download; int max_http_request_size; } esp_https_ota_config_t;
esp_err_t esp_https_ota(const esp_https_ota_config_t *ota_config);
