/* ESP-IDF v5.3.1 components/mbedtls/esp_crt_bundle/include/esp_crt_bundle.h (subset). */
#pragma once
#include "esp_err.h"
esp_err_t esp_crt_bundle_attach(void *conf);
