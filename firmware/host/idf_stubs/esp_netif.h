/* ESP-IDF components/esp_netif/include/esp_netif.h + esp_netif_ip_addr.h (subset). */
#pragma once
#include <stdint.h>
#include "esp_err.h"
#include "esp_event.h"
typedef struct esp_netif_obj esp_netif_t;
typedef struct { uint32_t addr; } esp_ip4_addr_t;
typedef struct { esp_ip4_addr_t ip, netmask, gw; } esp_netif_ip_info_t;
typedef struct { esp_netif_t *esp_netif; esp_netif_ip_info_t ip_info; bool ip_changed; } ip_event_got_ip_t;
#define esp_ip4_addr_get_byte(ipaddr, idx) (((const uint8_t *)(&(ipaddr)->addr))[idx])
#define IP2STR(ipaddr) esp_ip4_addr_get_byte(ipaddr, 0), esp_ip4_addr_get_byte(ipaddr, 1), \
    esp_ip4_addr_get_byte(ipaddr, 2), esp_ip4_addr_get_byte(ipaddr, 3)
#define IPSTR "%d.%d.%d.%d"
extern const char *IP_EVENT;
typedef enum { IP_EVENT_STA_GOT_IP, IP_EVENT_STA_LOST_IP, IP_EVENT_AP_STAIPASSIGNED, IP_EVENT_GOT_IP6,
               IP_EVENT_ETH_GOT_IP } ip_event_t;
esp_err_t esp_netif_init(void);
esp_netif_t *esp_netif_create_default_wifi_sta(void);
/* esp_netif_defaults.h: ESP_NETIF_DEFAULT_ETH() fills this from IDF's own defaults. */
typedef struct { const void *base; const void *driver; const void *stack; } esp_netif_config_t;
extern const void *_g_esp_netif_inherent_eth_config, *_g_esp_netif_netstack_default_eth;
#define ESP_NETIF_DEFAULT_ETH() \
    { .base = _g_esp_netif_inherent_eth_config, .driver = NULL, .stack = _g_esp_netif_netstack_default_eth }
typedef void *esp_netif_iodriver_handle;
esp_netif_t *esp_netif_new(const esp_netif_config_t *esp_netif_config);
esp_err_t esp_netif_attach(esp_netif_t *esp_netif, esp_netif_iodriver_handle driver_handle);
