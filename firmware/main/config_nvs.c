/*
 * config_nvs.c - the "fleet" NVS namespace.
 */
#include "config_nvs.h"

#include <string.h>

#include "esp_log.h"
#include "nvs.h"
#include "sdkconfig.h"

static const char *TAG = "fleet_cfg";
static const char *NAMESPACE = "fleet";

static esp_err_t get_str(nvs_handle_t h, const char *key, char *out, size_t cap, bool required)
{
    size_t len = cap;
    esp_err_t err = nvs_get_str(h, key, out, &len);
    if (err == ESP_ERR_NVS_NOT_FOUND) {
        out[0] = '\0';
        if (required) {
            ESP_LOGE(TAG, "NVS %s/%s is missing", NAMESPACE, key);
            return ESP_ERR_NOT_FOUND;
        }
        return ESP_OK;
    }
    if (err == ESP_ERR_NVS_INVALID_LENGTH) {
        ESP_LOGE(TAG, "NVS %s/%s is longer than %u bytes", NAMESPACE, key, (unsigned)cap - 1);
    }
    return err;
}

/* Splits groups_buf in place at commas; empty items are skipped. */
static void split_groups(fleet_nvs_config_t *cfg)
{
    cfg->n_groups = 0;
    char *p = cfg->groups_buf;
    while (*p != '\0' && cfg->n_groups < FLEET_MAX_GROUPS) {
        char *comma = strchr(p, ',');
        if (comma != NULL) {
            *comma = '\0';
        }
        if (*p != '\0') {
            cfg->groups[cfg->n_groups++] = p; /* validated by fleet_core_init */
        }
        if (comma == NULL) {
            break;
        }
        p = comma + 1;
    }
}

esp_err_t fleet_config_load(fleet_nvs_config_t *cfg)
{
    nvs_handle_t h;
    memset(cfg, 0, sizeof *cfg);
    esp_err_t err = nvs_open(NAMESPACE, NVS_READONLY, &h);
    if (err != ESP_OK) {
        ESP_LOGE(TAG, "NVS namespace %s: %s (not provisioned?)", NAMESPACE, esp_err_to_name(err));
        return err;
    }
    esp_err_t first = ESP_OK;
    const struct {
        const char *key;
        char *out;
        size_t cap;
        bool required;
    } keys[] = {
        {"device_id", cfg->device_id, sizeof cfg->device_id, true},
        {"secret", cfg->secret, sizeof cfg->secret, true},
        {"broker_url", cfg->broker_url, sizeof cfg->broker_url, true},
        {"wifi_ssid", cfg->wifi_ssid, sizeof cfg->wifi_ssid, true},
        {"wifi_pass", cfg->wifi_pass, sizeof cfg->wifi_pass, false},
        {"groups", cfg->groups_buf, sizeof cfg->groups_buf, false},
        {"ntp", cfg->ntp, sizeof cfg->ntp, false},
        {"call_to", cfg->call_to, sizeof cfg->call_to, false},
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        err = get_str(h, keys[i].key, keys[i].out, keys[i].cap, keys[i].required);
        if (err != ESP_OK && first == ESP_OK) {
            first = err; /* keep reading: log every missing key at once */
        }
    }
    nvs_close(h);
    if (cfg->ntp[0] == '\0') {
        strlcpy(cfg->ntp, CONFIG_FLEET_NTP_SERVER, sizeof cfg->ntp);
    }
    split_groups(cfg);
    return first;
}

esp_err_t fleet_config_save_groups(const char *const *groups, size_t count)
{
    /* Static: 2 KB that the fleet task's stack cannot spare under NVS's flash writes (only
     * that task stores groups). */
    static char buf[FLEET_MAX_GROUPS * (FLEET_ID_MAX + 1)];
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < count; i++) {
        size_t n = strlen(groups[i]);
        if (len + n + 2 > sizeof buf) {
            return ESP_ERR_INVALID_SIZE;
        }
        if (i > 0) {
            buf[len++] = ',';
        }
        memcpy(buf + len, groups[i], n + 1);
        len += n;
    }
    nvs_handle_t h;
    esp_err_t err = nvs_open(NAMESPACE, NVS_READWRITE, &h);
    if (err != ESP_OK) {
        return err;
    }
    err = nvs_set_str(h, "groups", buf);
    if (err == ESP_OK) {
        err = nvs_commit(h);
    }
    nvs_close(h);
    ESP_LOGI(TAG, "groups saved: '%s' (%s)", buf, esp_err_to_name(err));
    return err;
}
