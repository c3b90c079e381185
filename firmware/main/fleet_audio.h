/*
 * fleet_audio.h - the audio/WebRTC layer of the ESP build (fleet_audio.c).
 *
 * The board (Kconfig: espfleet -> Audio board) decides what there is:
 *  - ESP32-S3-Korvo-2: ES8311 speaker + ES7210 microphones through esp_codec_dev;
 *  - XIAO ESP32S3 Sense: a PDM microphone, no speaker (send-only);
 *  - none (the default, and every ESP32-C3): signalling only, caps.audio = false.
 * Opus through esp_audio_codec, WebRTC through esp_peer (one connection to the mixer in a
 * mixed room, at most two in a mesh), the media core (components/media_core) in between,
 * at CONFIG_FLEET_AUDIO_RATE with 20 ms frames.
 *
 * The core drives it through fleet_media_t (fleet_port.h). esp_peer's callbacks run in
 * its own task: what must reach the core (our SDP, a rejection) comes back to the fleet
 * task as FLEET_EV_MEDIA events, handled by fleet_audio_handle().
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "esp_err.h"
#include "fleet_core.h"
#include "fleet_events.h"
#include "fleet_msg.h"
#include "fleet_port.h"

/* Brings up the board's audio, the media core and the tasks; ESP_ERR_NOT_SUPPORTED when the
 * build has no audio board. The board, its sample rate and the peer count come from Kconfig
 * (FLEET_AUDIO_RATE exists only in builds with an audio board). */
esp_err_t fleet_audio_init(fleet_core_t *core);

/* The media table for fleet_port_t.media, or NULL when there is no audio. */
const fleet_media_t *fleet_audio_media(void);

/* The table for fleet_port_t.player (announcements and the ring tone through the speaker,
 * mixed over the meeting by the media core), or NULL when the board has no speaker. */
const fleet_player_t *fleet_audio_player(void);

/* What to advertise in the birth and in join (caps), from what the board has. */
void fleet_audio_caps(fleet_caps_t *caps);

/* Per-peer statistics for telemetry; returns how many entries were written (<= cap). */
size_t fleet_audio_stats(fleet_peer_audio_t *out, size_t cap);

/* Fleet task: a FLEET_EV_MEDIA event (SDP to send, a rejection). Other events: ignored. */
void fleet_audio_handle(const fleet_ev_t *ev);
