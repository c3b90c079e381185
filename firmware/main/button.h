/*
 * button.h - the call button (Kconfig: espfleet -> FLEET_CALL_BUTTON_GPIO, the BOOT button by
 * default): a short press reaches the fleet task as FLEET_EV_BUTTON, which hands it to
 * fleet_core_button() (answer a ring, hang up a call, or call NVS call_to).
 */
#pragma once

/* Starts the button's polling task; nothing when the GPIO is -1. */
void fleet_button_start(void);
