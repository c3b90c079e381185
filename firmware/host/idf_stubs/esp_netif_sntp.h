/* ESP-IDF components/esp_netif/include/esp_netif_sntp.h (subset, v5.1+). */
#pragma once
#include <stdbool.h>
#include <sys/time.h>
#include "esp_err.h"
typedef void (*esp_sntp_time_cb_t)(struct timeval *tv);
typedef struct { bool smooth_sync; bool server_from_dhcp; bool wait_for_sync; bool start;
                 esp_sntp_time_cb_t sync_cb; bool renew_servers_after_new_IP; int ip_event_to_renew;
                 size_t index_of_first_server; size_t num_of_servers; const char *servers[1];
} esp_sntp_config_t;
#define ESP_NETIF_SNTP_DEFAULT_CONFIG(server) { .smooth_sync = false, .server_from_dhcp = false, \
    .wait_for_sync = true, .start = true, .sync_cb = NULL, .renew_servers_after_new_IP = false, \
    .ip_event_to_renew = 0, .index_of_first_server = 0, .num_of_servers = 1, .servers = {server}, }
esp_err_t esp_netif_sntp_init(const esp_sntp_config_t *config);
