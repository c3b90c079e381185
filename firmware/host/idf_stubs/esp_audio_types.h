/* esp_audio_codec 2.3.0 include/esp_audio_types.h + esp_audio_enc.h + esp_audio_dec.h (subset; main/ builds against 2.6.0 too). */
#pragma once
#include <stdint.h>
typedef enum { ESP_AUDIO_ERR_OK = 0, ESP_AUDIO_ERR_FAIL = -1, ESP_AUDIO_ERR_MEM_LACK = -2,
               ESP_AUDIO_ERR_INVALID_PARAMETER = -4 } esp_audio_err_t;
typedef struct { uint8_t *buffer; uint32_t len; } esp_audio_enc_in_frame_t;
typedef struct { uint8_t *buffer; uint32_t len; uint32_t encoded_bytes; uint64_t pts; } esp_audio_enc_out_frame_t;
typedef enum { ESP_AUDIO_DEC_RECOVERY_NONE = 0, ESP_AUDIO_DEC_RECOVERY_PLC = 1 } esp_audio_dec_recovery_t;
typedef struct { uint8_t *buffer; uint32_t len; uint32_t consumed; esp_audio_dec_recovery_t frame_recover; } esp_audio_dec_in_raw_t;
typedef struct { uint8_t *buffer; uint32_t len; uint32_t needed_size; uint32_t decoded_size; } esp_audio_dec_out_frame_t;
typedef struct { uint32_t sample_rate; uint8_t bits_per_sample; uint8_t channel; uint32_t bitrate;
                 uint32_t frame_size; } esp_audio_dec_info_t;
