/*
 * fleet_audio.c - device audio on the ESP32-S3: the board's codec through esp_codec_dev
 * (or a PDM microphone through the I2S driver), Opus through esp_audio_codec, WebRTC
 * through esp_peer, and the media core (components/media_core) for everything between.
 *
 * Thin on purpose: every decision that can be tested (frame timing within a frame, jitter,
 * concealment, mixing, volume, clipping, the mic gate, G.711, codec choice from SDP, stats)
 * is the media core's, proven on the host. What is here is wiring, and only a board can
 * prove it (firmware/README.md lists what).
 *
 * Tasks: the fleet task calls the fleet_media_t table (fleet_core) and fleet_audio_handle()
 * for what the peers queued; one audio task reads 20 ms from the microphone (the I2S DMA
 * paces it), runs mc_frame() (which plays announcements and the ring tone over the meeting,
 * in a meeting or not) and writes the speaker; one peer task runs esp_peer's main
 * loops. esp_peer's callbacks run in the peer task: they queue SDP and trickled candidates
 * for the fleet task and feed received frames to the media core, which a mutex guards.
 */
#include "fleet_audio.h"

#include <stdlib.h>
#include <string.h>

#include "esp_check.h"
#include "esp_log.h"
#include "fleet_events.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "media_core.h"
#include "sdkconfig.h"

#if CONFIG_FLEET_AUDIO
#include "driver/i2s_std.h"
#include "esp_opus_dec.h"
#include "esp_opus_enc.h"
#include "esp_peer.h"
#include "esp_peer_default.h"
#if CONFIG_FLEET_BOARD_KORVO2
#include "driver/i2c_master.h"
#include "esp_codec_dev.h"
#include "esp_codec_dev_defaults.h"
#endif
#if CONFIG_FLEET_BOARD_XIAO_S3_SENSE
#include "driver/i2s_pdm.h"
#endif
#if CONFIG_FLEET_BOARD_VIRTUAL
#include "board_virtual.h"
#endif
#endif

static const char *TAG = "fleet_audio";

#if !CONFIG_FLEET_AUDIO

/* A board without audio (ESP32-C3, or none chosen): signalling only. */
esp_err_t fleet_audio_init(fleet_core_t *core)
{
    (void)core;
    ESP_LOGI(TAG, "no audio board configured: a signalling-only member");
    return ESP_ERR_NOT_SUPPORTED;
}

const fleet_media_t *fleet_audio_media(void)
{
    return NULL;
}

const fleet_player_t *fleet_audio_player(void)
{
    return NULL;
}

void fleet_audio_caps(fleet_caps_t *caps)
{
    memset(caps, 0, sizeof *caps);
}

size_t fleet_audio_stats(fleet_peer_audio_t *out, size_t cap)
{
    (void)out;
    (void)cap;
    return 0;
}

void fleet_audio_handle(const fleet_ev_t *ev)
{
    (void)ev;
}

#else

#define RATE      CONFIG_FLEET_AUDIO_RATE /* 16000: Opus wideband, a quarter of 48 kHz's CPU */
#define FRAME     (RATE / 50)
#define MAX_PEERS 2 /* one mixer connection, or a mesh of two (~60 KB each in PSRAM) */
#define ID_BYTES  FLEET_PEER_BYTES
#if CONFIG_FLEET_VIRTUAL_CODEC_PCMU
#define BOARD_CODEC MC_CODEC_PCMU
#else
#define BOARD_CODEC MC_CODEC_OPUS
#endif
/* Stacks as Espressif's own esp_peer solutions size them: the DTLS handshake (a Janus
 * certificate) overflowed 8 KB; the Opus encoder wants tens of KB, G.711 next to none. */
#define PEER_STACK  (25 * 1024)
#define AUDIO_STACK (BOARD_CODEC == MC_CODEC_OPUS ? 40 * 1024 : 6144)

typedef struct {
    bool used;
    char participant[ID_BYTES];
    uint32_t mc_id;
    bool we_offer;
    esp_peer_handle_t peer;
    bool negotiated;
} fa_peer_t;

