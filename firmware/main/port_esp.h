/*
 * port_esp.h - fleet_port_t on ESP-IDF: esp-mqtt, esp_timer, SNTP time, NVS, restart, ota.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

#include "config_nvs.h"
#include "esp_err.h"
#include "fleet_core.h"
#include "fleet_events.h"

/* The reboot command id kept across esp_restart() (RTC memory), or NULL. */
const char *fleet_port_esp_pending(void);
/* Whether that command was an ota; *error says why it failed if another image than the one
 * it installed is running (the bootloader rolled it back), else NULL. */
bool fleet_port_esp_pending_ota(const char **error);

/* Builds the port table; media and player may be NULL (no audio, no speaker). Call before
 * fleet_core_init(). */
const fleet_port_t *fleet_port_esp_table(const fleet_media_t *media,
                                         const fleet_player_t *player);

/* Creates the esp-mqtt client (client id and user = device id, LWT on the core's status
 * topic) after fleet_core_init(); the client starts with the first IP address. */
esp_err_t fleet_port_esp_mqtt_init(fleet_core_t *core, const fleet_nvs_config_t *cfg);

/* The SNTP sync callback (esp_sntp_config_t.sync_cb): enqueues FLEET_EV_TIME_SYNCED. */
void fleet_port_esp_time_cb(struct timeval *tv);

/* In the fleet task: MQTT, time and IP events; identify blinking; the reboot sequence. */
void fleet_port_esp_handle(const fleet_ev_t *ev);
void fleet_port_esp_poll(uint64_t now_ms);
