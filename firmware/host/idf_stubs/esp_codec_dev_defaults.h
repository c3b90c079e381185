/* esp_codec_dev 1.4.0 include/esp_codec_dev_defaults.h + device/include/es8311_codec.h + es7210_adc.h (subset; main/ builds against 1.5.2 too). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include "esp_codec_dev.h"
typedef struct audio_codec_ctrl_if_t audio_codec_ctrl_if_t;
typedef struct audio_codec_gpio_if_t audio_codec_gpio_if_t;
typedef enum { ESP_CODEC_DEV_WORK_MODE_NONE, ESP_CODEC_DEV_WORK_MODE_ADC = (1 << 0),
               ESP_CODEC_DEV_WORK_MODE_DAC = (1 << 1), ESP_CODEC_DEV_WORK_MODE_BOTH = 3 } esp_codec_dec_work_mode_t;
typedef struct { uint8_t port; uint8_t addr; void *bus_handle; } audio_codec_i2c_cfg_t;
typedef struct { uint8_t port; void *rx_handle; void *tx_handle; } audio_codec_i2s_cfg_t;
const audio_codec_gpio_if_t *audio_codec_new_gpio(void);
const audio_codec_ctrl_if_t *audio_codec_new_i2c_ctrl(audio_codec_i2c_cfg_t *i2c_cfg);
const audio_codec_data_if_t *audio_codec_new_i2s_data(audio_codec_i2s_cfg_t *i2s_cfg);
#define ES8311_CODEC_DEFAULT_ADDR (0x30)
typedef struct { float pa_voltage; float codec_dac_voltage; } esp_codec_dev_hw_gain_t;
typedef struct { const audio_codec_ctrl_if_t *ctrl_if; const audio_codec_gpio_if_t *gpio_if;
                 esp_codec_dec_work_mode_t codec_mode; int16_t pa_pin; bool pa_reverted; bool master_mode;
                 bool use_mclk; bool digital_mic; bool invert_mclk; bool invert_sclk;
                 esp_codec_dev_hw_gain_t hw_gain; bool no_dac_ref; uint16_t mclk_div; } es8311_codec_cfg_t;
const audio_codec_if_t *es8311_codec_new(es8311_codec_cfg_t *codec_cfg);
#define ES7210_CODEC_DEFAULT_ADDR (0x80)
#define ES7210_SEL_MIC1 (1 << 0)
#define ES7210_SEL_MIC2 (1 << 1)
typedef struct { const audio_codec_ctrl_if_t *ctrl_if; bool master_mode; uint8_t mic_selected;
                 int mclk_src; uint16_t mclk_div; } es7210_codec_cfg_t;
const audio_codec_if_t *es7210_codec_new(es7210_codec_cfg_t *codec_cfg);
