/*
 * port_esp.c - the ESP implementation of fleet_port_t, and the esp-mqtt glue.
 *
 * esp-mqtt runs its own task and calls mqtt_handler() there: the handler copies
 * (reassembling fragmented payloads up to FLEET_MAX_PAYLOAD) and enqueues. Everything
 * else runs in the fleet task: publishes use esp_mqtt_client_enqueue() so the core
 * never blocks on the network.
 */
#include "port_esp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "driver/gpio.h"
#include "esp_attr.h"
#include "esp_log.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "mqtt_client.h"
#include "net.h"
#include "ota_esp.h"
#include "sdkconfig.h"

/* esp-mqtt in ESP-IDF v5.1.2-v5.2.1 defines esp_mqtt_client_subscribe as a _Generic macro
 * whose only string association is `char *`: a `const char *` topic matches nothing and does
 * not compile. The function behind the macro, esp_mqtt_client_subscribe_single, exists
 * wherever the macro does; where there is no macro, the name is the function itself. */
#ifdef esp_mqtt_client_subscribe
#define fleet_mqtt_subscribe esp_mqtt_client_subscribe_single
#else
#define fleet_mqtt_subscribe esp_mqtt_client_subscribe
#endif

static const char *TAG = "fleet_port";

#define GOODBYE_WAIT_MS 3000 /* for the offline status to be acknowledged before a restart */
#define PENDING_MAGIC   0xF1EE7C0Du

/* Survives esp_restart() (not a power cycle): the reboot or ota command to confirm after
 * boot; for an ota, the slot it installed (if another one runs, it was rolled back). */
static RTC_NOINIT_ATTR struct {
    uint32_t magic;
    uint32_t ota_addr; /* 0: a reboot */
    char id[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)];
} rtc_pending;

static struct {
    fleet_port_t port;
    fleet_core_t *core;
    esp_mqtt_client_handle_t client;
    bool mqtt_started;
    bool mqtt_up;
    bool clock_set;
    uint32_t mqtt_reconnects;
    bool ever_connected;
    /* identify: blink until this time */
    uint64_t identify_until_ms;
    uint64_t identify_toggle_ms;
    bool led_on;
    /* reboot sequence */
    bool reboot_requested;
    bool goodbye_sent;
    int goodbye_msg_id;
    bool goodbye_acked;
    uint64_t reboot_deadline_ms;
    /* the ota command being downloaded */
    char ota_id[FLEET_UTF8_BYTES(FLEET_CMD_ID_CHARS)];
} s;

/* ---- the handler side (esp-mqtt task) ---------------------------------------------------- */

/* Reassembly of one fragmented PUBLISH; only the esp-mqtt task touches it. */
static struct {
    char *topic;
    size_t topic_len;
    char *data;
    size_t total;
    size_t got;
} rx;

static void rx_reset(void)
{
    free(rx.topic);
    free(rx.data);
    memset(&rx, 0, sizeof rx);
}

static void mqtt_handler(void *arg, esp_event_base_t base, int32_t id, void *event_data)
{
    esp_mqtt_event_handle_t e = event_data;
    fleet_ev_t ev;
    (void)arg;
    (void)base;
    memset(&ev, 0, sizeof ev);
    switch ((esp_mqtt_event_id_t)id) {
        case MQTT_EVENT_CONNECTED:
            ev.type = FLEET_EV_MQTT_CONNECTED;
            fleet_ev_post(&ev);
            break;
        case MQTT_EVENT_DISCONNECTED:
            rx_reset();
            ev.type = FLEET_EV_MQTT_DISCONNECTED;
            fleet_ev_post(&ev);
            break;
        case MQTT_EVENT_PUBLISHED:
            ev.type = FLEET_EV_MQTT_PUBLISHED;
            ev.code = e->msg_id;
            fleet_ev_post(&ev);
            break;
        case MQTT_EVENT_DATA: {
            if (e->current_data_offset == 0) { /* first fragment: carries the topic */
                rx_reset();
                if ((size_t)e->total_data_len > FLEET_MAX_PAYLOAD) {
                    /* Refused before anything is assembled; the core logs it. */
                    ev.type = FLEET_EV_MQTT_OVERSIZE;
                    ev.code = e->total_data_len;
                    ev.topic = strndup(e->topic, (size_t)e->topic_len);
                    ev.topic_len = ev.topic != NULL ? (size_t)e->topic_len : 0;
                    fleet_ev_post(&ev);
                    return;
                }
                rx.topic = strndup(e->topic, (size_t)e->topic_len);
                rx.topic_len = (size_t)e->topic_len;
                rx.total = (size_t)e->total_data_len;
                rx.data = malloc(rx.total > 0 ? rx.total : 1);
                if (rx.topic == NULL || rx.data == NULL) {
                    rx_reset();
                    return; /* out of memory: drop; desired docs are retained, cmds retried */
                }
            }
            if (rx.data == NULL || (size_t)e->current_data_offset != rx.got ||
                rx.got + (size_t)e->data_len > rx.total) {
                rx_reset(); /* a fragment of a message we dropped, or out of order */
                return;
            }
            memcpy(rx.data + rx.got, e->data, (size_t)e->data_len);
            rx.got += (size_t)e->data_len;
            if (rx.got == rx.total) {
                ev.type = FLEET_EV_MQTT_DATA;
                ev.topic = rx.topic;
                ev.topic_len = rx.topic_len;
                ev.data = rx.data;
                ev.data_len = rx.total;
                memset(&rx, 0, sizeof rx); /* ownership moves to the queue */
                fleet_ev_post(&ev);
            }
            break;
        }
        case MQTT_EVENT_ERROR:
            if (e->error_handle != NULL &&
                e->error_handle->error_type == MQTT_ERROR_TYPE_CONNECTION_REFUSED) {
                ESP_LOGE(TAG, "broker refused the connection (code %d)",
                         (int)e->error_handle->connect_return_code);
            }
            break;
        default:
            break;
    }
}