static struct {
    fleet_core_t *core;
    SemaphoreHandle_t lock; /* mc and peers[].negotiated */
    mc_t mc;
    fa_peer_t peers[MAX_PEERS];
    uint32_t next_id;
    bool started;
    void *enc;
    mc_codec_t codec; /* what esp_peer offers (one codec per esp_peer connection) */
#if CONFIG_FLEET_BOARD_KORVO2
    esp_codec_dev_handle_t mic, spk;
#else
    i2s_chan_handle_t rx;
#endif
} fa;

/* ---- Opus through esp_audio_codec ---------------------------------------------------------- */

static void *opus_dec_new(void *ctx, uint32_t rate)
{
    (void)ctx;
    esp_opus_dec_cfg_t cfg = {
        .sample_rate = rate,
        .channel = 1,
        .frame_duration = ESP_OPUS_DEC_FRAME_DURATION_20_MS,
        .self_delimited = false,
    };
    void *dec = NULL;
    return esp_opus_dec_open(&cfg, sizeof cfg, &dec) == ESP_AUDIO_ERR_OK ? dec : NULL;
}

static int opus_decode(void *dec, const uint8_t *data, size_t len, int16_t *pcm, size_t max)
{
    esp_audio_dec_in_raw_t raw = {
        .buffer = (uint8_t *)data,
        .len = (uint32_t)len,
        /* A lost frame: the decoder's own concealment (PLC). */
        .frame_recover = data == NULL ? ESP_AUDIO_DEC_RECOVERY_PLC : ESP_AUDIO_DEC_RECOVERY_NONE,
    };
    esp_audio_dec_out_frame_t out = {.buffer = (uint8_t *)pcm, .len = (uint32_t)(max * 2)};
    esp_audio_dec_info_t info;
    if (esp_opus_dec_decode(dec, &raw, &out, &info) != ESP_AUDIO_ERR_OK) {
        return -1;
    }
    return (int)(out.decoded_size / 2);
}

static void opus_dec_free(void *dec)
{
    (void)esp_opus_dec_close(dec);
}

static void *opus_enc_new(void *ctx, uint32_t rate, uint32_t bitrate)
{
    (void)ctx;
    esp_opus_enc_config_t cfg = {
        .sample_rate = (int)rate,
        .channel = 1,
        .bits_per_sample = 16,
        .bitrate = (int)bitrate,
        .frame_duration = ESP_OPUS_ENC_FRAME_DURATION_20_MS,
        .application_mode = ESP_OPUS_ENC_APPLICATION_VOIP,
        .complexity = 3,
        .enable_fec = false,
        .enable_dtx = false, /* the mic gate sends silence: the RTP clock keeps running */
        .enable_vbr = false,
    };
    void *enc = NULL;
    return esp_opus_enc_open(&cfg, sizeof cfg, &enc) == ESP_AUDIO_ERR_OK ? enc : NULL;
}

static int opus_encode(void *enc, const int16_t *pcm, size_t n, uint8_t *out, size_t cap)
{
    esp_audio_enc_in_frame_t in = {.buffer = (uint8_t *)pcm, .len = (uint32_t)(n * 2)};
    esp_audio_enc_out_frame_t o = {.buffer = out, .len = (uint32_t)cap};
    if (esp_opus_enc_process(enc, &in, &o) != ESP_AUDIO_ERR_OK) {
        return -1;
    }
    return (int)o.encoded_bytes;
}

static void opus_enc_free(void *enc)
{
    esp_opus_enc_close(enc);
}

static const mc_opus_ops_t opus_ops = {
    .dec_new = opus_dec_new,
    .decode = opus_decode,
    .dec_free = opus_dec_free,
    .enc_new = opus_enc_new,
    .encode = opus_encode,
    .enc_free = opus_enc_free,
};

/* ---- the board ----------------------------------------------------------------------------- */

