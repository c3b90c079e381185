/*
 * fleet_events.c - the event queue (fleet_events.h): IDF's handlers post to it from their
 * own tasks, the fleet task takes from it.
 */
#include "fleet_events.h"

#include <stdlib.h>

#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"

static const char *TAG = "fleet_events";

#define QUEUE_LEN 32

static QueueHandle_t queue;
static uint32_t dropped_events; /* written by the posting tasks, read by the fleet task */
static uint32_t reported_drops;

esp_err_t fleet_ev_init(void)
{
    queue = xQueueCreate(QUEUE_LEN, sizeof(fleet_ev_t));
    return queue != NULL ? ESP_OK : ESP_ERR_NO_MEM;
}

void fleet_ev_post(const fleet_ev_t *ev)
{
    if (xQueueSend(queue, ev, 0) != pdTRUE) {
        free(ev->topic);
        free(ev->data);
        dropped_events++;
    }
}

bool fleet_ev_take(fleet_ev_t *ev, uint32_t wait_ms)
{
    if (dropped_events != reported_drops) {
        reported_drops = dropped_events;
        ESP_LOGW(TAG, "event queue full: %lu events dropped so far", (unsigned long)reported_drops);
    }
    return xQueueReceive(queue, ev, pdMS_TO_TICKS(wait_ms)) == pdTRUE;
}
