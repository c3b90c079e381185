/*
 * net_wifi.c - the network as a Wi-Fi station: events to the queue, reconnects from the
 * fleet task (net.h).
 */
#include "net.h"
#include "sdkconfig.h"

#if CONFIG_FLEET_NET_WIFI

#include <stdio.h>
#include <string.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_wifi.h"

static const char *TAG = "fleet_wifi";

#define BACKOFF_MIN_MS 1000u
#define BACKOFF_MAX_MS 30000u

static uint32_t backoff_ms = BACKOFF_MIN_MS;
static uint64_t reconnect_at_ms; /* 0 = nothing scheduled */
static uint32_t reconnects;
static bool ever_connected;

/* Runs on the default event loop task: copy and enqueue, nothing else. */
static void on_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    fleet_ev_t ev;
    (void)arg;
    memset(&ev, 0, sizeof ev);
    if (base == WIFI_EVENT && id == WIFI_EVENT_STA_START) {
        ev.type = FLEET_EV_WIFI_START;
    } else if (base == WIFI_EVENT && id == WIFI_EVENT_STA_DISCONNECTED) {
        ev.type = FLEET_EV_WIFI_DISCONNECTED;
        ev.code = ((const wifi_event_sta_disconnected_t *)data)->reason;
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        const ip_event_got_ip_t *got = data;
        ev.type = FLEET_EV_WIFI_GOT_IP;
        snprintf(ev.text, sizeof ev.text, IPSTR, IP2STR(&got->ip_info.ip));
    } else {
        return;
    }
    fleet_ev_post(&ev);
}

esp_err_t fleet_net_start(const char *ssid, const char *pass)
{
    esp_netif_create_default_wifi_sta();
    wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();
    ESP_ERROR_CHECK(esp_wifi_init(&init));
    ESP_ERROR_CHECK(esp_event_handler_register(WIFI_EVENT, ESP_EVENT_ANY_ID, on_event, NULL));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_STA_GOT_IP, on_event, NULL));

    wifi_config_t wc;
    memset(&wc, 0, sizeof wc);
    strlcpy((char *)wc.sta.ssid, ssid, sizeof wc.sta.ssid);
    strlcpy((char *)wc.sta.password, pass, sizeof wc.sta.password);
    /* An open network when no password is provisioned, WPA2 or better otherwise. */
    wc.sta.threshold.authmode = pass[0] != '\0' ? WIFI_AUTH_WPA2_PSK : WIFI_AUTH_OPEN;
    ESP_ERROR_CHECK(esp_wifi_set_mode(WIFI_MODE_STA));
    ESP_ERROR_CHECK(esp_wifi_set_config(WIFI_IF_STA, &wc));
    /* Modem sleep would add up to a DTIM period of latency to every MQTT packet. */
    ESP_ERROR_CHECK(esp_wifi_set_ps(WIFI_PS_NONE));
    ESP_LOGI(TAG, "starting station for '%s'", ssid);
    return esp_wifi_start();
}

void fleet_net_handle(const fleet_ev_t *ev, uint64_t now_ms)
{
    switch (ev->type) {
        case FLEET_EV_WIFI_START:
            ESP_LOGI(TAG, "station started: connecting");
            (void)esp_wifi_connect();
            break;
        case FLEET_EV_WIFI_DISCONNECTED:
            ESP_LOGW(TAG, "disconnected (reason %ld): retry in %lu ms", (long)ev->code,
                     (unsigned long)backoff_ms);
            reconnect_at_ms = now_ms + backoff_ms;
            backoff_ms = backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff_ms * 2;
            break;
        case FLEET_EV_WIFI_GOT_IP:
            ESP_LOGI(TAG, "got ip %s", ev->text);
            if (ever_connected) {
                reconnects++;
            }
            ever_connected = true;
            backoff_ms = BACKOFF_MIN_MS;
            reconnect_at_ms = 0;
            break;
        default:
            break;
    }
}

void fleet_net_poll(uint64_t now_ms)
{
    if (reconnect_at_ms != 0 && now_ms >= reconnect_at_ms) {
        reconnect_at_ms = 0;
        esp_err_t err = esp_wifi_connect();
        if (err != ESP_OK) {
            ESP_LOGW(TAG, "esp_wifi_connect: %s", esp_err_to_name(err));
        }
    }
}

uint32_t fleet_net_reconnects(void)
{
    return reconnects;
}

bool fleet_net_radio_info(int32_t *rssi, int32_t *channel)
{
    wifi_ap_record_t ap;
    if (esp_wifi_sta_get_ap_info(&ap) != ESP_OK) {
        return false;
    }
    *rssi = ap.rssi;
    *channel = ap.primary;
    return true;
}

#endif /* CONFIG_FLEET_NET_WIFI */