#if CONFIG_FLEET_BOARD_KORVO2
/* ESP32-S3-Korvo-2 V3: ES8311 (speaker, PA on GPIO48) and ES7210 (mics) on I2S0 and I2C0. */
static esp_err_t board_init(void)
{
    i2c_master_bus_handle_t bus = NULL;
    i2c_master_bus_config_t bus_cfg = {
        .i2c_port = I2C_NUM_0,
        .sda_io_num = GPIO_NUM_17,
        .scl_io_num = GPIO_NUM_18,
        .clk_source = I2C_CLK_SRC_DEFAULT,
        .glitch_ignore_cnt = 7,
        .flags.enable_internal_pullup = true,
    };
    ESP_RETURN_ON_ERROR(i2c_new_master_bus(&bus_cfg, &bus), TAG, "I2C bus");
    i2s_chan_handle_t tx = NULL, rx = NULL;
    i2s_chan_config_t chan = I2S_CHANNEL_DEFAULT_CONFIG(I2S_NUM_0, I2S_ROLE_MASTER);
    chan.auto_clear = true;
    ESP_RETURN_ON_ERROR(i2s_new_channel(&chan, &tx, &rx), TAG, "I2S channels");
    i2s_std_config_t std = {
        .clk_cfg = I2S_STD_CLK_DEFAULT_CONFIG(RATE),
        .slot_cfg = I2S_STD_PHILIPS_SLOT_DEFAULT_CONFIG(I2S_DATA_BIT_WIDTH_16BIT, I2S_SLOT_MODE_MONO),
        .gpio_cfg = {
            .mclk = GPIO_NUM_16,
            .bclk = GPIO_NUM_9,
            .ws = GPIO_NUM_45,
            .dout = GPIO_NUM_8,
            .din = GPIO_NUM_10,
        },
    };
    ESP_RETURN_ON_ERROR(i2s_channel_init_std_mode(tx, &std), TAG, "I2S tx");
    ESP_RETURN_ON_ERROR(i2s_channel_init_std_mode(rx, &std), TAG, "I2S rx");

    audio_codec_i2s_cfg_t i2s_cfg = {.port = I2S_NUM_0, .rx_handle = rx, .tx_handle = tx};
    const audio_codec_data_if_t *data_if = audio_codec_new_i2s_data(&i2s_cfg);
    audio_codec_i2c_cfg_t dac_i2c = {.port = I2C_NUM_0, .addr = ES8311_CODEC_DEFAULT_ADDR,
                                     .bus_handle = bus};
    es8311_codec_cfg_t dac = {
        .ctrl_if = audio_codec_new_i2c_ctrl(&dac_i2c),
        .gpio_if = audio_codec_new_gpio(),
        .codec_mode = ESP_CODEC_DEV_WORK_MODE_DAC,
        .pa_pin = GPIO_NUM_48,
        .use_mclk = true,
    };
    esp_codec_dev_cfg_t spk_cfg = {.dev_type = ESP_CODEC_DEV_TYPE_OUT,
                                   .codec_if = es8311_codec_new(&dac),
                                   .data_if = data_if};
    audio_codec_i2c_cfg_t adc_i2c = {.port = I2C_NUM_0, .addr = ES7210_CODEC_DEFAULT_ADDR,
                                     .bus_handle = bus};
    es7210_codec_cfg_t adc = {
        .ctrl_if = audio_codec_new_i2c_ctrl(&adc_i2c),
        .mic_selected = ES7210_SEL_MIC1 | ES7210_SEL_MIC2,
    };
    esp_codec_dev_cfg_t mic_cfg = {.dev_type = ESP_CODEC_DEV_TYPE_IN,
                                   .codec_if = es7210_codec_new(&adc),
                                   .data_if = data_if};
    fa.spk = esp_codec_dev_new(&spk_cfg);
    fa.mic = esp_codec_dev_new(&mic_cfg);
    if (fa.spk == NULL || fa.mic == NULL) {
        return ESP_FAIL;
    }
    esp_codec_dev_sample_info_t fs = {.bits_per_sample = 16, .channel = 1, .sample_rate = RATE};
    if (esp_codec_dev_open(fa.spk, &fs) != ESP_CODEC_DEV_OK ||
        esp_codec_dev_open(fa.mic, &fs) != ESP_CODEC_DEV_OK) {
        return ESP_FAIL;
    }
    (void)esp_codec_dev_set_in_gain(fa.mic, 30.0f);
    (void)esp_codec_dev_set_out_vol(fa.spk, 100); /* the media core applies the volume */
    return ESP_OK;
}

