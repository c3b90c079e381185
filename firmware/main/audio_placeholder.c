/*
 * audio_placeholder.c - the audio/WebRTC module of this build: a placeholder.
 *
 * Every function below marks the spot where the real implementation goes (see
 * fleet_audio.h for the design). Until then the device is signalling-only: it joins
 * rooms, reports session and peers, and ignores SDP.
 */
#include "fleet_audio.h"

#include <string.h>

#include "esp_log.h"

static const char *TAG = "fleet_audio";

static fleet_core_t *core_for_sdp; /* for fleet_core_send_sdp() once offers are made here */

static bool media_start(void *ctx, const char *room, const char *session, const char *participant,
                        bool mic, int volume)
{
    (void)ctx;
    /* Real build: start I2S capture/playback, the Opus encoder, the mic gate and volume. */
    ESP_LOGI(TAG, "start room %s session %s as %s (mic %d, volume %d): no audio in this build",
             room, session, participant, (int)mic, volume);
    return false;
}

static void media_set_mic(void *ctx, bool on)
{
    (void)ctx;
    /* Real build: gate the encoder input (send silence frames, keep the RTP clock). */
    ESP_LOGI(TAG, "mic %s", on ? "on" : "off");
}

static void media_set_volume(void *ctx, int volume)
{
    (void)ctx;
    /* Real build: esp_codec_dev_set_out_vol(). */
    ESP_LOGI(TAG, "volume %d", volume);
}

static bool media_add_peer(void *ctx, const char *participant, bool we_offer)
{
    (void)ctx;
    /* Real build: esp_peer_open() for this participant; when we_offer, create the offer
     * and send it with fleet_core_send_sdp(core_for_sdp, participant, true, sdp). */
    ESP_LOGI(TAG, "peer %s (%s)", participant, we_offer ? "we offer" : "they offer");
    (void)core_for_sdp;
    return false;
}

static bool media_remote_sdp(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    (void)ctx;
    /* Real build: esp_peer_new_connection / set remote description; for an offer, answer
     * with fleet_core_send_sdp(core_for_sdp, from, false, answer). */
    ESP_LOGI(TAG, "%s from %s (%u bytes) ignored", is_offer ? "offer" : "answer", from,
             (unsigned)strlen(sdp));
    return false;
}

static void media_remove_peer(void *ctx, const char *participant)
{
    (void)ctx;
    /* Real build: esp_peer_close() and free its decoder. */
    ESP_LOGI(TAG, "peer %s gone", participant);
}

static void media_stop(void *ctx)
{
    (void)ctx;
    /* Real build: close every peer, stop I2S, free the codecs. */
    ESP_LOGI(TAG, "stop");
}

/* The table a real build returns from fleet_audio_media(). */
static const fleet_media_t placeholder_media = {
    .ctx = NULL,
    .start = media_start,
    .set_mic = media_set_mic,
    .set_volume = media_set_volume,
    .add_peer = media_add_peer,
    .remote_sdp = media_remote_sdp,
    .remove_peer = media_remove_peer,
    .stop = media_stop,
};

esp_err_t fleet_audio_init(const fleet_audio_config_t *cfg, fleet_core_t *core)
{
    core_for_sdp = core;
    ESP_LOGW(TAG, "audio placeholder: I2S %d, %d Hz, %d ms frames, %d peers not started",
             cfg->i2s_port, cfg->sample_rate, cfg->frame_ms, cfg->max_peers);
    return ESP_ERR_NOT_SUPPORTED;
}

const fleet_media_t *fleet_audio_media(void)
{
    /* NULL, not &placeholder_media: a device that cannot play must not look like one.
     * A real build returns its table here once fleet_audio_init() succeeded. */
    (void)placeholder_media;
    return NULL;
}

void fleet_audio_caps(fleet_caps_t *caps)
{
    memset(caps, 0, sizeof *caps); /* audio, mic, speaker false; no codecs */
}

size_t fleet_audio_stats(fleet_peer_audio_t *out, size_t cap)
{
    (void)out;
    (void)cap;
    return 0;
}
