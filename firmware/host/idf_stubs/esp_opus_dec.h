/* esp_audio_codec 2.3.0 include/decoder/impl/esp_opus_dec.h (subset; main/ builds against 2.6.0 too). */
#pragma once
#include <stdbool.h>
#include "esp_audio_types.h"
typedef enum { ESP_OPUS_DEC_FRAME_DURATION_INVALID = -1, ESP_OPUS_DEC_FRAME_DURATION_2_5_MS = 0,
    ESP_OPUS_DEC_FRAME_DURATION_5_MS, ESP_OPUS_DEC_FRAME_DURATION_10_MS, ESP_OPUS_DEC_FRAME_DURATION_20_MS,
    ESP_OPUS_DEC_FRAME_DURATION_40_MS, ESP_OPUS_DEC_FRAME_DURATION_60_MS } esp_opus_dec_frame_duration_t;
typedef struct { uint32_t sample_rate; uint8_t channel; esp_opus_dec_frame_duration_t frame_duration;
                 bool self_delimited; } esp_opus_dec_cfg_t;
esp_audio_err_t esp_opus_dec_open(void *cfg, uint32_t cfg_sz, void **dec_handle);
esp_audio_err_t esp_opus_dec_decode(void *dec_handle, esp_audio_dec_in_raw_t *raw,
                                    esp_audio_dec_out_frame_t *frame, esp_audio_dec_info_t *dec_info);
esp_audio_err_t esp_opus_dec_close(void *dec_handle);
