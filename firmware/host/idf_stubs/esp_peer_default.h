/* esp_peer 1.2.3 include/esp_peer_default.h (subset; main/ builds against 1.5.4 too). */
#pragma once
#include "esp_peer.h"
typedef struct { uint32_t cache_timeout; uint32_t cache_size; } esp_peer_default_jitter_cfg_t;
typedef struct { esp_peer_default_jitter_cfg_t audio_recv_jitter; esp_peer_default_jitter_cfg_t video_recv_jitter;
                 int send_pool_size; int send_queue_num; int max_resend_count; } esp_peer_default_rtp_cfg_t;
typedef struct { uint16_t agent_recv_timeout; esp_peer_default_rtp_cfg_t rtp_cfg; uint8_t max_candidates;
                 uint8_t alive_binding_retries; } esp_peer_default_cfg_t;
const esp_peer_ops_t *esp_peer_get_default_impl(void);
