/*
 * wifi_sta.h - Wi-Fi station with reconnect backoff.
 *
 * The IDF handlers only enqueue (fleet_events.h); the fleet task calls
 * fleet_wifi_handle() for Wi-Fi events and fleet_wifi_poll() on every turn, which
 * reconnects with a doubling delay (1 s .. 30 s).
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"
#include "fleet_events.h"

esp_err_t fleet_wifi_start(const char *ssid, const char *pass);
void fleet_wifi_handle(const fleet_ev_t *ev, uint64_t now_ms);
void fleet_wifi_poll(uint64_t now_ms);
/* Reconnects since boot (telemetry wifi.reconnects). */
uint32_t fleet_wifi_reconnects(void);
/* RSSI (dBm) and channel of the current access point; false when not associated. */
bool fleet_wifi_ap_info(int32_t *rssi, int32_t *channel);
