/*
 * fleet_events.h - the one queue between ESP-IDF's event handlers and the fleet task.
 *
 * IDF calls its handlers on its own tasks (the default event loop, the esp-mqtt task,
 * the SNTP callback). They only copy what they got into a fleet_ev_t and enqueue it;
 * the fleet task drains the queue and is the only one that touches the core, Wi-Fi
 * reconnects and the MQTT client's subscriptions (ESPHome style).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esp_err.h"

typedef enum {
    FLEET_EV_WIFI_START,        /* station started: connect */
    FLEET_EV_WIFI_DISCONNECTED, /* code = reason */
    FLEET_EV_WIFI_GOT_IP,       /* text = dotted address */
    FLEET_EV_TIME_SYNCED,       /* SNTP set the clock */
    FLEET_EV_MQTT_CONNECTED,
    FLEET_EV_MQTT_DISCONNECTED,
    FLEET_EV_MQTT_PUBLISHED, /* code = msg id (QoS 1 acknowledged) */
    FLEET_EV_MQTT_DATA,      /* topic/data: heap copies, freed by the fleet task */
    FLEET_EV_MQTT_OVERSIZE,  /* topic + code = total length: refused, never assembled */
    FLEET_EV_MEDIA,          /* from esp_peer's task: topic = participant, data = SDP or
                                a rejection's detail, code = which (fleet_audio.c) */
    FLEET_EV_OTA,            /* the ota task ended: code = esp_err_t, text unused */
    FLEET_EV_BUTTON,         /* the call button was pressed (button.c) */
} fleet_ev_type_t;

typedef struct {
    fleet_ev_type_t type;
    int32_t code;
    char *topic; /* NUL-terminated heap copy or NULL */
    size_t topic_len;
    char *data; /* heap copy or NULL */
    size_t data_len;
    char text[16]; /* small inline text (an IPv4 address) */
} fleet_ev_t;

/* Creates the queue (fleet_events.c owns it); app_main calls it before any handler is
 * registered. */
esp_err_t fleet_ev_init(void);

/* From a handler: never blocks; on a full queue the event is dropped, its copies freed
 * and the drop counted (a lost MQTT message is redelivered or re-derived on reconnect). */
void fleet_ev_post(const fleet_ev_t *ev);

/* For the fleet task: the next event, waiting at most wait_ms; false if none came. Logs
 * the drops counted since the last call. The caller frees the event's copies. */
bool fleet_ev_take(fleet_ev_t *ev, uint32_t wait_ms);
