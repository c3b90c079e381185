/*
 * app_main.c - the espfleet device: configuration from NVS, the network, SNTP, esp-mqtt and
 * the portable fleet core, driven by one task.
 *
 * app_main() only sets things up. Every IDF handler (network, IP, MQTT, SNTP) enqueues a
 * fleet_ev_t; fleet_task() drains the queue, runs the core's timers and is the only
 * code that touches the core. The call button (button.c) posts its presses the same way.
 */
#include <stdlib.h>
#include <string.h>

#include "button.h"
#include "config_nvs.h"
#include "esp_app_desc.h"
#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "esp_netif_sntp.h"
#include "esp_timer.h"
#include "fleet_audio.h"
#include "fleet_core.h"
#include "fleet_events.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "net.h"
#include "nvs_flash.h"
#include "port_esp.h"
#include "sdkconfig.h"

static const char *TAG = "fleet_main";

/* The core's state is static, yet command parsing with newlib's printf and set_groups'
 * NVS write went past 8 KB of stack on the device. */
#define TASK_STACK       12288
#define TASK_PRIORITY    5
#define MAX_TASK_WAIT_MS 100 /* poll the link's backoff and identify at least this often */

static fleet_core_t core; /* about 28 KB (bench/firmware_size.sh): static, never on a stack */
static fleet_nvs_config_t cfg;

static uint64_t now_ms(void)
{
    return (uint64_t)(esp_timer_get_time() / 1000);
}

static void fleet_task(void *arg)
{
    fleet_ev_t ev;
    (void)arg;
    for (;;) {
        uint32_t wait = fleet_core_tick(&core);
        if (wait > MAX_TASK_WAIT_MS) {
            wait = MAX_TASK_WAIT_MS;
        }
        if (fleet_ev_take(&ev, wait)) {
            fleet_net_handle(&ev, now_ms());
            fleet_port_esp_handle(&ev);
            fleet_audio_handle(&ev);
            if (ev.type == FLEET_EV_BUTTON) {
                fleet_core_button(&core, FLEET_BUTTON_SHORT);
            }
            free(ev.topic);
            free(ev.data);
        }
        fleet_net_poll(now_ms());
        fleet_port_esp_poll(now_ms());
    }
}

static void init_nvs(void)
{
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        /* Only the layout is lost here: provisioning writes the keys again. */
        ESP_ERROR_CHECK(nvs_flash_erase());
        err = nvs_flash_init();
    }
    ESP_ERROR_CHECK(err);
}

void app_main(void)
{
    init_nvs();
    if (fleet_config_load(&cfg) != ESP_OK) {
        /* Without an identity there is nothing to connect as; stay up for the console. */
        ESP_LOGE(TAG, "not provisioned: write the NVS namespace 'fleet' and restart");
        return;
    }

    ESP_ERROR_CHECK(fleet_ev_init());
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());

    (void)fleet_audio_init(&core); /* ESP_ERR_NOT_SUPPORTED: signalling only */

    fleet_config_t fc;
    memset(&fc, 0, sizeof fc);
    fc.device_id = cfg.device_id;
    fc.prefix = NULL; /* fleet/v1 */
    fc.groups = cfg.groups;
    fc.n_groups = cfg.n_groups;
    fc.fw = esp_app_get_description()->version;
    fc.hw = CONFIG_FLEET_HW_NAME;
    fleet_audio_caps(&fc.caps);
    fc.tele_interval_ms = (uint32_t)CONFIG_FLEET_TELE_INTERVAL_S * 1000u;
    fc.pending_cmd_id = fleet_port_esp_pending();
    fc.pending_is_ota = fleet_port_esp_pending_ota(&fc.pending_error);
    fc.call_to = cfg.call_to;
    const fleet_port_t *port = fleet_port_esp_table(fleet_audio_media(), fleet_audio_player());
    if (!fleet_core_init(&core, &fc, port)) {
        ESP_LOGE(TAG, "configuration refused by the core (see above)");
        return;
    }
    ESP_ERROR_CHECK(fleet_port_esp_mqtt_init(&core, &cfg));

    esp_sntp_config_t sntp = ESP_NETIF_SNTP_DEFAULT_CONFIG(cfg.ntp);
    sntp.sync_cb = fleet_port_esp_time_cb;
    ESP_ERROR_CHECK(esp_netif_sntp_init(&sntp));

    /* The task first: network events may arrive as soon as the link starts. */
    xTaskCreate(fleet_task, "fleet", TASK_STACK, NULL, TASK_PRIORITY, NULL);
    fleet_button_start();
    ESP_ERROR_CHECK(fleet_net_start(cfg.wifi_ssid, cfg.wifi_pass));
    ESP_LOGI(TAG, "espfleet %s on %s as %s, %u groups", fc.fw, fc.hw, cfg.device_id,
             (unsigned)cfg.n_groups);
#if CONFIG_FLEET_NET_OPENETH
    /* Emulation builds keep the main task: on the Debian-built toolchain its deletion
     * asserts in FreeRTOS and the image reboots in a loop. */
    for (;;) {
        vTaskDelay(portMAX_DELAY);
    }
#endif
}
