/*
 * net.h - the device's network link, one implementation per platform (Kconfig: espfleet ->
 * Network): net_wifi.c (a Wi-Fi station, the default) or net_openeth.c (the OpenCores
 * Ethernet MAC of Espressif's QEMU). Only the chosen one is compiled in.
 *
 * The IDF handlers only enqueue (fleet_events.h): link up, link down, got an address.
 * The fleet task calls fleet_net_handle() for those events and fleet_net_poll() on every
 * turn, which reconnects with a doubling delay (1 s .. 30 s) where the link needs it.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"
#include "fleet_events.h"

/* Starts the link. ssid/pass are the provisioned Wi-Fi (unused by a wired link). */
esp_err_t fleet_net_start(const char *ssid, const char *pass);
void fleet_net_handle(const fleet_ev_t *ev, uint64_t now_ms);
void fleet_net_poll(uint64_t now_ms);
/* Reconnects since boot (telemetry wifi.reconnects). */
uint32_t fleet_net_reconnects(void);
/* RSSI (dBm) and channel of the current access point; false when not associated or wired. */
bool fleet_net_radio_info(int32_t *rssi, int32_t *channel);