static bool board_read(int16_t *pcm)
{
    return esp_codec_dev_read(fa.mic, pcm, FRAME * 2) == ESP_CODEC_DEV_OK;
}

static void board_write(int16_t *pcm)
{
    (void)esp_codec_dev_write(fa.spk, pcm, FRAME * 2);
}

#define BOARD_SPEAKER true
#elif CONFIG_FLEET_BOARD_VIRTUAL
/* No chips: a tone and a level meter (board_virtual.c), for emulation. */
static esp_err_t board_init(void)
{
    return board_virtual_init(RATE, FRAME, CONFIG_FLEET_VIRTUAL_TONE_HZ);
}

static bool board_read(int16_t *pcm)
{
    return board_virtual_read(pcm);
}

static void board_write(int16_t *pcm)
{
    board_virtual_write(pcm);
}

#define BOARD_SPEAKER true
#else
/* XIAO ESP32S3 Sense: a PDM microphone (CLK GPIO42, DATA GPIO41), no speaker: send-only. */
static esp_err_t board_init(void)
{
    i2s_chan_config_t chan = I2S_CHANNEL_DEFAULT_CONFIG(I2S_NUM_0, I2S_ROLE_MASTER);
    ESP_RETURN_ON_ERROR(i2s_new_channel(&chan, NULL, &fa.rx), TAG, "I2S channel");
    i2s_pdm_rx_config_t pdm = {
        .clk_cfg = I2S_PDM_RX_CLK_DEFAULT_CONFIG(RATE),
        .slot_cfg = I2S_PDM_RX_SLOT_DEFAULT_CONFIG(I2S_DATA_BIT_WIDTH_16BIT, I2S_SLOT_MODE_MONO),
        .gpio_cfg = {.clk = GPIO_NUM_42, .din = GPIO_NUM_41},
    };
    ESP_RETURN_ON_ERROR(i2s_channel_init_pdm_rx_mode(fa.rx, &pdm), TAG, "PDM rx");
    return i2s_channel_enable(fa.rx);
}

static bool board_read(int16_t *pcm)
{
    size_t got = 0;
    return i2s_channel_read(fa.rx, pcm, FRAME * 2, &got, portMAX_DELAY) == ESP_OK &&
           got == FRAME * 2;
}

static void board_write(int16_t *pcm)
{
    (void)pcm;
}

#define BOARD_SPEAKER false
#endif

/* ---- esp_peer ------------------------------------------------------------------------------ */

static fa_peer_t *peer_find(const char *participant)
{
    for (size_t i = 0; i < MAX_PEERS; i++) {
        if (fa.peers[i].used && strcmp(fa.peers[i].participant, participant) == 0) {
            return &fa.peers[i];
        }
    }
    return NULL;
}

/* To the fleet task, which alone may call the core. */
static void post(int32_t code, const char *participant, const uint8_t *data, size_t len)
{
    fleet_ev_t ev;
    memset(&ev, 0, sizeof ev);
    ev.type = FLEET_EV_MEDIA;
    ev.code = code;
    ev.topic = strdup(participant);
    ev.topic_len = strlen(participant);
    ev.data = malloc(len + 1);
    if (ev.topic == NULL || ev.data == NULL) {
        free(ev.topic);
        free(ev.data);
        return;
    }
    memcpy(ev.data, data, len);
    ev.data[len] = '\0';
    ev.data_len = len;
    fleet_ev_post(&ev);
}

#define MEDIA_SDP       0
#define MEDIA_REJECT    1
#define MEDIA_CANDIDATE 2

