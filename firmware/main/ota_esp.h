/*
 * ota_esp.h - the ota command on ESP-IDF: esp_https_ota into the next OTA slot, in a task
 * of its own; its end comes back to the fleet task as FLEET_EV_OTA.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"

/* Starts the download of url into the next OTA slot; false if one is already running. */
bool fleet_ota_start(const char *url);

/* The flash address of the slot the running or last download writes (for the check after
 * the restart). */
uint32_t fleet_ota_target(void);

/* The address of the running image. */
uint32_t fleet_ota_running(void);

/* The image is on probation after an update (rollback enabled): it has reached the broker,
 * so it stays. A no-op otherwise. */
void fleet_ota_confirm_image(void);