/* SNTP calls this on its own task. */
void fleet_port_esp_time_cb(struct timeval *tv)
{
    fleet_ev_t ev;
    (void)tv;
    memset(&ev, 0, sizeof ev);
    ev.type = FLEET_EV_TIME_SYNCED;
    fleet_ev_post(&ev);
}

/* ---- the port (fleet task) --------------------------------------------------------------- */

static uint64_t p_now_ms(void *ctx)
{
    (void)ctx;
    return (uint64_t)(esp_timer_get_time() / 1000);
}

static bool p_clock_is_set(void *ctx)
{
    (void)ctx;
    return s.clock_set;
}

static double p_unix_time(void *ctx)
{
    struct timeval tv;
    (void)ctx;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)(tv.tv_usec / 1000) / 1000.0;
}

static bool p_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos,
                      bool retain)
{
    (void)ctx;
    if (s.client == NULL || !s.mqtt_up) {
        return false;
    }
    /* enqueue (store = true) never blocks the fleet task on the socket. */
    int id = esp_mqtt_client_enqueue(s.client, topic, payload, (int)len, qos, retain, true);
    if (id < 0) {
        return false;
    }
    if (s.reboot_requested && strcmp(topic, fleet_core_status_topic(s.core)) == 0) {
        s.goodbye_msg_id = id; /* the {"online":false} of the goodbye */
    }
    return true;
}

static bool p_subscribe(void *ctx, const char *topic, int qos)
{
    (void)ctx;
    return s.client != NULL && fleet_mqtt_subscribe(s.client, topic, qos) >= 0;
}

static bool p_unsubscribe(void *ctx, const char *topic)
{
    (void)ctx;
    return s.client != NULL && esp_mqtt_client_unsubscribe(s.client, topic) >= 0;
}

static void p_reboot(void *ctx)
{
    (void)ctx;
    /* Not now: fleet_port_esp_poll() says goodbye first (protocol.md 3), then restarts. */
    s.reboot_requested = true;
}

static void p_identify(void *ctx, uint32_t seconds)
{
    (void)ctx;
    s.identify_until_ms = p_now_ms(NULL) + (uint64_t)seconds * 1000u;
    ESP_LOGI(TAG, "identify for %lu s", (unsigned long)seconds);
}

static void p_log(void *ctx, fleet_log_level_t level, const char *tag, const char *msg)
{
    (void)ctx;
    switch (level) {
        case FLEET_LOG_ERROR:
            ESP_LOG_LEVEL(ESP_LOG_ERROR, tag, "%s", msg);
            break;
        case FLEET_LOG_WARN:
            ESP_LOG_LEVEL(ESP_LOG_WARN, tag, "%s", msg);
            break;
        case FLEET_LOG_INFO:
            ESP_LOG_LEVEL(ESP_LOG_INFO, tag, "%s", msg);
            break;
        default:
            ESP_LOG_LEVEL(ESP_LOG_DEBUG, tag, "%s", msg);
            break;
    }
}

