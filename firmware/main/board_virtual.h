/*
 * board_virtual.h - the virtual audio board (Kconfig: espfleet -> Audio board -> Virtual):
 * what a codec chip does, in software, for running the audio path in emulation. The
 * microphone is a sine tone; the speaker is a level meter that logs, once a second, the
 * RMS and the strongest frequency of what it played. fleet_audio.c's audio task calls it
 * exactly as it calls a real board: one frame in, one frame out, every frame_ms.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"

/* rate in Hz, frame in samples, tone_hz the microphone's sine. */
esp_err_t board_virtual_init(int rate, int frame, int tone_hz);

/* One frame of the tone, at the pace of a real microphone's DMA (sleeps until it is due). */
bool board_virtual_read(int16_t *pcm);

/* One frame to the speaker: measured, logged once a second, then dropped. */
void board_virtual_write(const int16_t *pcm);