static int on_msg(esp_peer_msg_t *msg, void *ctx)
{
    fa_peer_t *p = ctx;
    if (msg->type == ESP_PEER_MSG_TYPE_SDP) {
        post(MEDIA_SDP, p->participant, msg->data, (size_t)msg->size);
    } else if (msg->type == ESP_PEER_MSG_TYPE_CANDIDATE) {
        /* esp_peer trickles ("a=candidate:...\r\n"): each one goes out as MeetCandidate,
         * in the order esp_peer hands them over (protocol.md 8.6). */
        post(MEDIA_CANDIDATE, p->participant, msg->data, (size_t)msg->size);
    }
    return 0;
}

static int on_state(esp_peer_state_t state, void *ctx)
{
    fa_peer_t *p = ctx;
    ESP_LOGI(TAG, "peer %s: state %d", p->participant, (int)state);
    return 0;
}

static int on_audio_data(esp_peer_audio_frame_t *frame, void *ctx)
{
    fa_peer_t *p = ctx;
    /* esp_peer hands out payloads with a millisecond pts: one 20 ms frame per step. */
    uint16_t seq = (uint16_t)(frame->pts / MC_FRAME_MS);
    uint32_t ts = frame->pts * (mc_codec_clock(fa.codec) / 1000u);
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    if (p->negotiated) {
        (void)mc_peer_payload(&fa.mc, p->mc_id, seq, ts, frame->data, (size_t)frame->size,
                              (uint64_t)(xTaskGetTickCount() * portTICK_PERIOD_MS));
    }
    xSemaphoreGive(fa.lock);
    return 0;
}

static esp_peer_audio_codec_t peer_codec(mc_codec_t c)
{
    return c == MC_CODEC_OPUS ? ESP_PEER_AUDIO_CODEC_OPUS
           : c == MC_CODEC_PCMU ? ESP_PEER_AUDIO_CODEC_G711U
                                : ESP_PEER_AUDIO_CODEC_G711A;
}

static bool peer_open(fa_peer_t *p, mc_codec_t codec)
{
    esp_peer_default_cfg_t extra = {.agent_recv_timeout = 100};
    esp_peer_cfg_t cfg = {
        .role = p->we_offer ? ESP_PEER_ROLE_CONTROLLING : ESP_PEER_ROLE_CONTROLLED,
        .ice_trans_policy = ESP_PEER_ICE_TRANS_POLICY_ALL,
        .audio_info = {.codec = peer_codec(codec),
                       .sample_rate = codec == MC_CODEC_OPUS ? 48000 : 8000,
                       .channel = 1},
        .audio_dir = BOARD_SPEAKER ? ESP_PEER_MEDIA_DIR_SEND_RECV : ESP_PEER_MEDIA_DIR_SEND_ONLY,
        .video_dir = ESP_PEER_MEDIA_DIR_NONE,
        .no_auto_reconnect = true,
        .enable_data_channel = false,
        .extra_cfg = &extra,
        .extra_size = sizeof extra,
        .ctx = p,
        .on_state = on_state,
        .on_msg = on_msg,
        .on_audio_data = on_audio_data,
    };
    if (esp_peer_open(&cfg, esp_peer_get_default_impl(), &p->peer) != ESP_PEER_ERR_NONE) {
        return false;
    }
    return esp_peer_new_connection(p->peer) == ESP_PEER_ERR_NONE;
}

static void negotiated(fa_peer_t *p, mc_codec_t codec, uint8_t pt)
{
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    p->negotiated = mc_peer_add(&fa.mc, p->mc_id, codec, pt, true, BOARD_SPEAKER);
    xSemaphoreGive(fa.lock);
    ESP_LOGI(TAG, "peer %s: %s", p->participant, mc_codec_name(codec));
}

static void peer_close(fa_peer_t *p)
{
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_peer_remove(&fa.mc, p->mc_id);
    p->negotiated = false;
    esp_peer_handle_t h = p->peer;
    p->peer = NULL;
    xSemaphoreGive(fa.lock);
    if (h != NULL) {
        (void)esp_peer_close(h);
    }
    p->used = false;
}

