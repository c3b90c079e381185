/*
 * button.c - the call button: a small task polls the GPIO (active low, pulled up) every
 * 10 ms and posts FLEET_EV_BUTTON when it goes down for 30 ms after having been up, so a
 * pin held low from boot (or a strap pin an emulator reads as 0) never counts as a press.
 */
#include "button.h"

#include <stdbool.h>
#include <string.h>

#include "driver/gpio.h"
#include "esp_log.h"
#include "fleet_events.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "sdkconfig.h"

static const char *TAG = "fleet_button";

#define POLL_MS      10
#define DEBOUNCE     3 /* polls a new level must hold */
#define BUTTON_STACK 2048

static void button_task(void *arg)
{
    gpio_num_t pin = (gpio_num_t)(intptr_t)arg;
    int stable = gpio_get_level(pin);
    bool armed = stable == 1; /* a press is a fall from up */
    int held = 0;
    for (;;) {
        vTaskDelay(pdMS_TO_TICKS(POLL_MS));
        int level = gpio_get_level(pin);
        if (level == stable) {
            held = 0;
            continue;
        }
        if (++held < DEBOUNCE) {
            continue;
        }
        stable = level;
        held = 0;
        if (stable == 1) {
            armed = true;
        } else if (armed) {
            fleet_ev_t ev;
            memset(&ev, 0, sizeof ev);
            ev.type = FLEET_EV_BUTTON;
            fleet_ev_post(&ev);
        }
    }
}

void fleet_button_start(void)
{
    int gpio = CONFIG_FLEET_CALL_BUTTON_GPIO;
    if (gpio < 0) {
        return;
    }
    gpio_reset_pin((gpio_num_t)gpio);
    gpio_set_direction((gpio_num_t)gpio, GPIO_MODE_INPUT);
    gpio_set_pull_mode((gpio_num_t)gpio, GPIO_PULLUP_ONLY);
    if (xTaskCreate(button_task, "button", BUTTON_STACK, (void *)(intptr_t)gpio, 4, NULL) !=
        pdPASS) {
        ESP_LOGW(TAG, "no memory for the button task: the call button is off");
        return;
    }
    ESP_LOGI(TAG, "call button on GPIO%d", gpio);
}
