/* ESP-IDF driver/i2c_master.h (subset, v5.2+; esp_codec_dev takes its bus from v5.3). */
#pragma once
#include <stdint.h>
#include "esp_err.h"
#include "driver/gpio.h"
typedef enum { I2C_NUM_0 = 0, I2C_NUM_1 = 1 } i2c_port_num_t;
typedef enum { I2C_CLK_SRC_DEFAULT = 0 } i2c_clock_source_t;
typedef struct i2c_master_bus_t *i2c_master_bus_handle_t;
typedef struct { i2c_port_num_t i2c_port; gpio_num_t sda_io_num; gpio_num_t scl_io_num;
                 i2c_clock_source_t clk_source; uint8_t glitch_ignore_cnt; int intr_priority;
                 size_t trans_queue_depth; struct { uint32_t enable_internal_pullup : 1; } flags;
} i2c_master_bus_config_t;
esp_err_t i2c_new_master_bus(const i2c_master_bus_config_t *bus_config, i2c_master_bus_handle_t *ret_bus_handle);
