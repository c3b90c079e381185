/* ESP-IDF v5.3.1 components/esp_eth/include/esp_eth.h: esp_eth_driver.h, esp_eth_com.h,
 * esp_eth_mac.h, esp_eth_mac_openeth.h, esp_eth_phy.h, esp_eth_netif_glue.h (subset). */
#pragma once
#include <stdint.h>
#include <stdbool.h>
#include "esp_err.h"
#include "esp_event.h"
typedef void *esp_eth_handle_t;
typedef struct esp_eth_netif_glue_t *esp_eth_netif_glue_handle_t;
typedef struct esp_eth_mac_s esp_eth_mac_t;
typedef struct esp_eth_phy_s esp_eth_phy_t;
extern const char *ETH_EVENT;
typedef enum { ETHERNET_EVENT_START, ETHERNET_EVENT_STOP, ETHERNET_EVENT_CONNECTED,
               ETHERNET_EVENT_DISCONNECTED } eth_event_t;
typedef struct { uint32_t sw_reset_timeout_ms; uint32_t rx_task_stack_size; uint32_t rx_task_prio;
                 uint32_t flags; } eth_mac_config_t;
#define ETH_MAC_DEFAULT_CONFIG() \
    { .sw_reset_timeout_ms = 100, .rx_task_stack_size = 4096, .rx_task_prio = 15, .flags = 0 }
typedef struct { int32_t phy_addr; uint32_t reset_timeout_ms; uint32_t autonego_timeout_ms;
                 int reset_gpio_num; } eth_phy_config_t;
#define ETH_PHY_DEFAULT_CONFIG() \
    { .phy_addr = -1, .reset_timeout_ms = 100, .autonego_timeout_ms = 4000, .reset_gpio_num = 5 }
typedef struct { esp_eth_mac_t *mac; esp_eth_phy_t *phy; uint32_t check_link_period_ms; } esp_eth_config_t;
#define ETH_DEFAULT_CONFIG(emac, ephy) { .mac = emac, .phy = ephy, .check_link_period_ms = 2000 }
esp_eth_mac_t *esp_eth_mac_new_openeth(const eth_mac_config_t *config);
esp_eth_phy_t *esp_eth_phy_new_dp83848(const eth_phy_config_t *config);
esp_err_t esp_eth_driver_install(const esp_eth_config_t *config, esp_eth_handle_t *out_hdl);
esp_err_t esp_eth_start(esp_eth_handle_t hdl);
esp_eth_netif_glue_handle_t esp_eth_new_netif_glue(esp_eth_handle_t eth_hdl);