static void p_sample(void *ctx, fleet_sys_sample_t *out)
{
    int32_t rssi, channel;
    (void)ctx;
    if (fleet_net_radio_info(&rssi, &channel)) {
        out->has_rssi = true;
        out->rssi = rssi;
        out->has_channel = true;
        out->channel = channel;
    }
    out->wifi_reconnects = fleet_net_reconnects();
    out->has_heap = true;
    out->heap_free = esp_get_free_heap_size();
    out->heap_min = esp_get_minimum_free_heap_size();
    out->mqtt_reconnects = s.mqtt_reconnects;
}

static bool p_save_groups(void *ctx, const char *const *groups, size_t count)
{
    (void)ctx;
    return fleet_config_save_groups(groups, count) == ESP_OK;
}

static bool p_save_pending(void *ctx, const char *cmd_id)
{
    (void)ctx;
    if (cmd_id == NULL) {
        rtc_pending.magic = 0;
        return true;
    }
    strlcpy(rtc_pending.id, cmd_id, sizeof rtc_pending.id);
    rtc_pending.ota_addr = 0;
    rtc_pending.magic = PENDING_MAGIC;
    return true;
}

static bool p_ota(void *ctx, const char *cmd_id, const char *url)
{
    (void)ctx;
    if (!fleet_ota_start(url)) {
        return false;
    }
    strlcpy(s.ota_id, cmd_id, sizeof s.ota_id);
    return true;
}

const char *fleet_port_esp_pending(void)
{
    if (rtc_pending.magic != PENDING_MAGIC ||
        memchr(rtc_pending.id, '\0', sizeof rtc_pending.id) == NULL) {
        return NULL; /* power-on: RTC memory holds garbage */
    }
    return rtc_pending.id;
}

bool fleet_port_esp_pending_ota(const char **error)
{
    *error = NULL;
    if (fleet_port_esp_pending() == NULL || rtc_pending.ota_addr == 0) {
        return false;
    }
    if (fleet_ota_running() != rtc_pending.ota_addr) {
        *error = "rolled back: the new image did not start";
    }
    return true;
}

const fleet_port_t *fleet_port_esp_table(const fleet_media_t *media,
                                         const fleet_player_t *player)
{
    s.port.ctx = &s;
    s.port.now_ms = p_now_ms;
    s.port.clock_is_set = p_clock_is_set;
    s.port.unix_time = p_unix_time;
    s.port.publish = p_publish;
    s.port.subscribe = p_subscribe;
    s.port.unsubscribe = p_unsubscribe;
    s.port.reboot = p_reboot;
    s.port.identify = p_identify;
    s.port.log = p_log;
    s.port.sample = p_sample;
    s.port.save_groups = p_save_groups;
    s.port.save_pending = p_save_pending;
    s.port.ota = p_ota;
    s.port.media = media;
    s.port.player = player;
    s.goodbye_msg_id = -1;
    if (CONFIG_FLEET_IDENTIFY_GPIO >= 0) {
        gpio_reset_pin((gpio_num_t)CONFIG_FLEET_IDENTIFY_GPIO);
        gpio_set_direction((gpio_num_t)CONFIG_FLEET_IDENTIFY_GPIO, GPIO_MODE_OUTPUT);
    }
    return &s.port;
}

esp_err_t fleet_port_esp_mqtt_init(fleet_core_t *core, const fleet_nvs_config_t *cfg)
{
    s.core = core;
    esp_mqtt_client_config_t mc;
    memset(&mc, 0, sizeof mc);
    mc.broker.address.uri = cfg->broker_url;
    mc.credentials.client_id = cfg->device_id; /* client id == device id (the ACL wants it) */
    mc.credentials.username = cfg->device_id;
    mc.credentials.authentication.password = cfg->secret;
    mc.session.protocol_ver = MQTT_PROTOCOL_V_3_1_1;
    mc.session.keepalive = 10;
    mc.session.disable_clean_session = false; /* state lives in retained messages */
    mc.session.last_will.topic = fleet_core_status_topic(core);
    mc.session.last_will.msg = FLEET_LWT_PAYLOAD;
    mc.session.last_will.msg_len = (int)strlen(FLEET_LWT_PAYLOAD);
    mc.session.last_will.qos = 1;
    mc.session.last_will.retain = 1;
    mc.network.reconnect_timeout_ms = 2000; /* esp-mqtt reconnects by itself */
    mc.buffer.size = 2048;                  /* bigger payloads arrive in fragments */
    mc.task.stack_size = 6144;
    s.client = esp_mqtt_client_init(&mc);
    if (s.client == NULL) {
        return ESP_ERR_NO_MEM;
    }
    return esp_mqtt_client_register_event(s.client, ESP_EVENT_ANY_ID, mqtt_handler, NULL);
}

