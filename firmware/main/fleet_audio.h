/*
 * fleet_audio.h - the audio/WebRTC layer of the ESP build (interface).
 *
 * THIS IS WHERE I2S + OPUS + ESP_PEER GO. The intended implementation:
 *  - I2S in/out (codec on the board: ES8311/ES7210 and the like via esp_codec_dev),
 *    48 kHz mono, 20 ms frames (960 samples), as DESIGN.md fixes for the whole fleet;
 *  - Opus encode/decode (esp_audio_codec), one encoder for the mic, one decoder per peer;
 *  - one esp_peer connection per remote participant (mesh; ~60 KB RAM each, so a room
 *    cap of 2-3 ESP members on an ESP32-S3 with PSRAM); vanilla ICE, candidates in the SDP.
 *
 * The core drives it through fleet_media_t (fleet_port.h): start() when the meeting
 * server confirms the join, add_peer() per member (we_offer = true for the members
 * listed in `joined`: the newcomer offers, protocol.md 8.1), remote_sdp() for relayed
 * offers/answers, remove_peer(), stop(). Outgoing SDP goes through
 * fleet_core_send_sdp(), from the fleet task. Per-peer statistics feed telemetry
 * through fleet_audio_stats().
 *
 * This build ships a placeholder: fleet_audio_media() returns NULL, the birth says
 * caps.audio = false, and the device joins rooms as a signalling-only member.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "esp_err.h"
#include "fleet_core.h"
#include "fleet_msg.h"
#include "fleet_port.h"

typedef struct {
    int i2s_port;    /* I2S peripheral for the codec */
    int sample_rate; /* 48000 */
    int frame_ms;    /* 20 */
    int max_peers;   /* esp_peer connections, 2-3 on an S3 with PSRAM */
} fleet_audio_config_t;

/* Brings up I2S, the codec and the Opus encoder; ESP_ERR_NOT_SUPPORTED in this build. */
esp_err_t fleet_audio_init(const fleet_audio_config_t *cfg, fleet_core_t *core);

/* The media table for fleet_port_t.media, or NULL when the build has no audio. */
const fleet_media_t *fleet_audio_media(void);

/* What to advertise in the birth and in join (caps). */
void fleet_audio_caps(fleet_caps_t *caps);

/* Per-peer statistics for telemetry; returns how many entries were written (<= cap). */
size_t fleet_audio_stats(fleet_peer_audio_t *out, size_t cap);
