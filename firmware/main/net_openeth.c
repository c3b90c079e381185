/*
 * net_openeth.c - the network as the OpenCores Ethernet MAC that Espressif's QEMU emulates
 * (-nic user,model=open_eth): the same events as a Wi-Fi station (net.h), so app_main and
 * the port cannot tell. The emulated cable never drops, and DHCP renews by itself: there is
 * nothing to reconnect.
 */
#include "net.h"
#include "sdkconfig.h"

#if CONFIG_FLEET_NET_OPENETH

#include <stdio.h>
#include <string.h>

#include "esp_eth.h"
#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"

static const char *TAG = "fleet_eth";

static uint32_t reconnects;
static bool ever_connected;

/* Runs on the default event loop task: copy and enqueue, nothing else. */
static void on_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    fleet_ev_t ev;
    (void)arg;
    memset(&ev, 0, sizeof ev);
    if (base == ETH_EVENT && id == ETHERNET_EVENT_CONNECTED) {
        ev.type = FLEET_EV_WIFI_START; /* the link is up: DHCP follows by itself */
    } else if (base == ETH_EVENT && id == ETHERNET_EVENT_DISCONNECTED) {
        ev.type = FLEET_EV_WIFI_DISCONNECTED;
    } else if (base == IP_EVENT && id == IP_EVENT_ETH_GOT_IP) {
        const ip_event_got_ip_t *got = data;
        ev.type = FLEET_EV_WIFI_GOT_IP;
        snprintf(ev.text, sizeof ev.text, IPSTR, IP2STR(&got->ip_info.ip));
    } else {
        return;
    }
    fleet_ev_post(&ev);
}

esp_err_t fleet_net_start(const char *ssid, const char *pass)
{
    (void)ssid;
    (void)pass;
    esp_netif_config_t netif_cfg = ESP_NETIF_DEFAULT_ETH();
    esp_netif_t *netif = esp_netif_new(&netif_cfg);
    if (netif == NULL) {
        return ESP_ERR_NO_MEM;
    }
    eth_mac_config_t mac_cfg = ETH_MAC_DEFAULT_CONFIG();
    eth_phy_config_t phy_cfg = ETH_PHY_DEFAULT_CONFIG();
    phy_cfg.autonego_timeout_ms = 100; /* the emulated PHY answers at once */
    esp_eth_mac_t *mac = esp_eth_mac_new_openeth(&mac_cfg);
    esp_eth_phy_t *phy = esp_eth_phy_new_dp83848(&phy_cfg);
    if (mac == NULL || phy == NULL) {
        return ESP_ERR_NO_MEM;
    }
    esp_eth_config_t eth_cfg = ETH_DEFAULT_CONFIG(mac, phy);
    esp_eth_handle_t eth = NULL;
    ESP_ERROR_CHECK(esp_eth_driver_install(&eth_cfg, &eth));
    ESP_ERROR_CHECK(esp_netif_attach(netif, esp_eth_new_netif_glue(eth)));
    ESP_ERROR_CHECK(esp_event_handler_register(ETH_EVENT, ESP_EVENT_ANY_ID, on_event, NULL));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_ETH_GOT_IP, on_event, NULL));
    ESP_LOGI(TAG, "starting OpenCores Ethernet");
    return esp_eth_start(eth);
}

void fleet_net_handle(const fleet_ev_t *ev, uint64_t now_ms)
{
    (void)now_ms;
    switch (ev->type) {
        case FLEET_EV_WIFI_START:
            ESP_LOGI(TAG, "link up");
            break;
        case FLEET_EV_WIFI_DISCONNECTED:
            ESP_LOGW(TAG, "link down");
            break;
        case FLEET_EV_WIFI_GOT_IP:
            ESP_LOGI(TAG, "got ip %s", ev->text);
            if (ever_connected) {
                reconnects++;
            }
            ever_connected = true;
            break;
        default:
            break;
    }
}

void fleet_net_poll(uint64_t now_ms)
{
    (void)now_ms;
}

uint32_t fleet_net_reconnects(void)
{
    return reconnects;
}

bool fleet_net_radio_info(int32_t *rssi, int32_t *channel)
{
    (void)rssi;
    (void)channel;
    return false;
}

#endif /* CONFIG_FLEET_NET_OPENETH */
