/*
 * ota_esp.c - esp_https_ota in its own task (a download takes seconds and must not stall
 * the fleet task); the result goes back as FLEET_EV_OTA. What to do with it (restart into
 * the new slot, or a failed ack) is port_esp.c's. The task is made at the first update and
 * then waits for the next one: a task that logged and is deleted takes newlib's stdio locks
 * in the idle task's cleanup, which the emulation toolchain's newlib turns into an abort.
 */
#include "ota_esp.h"

#include <stdlib.h>
#include <string.h>

#include "esp_crt_bundle.h"
#include "esp_http_client.h"
#include "esp_https_ota.h"
#include "esp_log.h"
#include "esp_ota_ops.h"
#include "fleet_events.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

static const char *TAG = "fleet_ota";

#define OTA_STACK      8192 /* an https download runs mbedTLS on this stack */
#define OTA_PRIORITY   4    /* below the fleet task: acks and state go first */
#define OTA_TIMEOUT_MS 15000

static char *url_copy; /* non-NULL while a download runs */
static uint32_t target_addr;
static TaskHandle_t ota_handle;

static void download(void)
{
    esp_http_client_config_t http;
    memset(&http, 0, sizeof http);
    http.url = url_copy;
    http.timeout_ms = OTA_TIMEOUT_MS;
    http.keep_alive_enable = true;
    http.crt_bundle_attach = esp_crt_bundle_attach; /* https: the public CAs */
    esp_https_ota_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.http_config = &http;
    ESP_LOGI(TAG, "downloading %s", url_copy);
    esp_err_t err = esp_https_ota(&cfg); /* validates the image and sets the boot slot */
    ESP_LOGI(TAG, "download ended: %s", esp_err_to_name(err));

    fleet_ev_t ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FLEET_EV_OTA;
    ev.code = err;
    free(url_copy);
    url_copy = NULL;
    fleet_ev_post(&ev);
}

static void ota_task(void *arg)
{
    (void)arg;
    for (;;) {
        (void)ulTaskNotifyTake(pdTRUE, portMAX_DELAY);
        download();
    }
}

bool fleet_ota_start(const char *url)
{
    if (url_copy != NULL) {
        return false;
    }
    const esp_partition_t *next = esp_ota_get_next_update_partition(NULL);
    if (next == NULL) {
        return false;
    }
    target_addr = next->address;
    url_copy = strdup(url);
    if (url_copy == NULL) {
        return false;
    }
    if (ota_handle == NULL &&
        xTaskCreate(ota_task, "ota", OTA_STACK, NULL, OTA_PRIORITY, &ota_handle) != pdPASS) {
        free(url_copy);
        url_copy = NULL;
        return false;
    }
    xTaskNotifyGive(ota_handle);
    return true;
}

uint32_t fleet_ota_target(void)
{
    return target_addr;
}

uint32_t fleet_ota_running(void)
{
    const esp_partition_t *run = esp_ota_get_running_partition();
    return run != NULL ? run->address : 0;
}

void fleet_ota_confirm_image(void)
{
    esp_ota_img_states_t state;
    const esp_partition_t *run = esp_ota_get_running_partition();
    if (run != NULL && esp_ota_get_state_partition(run, &state) == ESP_OK &&
        state == ESP_OTA_IMG_PENDING_VERIFY) {
        esp_err_t err = esp_ota_mark_app_valid_cancel_rollback();
        ESP_LOGI(TAG, "new image confirmed: %s", esp_err_to_name(err));
    }
}
