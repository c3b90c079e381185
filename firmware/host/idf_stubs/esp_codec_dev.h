/* esp_codec_dev 1.4.0 include/esp_codec_dev.h + esp_codec_dev_types.h (subset; main/ builds against 1.5.2 too). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#define ESP_CODEC_DEV_OK 0
#define ESP_CODEC_DEV_DRV_ERR (-1)
typedef enum { ESP_CODEC_DEV_TYPE_NONE, ESP_CODEC_DEV_TYPE_IN = (1 << 0), ESP_CODEC_DEV_TYPE_OUT = (1 << 1),
               ESP_CODEC_DEV_TYPE_IN_OUT = 3 } esp_codec_dev_type_t;
typedef struct { uint8_t bits_per_sample; uint8_t channel; uint16_t channel_mask; uint32_t sample_rate;
                 int mclk_multiple; } esp_codec_dev_sample_info_t;
typedef struct audio_codec_if_t audio_codec_if_t;
typedef struct audio_codec_data_if_t audio_codec_data_if_t;
typedef struct { esp_codec_dev_type_t dev_type; const audio_codec_if_t *codec_if;
                 const audio_codec_data_if_t *data_if; } esp_codec_dev_cfg_t;
typedef void *esp_codec_dev_handle_t;
esp_codec_dev_handle_t esp_codec_dev_new(esp_codec_dev_cfg_t *codec_dev_cfg);
int esp_codec_dev_open(esp_codec_dev_handle_t codec, esp_codec_dev_sample_info_t *fs);
int esp_codec_dev_read(esp_codec_dev_handle_t codec, void *data, int len);
int esp_codec_dev_write(esp_codec_dev_handle_t codec, void *data, int len);
int esp_codec_dev_set_out_vol(esp_codec_dev_handle_t codec, int volume);
int esp_codec_dev_set_in_gain(esp_codec_dev_handle_t codec, float db_value);
int esp_codec_dev_close(esp_codec_dev_handle_t codec);