void fleet_port_esp_handle(const fleet_ev_t *ev)
{
    switch (ev->type) {
        case FLEET_EV_WIFI_GOT_IP:
            fleet_core_set_ip(s.core, ev->text);
            if (!s.mqtt_started && s.client != NULL) {
                s.mqtt_started = esp_mqtt_client_start(s.client) == ESP_OK;
            }
            break;
        case FLEET_EV_TIME_SYNCED:
            if (!s.clock_set) {
                ESP_LOGI(TAG, "clock set by SNTP");
            }
            s.clock_set = true;
            break;
        case FLEET_EV_MQTT_CONNECTED:
            if (s.ever_connected) {
                s.mqtt_reconnects++;
            }
            s.ever_connected = true;
            s.mqtt_up = true;
            fleet_ota_confirm_image(); /* it reached the broker: no rollback */
            fleet_core_on_connected(s.core);
            break;
        case FLEET_EV_MQTT_DISCONNECTED:
            s.mqtt_up = false;
            fleet_core_on_disconnected(s.core);
            break;
        case FLEET_EV_MQTT_PUBLISHED:
            if (s.goodbye_sent && ev->code == s.goodbye_msg_id) {
                s.goodbye_acked = true;
            }
            break;
        case FLEET_EV_MQTT_DATA:
            fleet_core_on_message(s.core, ev->topic, ev->topic_len, ev->data, ev->data_len);
            break;
        case FLEET_EV_OTA:
            if (ev->code == ESP_OK) {
                /* The next boot runs the new slot and sends the final ack with its fw. */
                strlcpy(rtc_pending.id, s.ota_id, sizeof rtc_pending.id);
                rtc_pending.ota_addr = fleet_ota_target();
                rtc_pending.magic = PENDING_MAGIC;
                ESP_LOGW(TAG, "ota %s installed: restarting", s.ota_id);
                s.reboot_requested = true;
            } else {
                char detail[96];
                snprintf(detail, sizeof detail, "download or install failed: %s",
                         esp_err_to_name((esp_err_t)ev->code));
                fleet_core_ota_failed(s.core, s.ota_id, detail);
            }
            break;
        case FLEET_EV_MQTT_OVERSIZE:
            /* The core refuses by length before looking at the payload: no bytes needed. */
            fleet_core_on_message(s.core, ev->topic != NULL ? ev->topic : "", ev->topic_len, "",
                                  (size_t)ev->code);
            break;
        default:
            break;
    }
}

static void identify_poll(uint64_t now_ms)
{
    if (CONFIG_FLEET_IDENTIFY_GPIO < 0) {
        return;
    }
    bool active = now_ms < s.identify_until_ms;
    if (active && now_ms >= s.identify_toggle_ms) {
        s.led_on = !s.led_on;
        s.identify_toggle_ms = now_ms + 250;
        gpio_set_level((gpio_num_t)CONFIG_FLEET_IDENTIFY_GPIO, s.led_on ? 1 : 0);
    } else if (!active && s.led_on) {
        s.led_on = false;
        gpio_set_level((gpio_num_t)CONFIG_FLEET_IDENTIFY_GPIO, 0);
    }
}

static void reboot_poll(uint64_t now_ms)
{
    if (!s.reboot_requested) {
        return;
    }
    if (!s.goodbye_sent) {
        /* The accepted ack is already queued ahead of these in esp-mqtt's outbox. */
        s.goodbye_sent = true;
        s.reboot_deadline_ms = now_ms + GOODBYE_WAIT_MS;
        fleet_core_shutdown(s.core); /* leave, {"online":false} retained */
        return;
    }
    if (s.goodbye_acked || !s.mqtt_up || now_ms >= s.reboot_deadline_ms) {
        ESP_LOGW(TAG, "restarting");
        if (s.client != NULL && s.mqtt_up) {
            esp_mqtt_client_disconnect(s.client); /* DISCONNECT: no will after a goodbye */
        }
        esp_restart();
    }
}

void fleet_port_esp_poll(uint64_t now_ms)
{
    identify_poll(now_ms);
    reboot_poll(now_ms);
}
