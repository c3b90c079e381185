/*
 * config_nvs.h - device configuration from NVS namespace "fleet".
 *
 * Keys (all strings): device_id, secret, broker_url, groups (comma-separated),
 * wifi_ssid, wifi_pass; optional: ntp, call_to (where the call button calls: a device id
 * or group:NAME). Provision them with esp-idf-nvs-partition-gen
 * (pip package, see pyproject's "flash" extra) or `fleet` tooling.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "esp_err.h"
#include "fleet_msg.h"
#include "fleet_topics.h"

typedef struct {
    char device_id[FLEET_ID_MAX + 1];
    char secret[128];
    char broker_url[256]; /* mqtt://host:1883 or mqtts://host:8883 */
    char wifi_ssid[33];   /* 802.11: at most 32 bytes */
    char wifi_pass[65];   /* WPA2: at most 64 */
    char ntp[64];
    char call_to[FLEET_ID_MAX + 7]; /* "group:" + id, or a device id; "" = none */
    char groups_buf[FLEET_MAX_GROUPS * (FLEET_ID_MAX + 1)];
    const char *groups[FLEET_MAX_GROUPS]; /* point into groups_buf */
    size_t n_groups;
} fleet_nvs_config_t;

/* Reads every key; ESP_ERR_NOT_FOUND names a missing required key in the log. */
esp_err_t fleet_config_load(fleet_nvs_config_t *cfg);
/* Stores the group list (set_groups), comma-separated. */
esp_err_t fleet_config_save_groups(const char *const *groups, size_t count);