static void send_rtp(void *ctx, uint32_t peer_id, const uint8_t *rtp, size_t len)
{
    (void)ctx; /* mc_frame, under the lock: esp_peer does RTP itself, so the payload only */
    mc_rtp_t h;
    if (!mc_rtp_parse(rtp, len, &h)) {
        return;
    }
    for (size_t i = 0; i < MAX_PEERS; i++) {
        fa_peer_t *p = &fa.peers[i];
        if (p->used && p->negotiated && p->mc_id == peer_id) {
            esp_peer_audio_frame_t f = {.pts = h.ts / (mc_codec_clock(fa.codec) / 1000u),
                                        .data = (uint8_t *)h.payload,
                                        .size = (int)h.payload_len};
            (void)esp_peer_send_audio(p->peer, &f);
        }
    }
}

/* ---- fleet_media_t ------------------------------------------------------------------------- */

static bool m_start(void *ctx, const char *room, const char *session, const char *participant,
                    bool mic, int volume)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_set_mic(&fa.mc, mic);
    if (volume >= 0) {
        mc_set_volume(&fa.mc, volume);
    }
    fa.started = true;
    xSemaphoreGive(fa.lock);
    ESP_LOGI(TAG, "room %s session %s as %s", room, session, participant);
    return true;
}

static void m_set_mic(void *ctx, bool on)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_set_mic(&fa.mc, on);
    xSemaphoreGive(fa.lock);
}

static void m_set_volume(void *ctx, int volume)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_set_volume(&fa.mc, volume);
    xSemaphoreGive(fa.lock);
}

static fa_peer_t *peer_new(const char *participant, bool we_offer)
{
    for (size_t i = 0; i < MAX_PEERS; i++) {
        fa_peer_t *p = &fa.peers[i];
        if (!p->used && strlen(participant) < ID_BYTES) {
            memset(p, 0, sizeof *p);
            p->used = true;
            p->we_offer = we_offer;
            p->mc_id = ++fa.next_id;
            memcpy(p->participant, participant, strlen(participant) + 1);
            return p;
        }
    }
    ESP_LOGW(TAG, "peer %s: no room (at most %d on this board)", participant, MAX_PEERS);
    return NULL;
}

static bool m_add_peer(void *ctx, const char *participant, bool we_offer)
{
    (void)ctx;
    fa_peer_t *old = peer_find(participant);
    if (old != NULL) {
        peer_close(old);
    }
    fa_peer_t *p = peer_new(participant, we_offer);
    if (p == NULL) {
        return false;
    }
    if (we_offer && !peer_open(p, fa.codec)) {
        peer_close(p);
        return false;
    }
    return true;
}

static bool m_remote_sdp(void *ctx, const char *from, bool is_offer, const char *sdp)
{
    (void)ctx;
    fa_peer_t *p = peer_find(from);
    mc_codec_t codec;
    uint8_t pt;
    unsigned allowed = MC_ALLOW(fa.codec);
    if (!mc_sdp_audio(sdp, strlen(sdp), allowed, &codec, &pt)) {
        post(MEDIA_REJECT, from, (const uint8_t *)"no audio codec in common",
             strlen("no audio codec in common"));
        return false;
    }
    if (is_offer) {
        if (p != NULL) {
            peer_close(p);
        }
        p = peer_new(from, false);
        if (p == NULL || !peer_open(p, codec)) {
            if (p != NULL) {
                peer_close(p);
            }
            return false;
        }
    } else if (p == NULL || p->peer == NULL) {
        return false;
    }
    esp_peer_msg_t msg = {.type = ESP_PEER_MSG_TYPE_SDP,
                          .data = (uint8_t *)sdp,
                          .size = (int)strlen(sdp)};
    if (esp_peer_send_msg(p->peer, &msg) != ESP_PEER_ERR_NONE) {
        return false;
    }
    negotiated(p, codec, pt);
    return true;
}

