/* esp_peer 1.2.3 include/esp_peer.h + esp_peer_types.h (subset; esp_peer_pre_generate_cert arrives in 1.2.3; main/ builds against 1.5.4 too). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
typedef enum { ESP_PEER_ERR_NONE = 0, ESP_PEER_ERR_INVALID_ARG = -1, ESP_PEER_ERR_NO_MEM = -2,
               ESP_PEER_ERR_WRONG_STATE = -3, ESP_PEER_ERR_NOT_SUPPORT = -4 } esp_peer_err_t;
typedef enum { ESP_PEER_ROLE_CONTROLLING, ESP_PEER_ROLE_CONTROLLED } esp_peer_role_t;
typedef struct { char *stun_url; char *user; char *psw; } esp_peer_ice_server_cfg_t;
typedef enum { ESP_PEER_STATE_CLOSED = 0, ESP_PEER_STATE_DISCONNECTED = 1, ESP_PEER_STATE_NEW_CONNECTION = 2,
    ESP_PEER_STATE_CANDIDATE_GATHERING = 3, ESP_PEER_STATE_PAIRING = 4, ESP_PEER_STATE_PAIRED = 5,
    ESP_PEER_STATE_CONNECTING = 6, ESP_PEER_STATE_CONNECTED = 7, ESP_PEER_STATE_CONNECT_FAILED = 8 } esp_peer_state_t;
typedef enum { ESP_PEER_VIDEO_CODEC_NONE = 0, ESP_PEER_VIDEO_CODEC_H264 = 1 } esp_peer_video_codec_t;
typedef enum { ESP_PEER_AUDIO_CODEC_NONE = 0, ESP_PEER_AUDIO_CODEC_G711A = 1, ESP_PEER_AUDIO_CODEC_G711U = 2,
               ESP_PEER_AUDIO_CODEC_OPUS = 3 } esp_peer_audio_codec_t;
typedef enum { ESP_PEER_MEDIA_DIR_NONE = 0, ESP_PEER_MEDIA_DIR_SEND_ONLY = (1 << 0),
               ESP_PEER_MEDIA_DIR_RECV_ONLY = (1 << 1), ESP_PEER_MEDIA_DIR_SEND_RECV = 3 } esp_peer_media_dir_t;
typedef enum { ESP_PEER_ICE_TRANS_POLICY_ALL = 0, ESP_PEER_ICE_TRANS_POLICY_RELAY = 1 } esp_peer_ice_trans_policy_t;
typedef struct { esp_peer_video_codec_t codec; int width; int height; int fps; } esp_peer_video_stream_info_t;
typedef struct { esp_peer_audio_codec_t codec; uint32_t sample_rate; uint8_t channel; } esp_peer_audio_stream_info_t;
typedef struct { uint32_t pts; uint8_t *data; int size; } esp_peer_video_frame_t;
typedef struct { uint32_t pts; uint8_t *data; int size; } esp_peer_audio_frame_t;
typedef enum { ESP_PEER_MSG_TYPE_NONE, ESP_PEER_MSG_TYPE_SDP, ESP_PEER_MSG_TYPE_CANDIDATE } esp_peer_msg_type_t;
typedef struct { esp_peer_msg_type_t type; uint8_t *data; int size; } esp_peer_msg_t;
typedef void *esp_peer_handle_t;
typedef struct {
    esp_peer_ice_server_cfg_t *server_lists; uint8_t server_num; esp_peer_role_t role;
    esp_peer_ice_trans_policy_t ice_trans_policy; esp_peer_audio_stream_info_t audio_info;
    esp_peer_video_stream_info_t video_info; esp_peer_media_dir_t audio_dir; esp_peer_media_dir_t video_dir;
    bool no_auto_reconnect; bool enable_data_channel; bool manual_ch_create; void *extra_cfg; int extra_size;
    void *ctx;
    int (*on_state)(esp_peer_state_t state, void *ctx);
    int (*on_msg)(esp_peer_msg_t *info, void *ctx);
    int (*on_video_info)(esp_peer_video_stream_info_t *info, void *ctx);
    int (*on_audio_info)(esp_peer_audio_stream_info_t *info, void *ctx);
    int (*on_audio_data)(esp_peer_audio_frame_t *frame, void *ctx);
    int (*on_video_data)(esp_peer_video_frame_t *frame, void *ctx);
} esp_peer_cfg_t;
typedef struct esp_peer_ops esp_peer_ops_t;
int esp_peer_open(esp_peer_cfg_t *cfg, const esp_peer_ops_t *ops, esp_peer_handle_t *peer);
int esp_peer_new_connection(esp_peer_handle_t peer);
int esp_peer_send_msg(esp_peer_handle_t peer, esp_peer_msg_t *msg);
int esp_peer_send_audio(esp_peer_handle_t peer, esp_peer_audio_frame_t *info);
int esp_peer_main_loop(esp_peer_handle_t peer);
int esp_peer_close(esp_peer_handle_t peer);
int esp_peer_pre_generate_cert(void);