/* A peer's trickled candidate, after its SDP (the core holds earlier ones). esp_peer takes
 * "candidate:..." with or without "a=" and has no end-of-candidates message. */
static bool m_remote_candidate(void *ctx, const char *from, const char *mid, const char *candidate)
{
    (void)ctx;
    (void)mid; /* one audio section */
    fa_peer_t *p = peer_find(from);
    if (p == NULL || p->peer == NULL) {
        return false;
    }
    if (candidate == NULL) {
        return true;
    }
    esp_peer_msg_t msg = {.type = ESP_PEER_MSG_TYPE_CANDIDATE,
                          .data = (uint8_t *)candidate,
                          .size = (int)strlen(candidate)};
    return esp_peer_send_msg(p->peer, &msg) == ESP_PEER_ERR_NONE;
}

static void m_remove_peer(void *ctx, const char *participant)
{
    (void)ctx;
    fa_peer_t *p = peer_find(participant);
    if (p != NULL) {
        peer_close(p);
    }
}

static void m_stop(void *ctx)
{
    (void)ctx;
    for (size_t i = 0; i < MAX_PEERS; i++) {
        if (fa.peers[i].used) {
            peer_close(&fa.peers[i]);
        }
    }
    fa.started = false;
}

static size_t m_stats(void *ctx, fleet_peer_audio_t *out, size_t cap)
{
    (void)ctx;
    return fleet_audio_stats(out, cap);
}

static const fleet_media_t media = {
    .start = m_start,
    .set_mic = m_set_mic,
    .set_volume = m_set_volume,
    .add_peer = m_add_peer,
    .remote_sdp = m_remote_sdp,
    .remote_candidate = m_remote_candidate,
    .remove_peer = m_remove_peer,
    .stop = m_stop,
    .stats = m_stats,
};

/* ---- fleet_player_t: announcements and the ring, on the media core ------------------------ */

static bool p_ann_frame(void *ctx, fleet_ann_codec_t codec, const uint8_t *data, size_t len)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    bool ok = mc_ann_push(&fa.mc, codec == FLEET_ANN_PCMU ? MC_CODEC_PCMU : MC_CODEC_OPUS, data,
                          len);
    xSemaphoreGive(fa.lock);
    return ok;
}

static void p_ann_flush(void *ctx)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_ann_flush(&fa.mc);
    xSemaphoreGive(fa.lock);
}

static void p_ann_progress(void *ctx, uint32_t *queued, uint32_t *played)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_ann_progress(&fa.mc, queued, played);
    xSemaphoreGive(fa.lock);
}

static void p_ring(void *ctx, bool on)
{
    (void)ctx;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    mc_ring(&fa.mc, on);
    xSemaphoreGive(fa.lock);
}

static const fleet_player_t player = {
    .ann_frame = p_ann_frame,
    .ann_flush = p_ann_flush,
    .ann_progress = p_ann_progress,
    .ring = p_ring,
};

/* ---- tasks --------------------------------------------------------------------------------- */

static void audio_task(void *arg)
{
    static int16_t mic[FRAME], spk[FRAME];
    (void)arg;
    for (;;) {
        if (!board_read(mic)) { /* blocks for 20 ms of DMA: this is the frame clock */
            memset(mic, 0, sizeof mic);
        }
        xSemaphoreTake(fa.lock, portMAX_DELAY);
        mc_frame(&fa.mc, mic, spk);
        xSemaphoreGive(fa.lock);
        board_write(spk);
    }
}

static void peer_task(void *arg)
{
    (void)arg;
    for (;;) {
        for (size_t i = 0; i < MAX_PEERS; i++) {
            esp_peer_handle_t h = fa.peers[i].peer;
            if (h != NULL) {
                (void)esp_peer_main_loop(h);
            }
        }
        vTaskDelay(pdMS_TO_TICKS(10));
    }
}

/* ---- entry --------------------------------------------------------------------------------- */

esp_err_t fleet_audio_init(fleet_core_t *core)
{
    fa.core = core;
    fa.codec = BOARD_CODEC;
    fa.lock = xSemaphoreCreateMutex();
    if (fa.lock == NULL) {
        return ESP_ERR_NO_MEM;
    }
    mc_config_t mcfg = {.rate = RATE, .opus_bitrate = 24000, .opus = &opus_ops,
                        .send = send_rtp};
    if (!mc_init(&fa.mc, &mcfg)) {
        return ESP_ERR_INVALID_ARG;
    }
    esp_err_t err = board_init();
    if (err != ESP_OK) {
        ESP_LOGE(TAG, "board audio failed: %s", esp_err_to_name(err));
        return err;
    }
    (void)esp_peer_pre_generate_cert(); /* seconds of ECDSA: once, not per call */
    if (xTaskCreate(audio_task, "audio", AUDIO_STACK, NULL, 10, NULL) != pdPASS ||
        xTaskCreate(peer_task, "peer", PEER_STACK, NULL, 6, NULL) != pdPASS) {
        return ESP_ERR_NO_MEM;
    }
    ESP_LOGI(TAG, "audio up: %d Hz, %s", RATE, BOARD_SPEAKER ? "mic and speaker" : "mic only");
    return ESP_OK;
}

const fleet_media_t *fleet_audio_media(void)
{
    return fa.lock != NULL ? &media : NULL;
}

const fleet_player_t *fleet_audio_player(void)
{
    return fa.lock != NULL && BOARD_SPEAKER ? &player : NULL;
}

void fleet_audio_caps(fleet_caps_t *caps)
{
    memset(caps, 0, sizeof *caps);
    caps->audio = fa.lock != NULL;
    caps->mic = caps->audio;
    caps->speaker = caps->audio && BOARD_SPEAKER;
    caps->n_codecs = caps->audio ? 1 : 0;
    caps->codecs[0] = mc_codec_name(fa.codec);
}

size_t fleet_audio_stats(fleet_peer_audio_t *out, size_t cap)
{
    size_t n = 0;
    xSemaphoreTake(fa.lock, portMAX_DELAY);
    for (size_t i = 0; i < MAX_PEERS && n < cap; i++) {
        fa_peer_t *p = &fa.peers[i];
        const mc_peer_stats_t *st = p->used && p->negotiated ? mc_peer_stats(&fa.mc, p->mc_id)
                                                             : NULL;
        if (st != NULL) {
            memset(&out[n], 0, sizeof out[n]);
            out[n].peer = p->participant;
            out[n].packets_sent = st->packets_sent;
            out[n].packets_received = st->packets_received;
            out[n].packets_lost = st->packets_lost;
            out[n].has_jitter_ms = true;
            out[n].jitter_ms = st->jitter_ms;
            out[n].has_level = true;
            out[n].level = st->level;
            out[n].codec = mc_codec_name(fa.codec);
            n++;
        }
    }
    xSemaphoreGive(fa.lock);
    return n;
}

void fleet_audio_handle(const fleet_ev_t *ev)
{
    if (ev->type != FLEET_EV_MEDIA || ev->topic == NULL || ev->data == NULL) {
        return;
    }
    fa_peer_t *p = peer_find(ev->topic);
    if (ev->code == MEDIA_REJECT) {
        (void)fleet_core_send_reject(fa.core, ev->topic, NULL, ev->data);
    } else if (ev->code == MEDIA_CANDIDATE) {
        char *c = ev->data + (strncmp(ev->data, "a=", 2) == 0 ? 2 : 0);
        c[strcspn(c, "\r\n")] = '\0'; /* the protocol's value is the bare attribute */
        if (c[0] != '\0') {
            (void)fleet_core_send_candidate(fa.core, ev->topic, "0", c);
        }
    } else if (p != NULL && fleet_core_send_sdp(fa.core, ev->topic, p->we_offer, ev->data) &&
               !p->we_offer) {
        ESP_LOGI(TAG, "answer to %s sent", ev->topic);
    }
}

#endif /* CONFIG_FLEET_AUDIO */
