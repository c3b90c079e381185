/*
 * media_core.h - the device's audio path without the hardware (C99, no ESP header).
 *
 * Everything between the microphone/speaker and the WebRTC stack that can be decided in
 * portable code lives here, so that the host tests prove it:
 *  - 20 ms frame timing (mc_clock_t: drift-free deadlines, catches up or resyncs);
 *  - per peer: RTP parsing, a jitter buffer (mc_jitter_t), decoding, concealment of lost
 *    frames (the codec's PLC for Opus, a fading repeat for G.711), statistics;
 *  - the speaker mix: every decoded peer summed, scaled by the volume, clipped to int16;
 *  - the microphone: the mic gate (a muted mic sends silence, so the RTP clock and the
 *    peer's jitter buffer keep running), one encode per codec in use, RTP packets per peer;
 *  - choosing the codec from an SDP answer (mc_sdp_audio);
 *  - announcements (mc_ann_*): a bounded queue of encoded 20 ms frames (Opus or PCMU),
 *    decoded and played over the meeting mix at full level while the meeting is ducked to
 *    MC_DUCK_GAIN (ramps: MC_DUCK_DOWN_MS down, MC_DUCK_UP_MS back up after the last frame);
 *  - the ring tone (mc_ring): 440 + 480 Hz, 2 s on, 4 s off, ducking the meeting as well.
 * G.711 (PCMU/PCMA) is built in. Opus comes from the platform through mc_opus_ops_t
 * (libopus on the host, esp_audio_codec or libopus on the ESP32).
 *
 * The PCM rate of the core (mic in, speaker out) is one of 8000, 16000, 24000, 48000 Hz,
 * mono int16; a frame is rate / 50 samples. G.711 runs at 8 kHz and is resampled.
 * All storage is inside mc_t (no allocation except what the Opus ops allocate). Not
 * thread-safe: the caller serialises (one audio task, or a lock).
 */
#ifndef MEDIA_CORE_H
#define MEDIA_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef MC_MAX_PEERS
#define MC_MAX_PEERS 4 /* one mixer connection, or a small mesh */
#endif
#ifndef MC_JITTER_SLOTS
#define MC_JITTER_SLOTS 16 /* 320 ms of 20 ms packets: the most a peer may run ahead */
#endif
#define MC_FRAME_MS       20
#define MC_MAX_RATE       48000
#define MC_MAX_FRAME      (MC_MAX_RATE / 50) /* 960 samples */
#define MC_MAX_PAYLOAD    400                /* an RTP payload kept (20 ms Opus <= 510 kbps/8/50) */
#define MC_RTP_HEADER     12
#define MC_MAX_RTP        (MC_RTP_HEADER + MC_MAX_PAYLOAD)
#define MC_PREFILL_FRAMES 3  /* playout starts once 60 ms are buffered */
#define MC_IDLE_FRAMES    25 /* 500 ms without a packet: the peer paused, prefill again */
#define MC_CONCEAL_FRAMES 5  /* G.711: fade the last frame over this many, then silence */
#ifndef MC_ANN_BYTES
#define MC_ANN_BYTES 16384 /* encoded announcement audio held (the controller is ~1 s ahead) */
#endif
#ifndef MC_ANN_FRAMES
#define MC_ANN_FRAMES 100 /* 2 s of 20 ms frames */
#endif
#define MC_ANN_FRAME_MAX 1275 /* bytes: the largest Opus frame */
#define MC_DUCK_GAIN     0.25 /* the meeting's gain while an announcement or ring plays */
#define MC_DUCK_DOWN_MS  50
#define MC_DUCK_UP_MS    200
#define MC_RING_ON_MS    2000
#define MC_RING_OFF_MS   4000

typedef enum {
    MC_CODEC_NONE = 0,
    MC_CODEC_OPUS,
    MC_CODEC_PCMU,
    MC_CODEC_PCMA,
} mc_codec_t;

/* The codec's name as protocol caps spell it ("opus", "pcmu", "pcma"), "" for NONE. */
const char *mc_codec_name(mc_codec_t codec);
/* RTP clock rate (48000 for Opus, 8000 for G.711). */
uint32_t mc_codec_clock(mc_codec_t codec);

/* ---- RTP --------------------------------------------------------------------------------- */

typedef struct {
    uint8_t pt;
    bool marker;
    uint16_t seq;
    uint32_t ts;
    uint32_t ssrc;
    const uint8_t *payload; /* into the packet */
    size_t payload_len;
} mc_rtp_t;

/* False for anything that is not an RTP v2 packet with a payload (RFC 3550 5.1: CSRCs,
 * header extension and padding are skipped; RTCP packet types 200-204 are refused). */
bool mc_rtp_parse(const uint8_t *pkt, size_t len, mc_rtp_t *out);
/* Writes a 12-byte header and the payload; returns the packet length, 0 if cap is short. */
size_t mc_rtp_write(const mc_rtp_t *h, uint8_t *out, size_t cap);

/* ---- G.711 ------------------------------------------------------------------------------- */

uint8_t mc_ulaw_encode(int16_t s);
int16_t mc_ulaw_decode(uint8_t u);
uint8_t mc_alaw_encode(int16_t s);
int16_t mc_alaw_decode(uint8_t a);

/* ---- SDP --------------------------------------------------------------------------------- */

/* The first codec of the first audio m-line that is in `allowed` (a bit per mc_codec_t),
 * with its payload type; the m-line's format order is the offerer's preference, and an
 * answer lists only what was agreed. False: no audio line, or nothing in common. */
bool mc_sdp_audio(const char *sdp, size_t len, unsigned allowed, mc_codec_t *codec, uint8_t *pt);
#define MC_ALLOW(codec) (1u << (unsigned)(codec))

/* ---- frame timing ------------------------------------------------------------------------ */

typedef struct {
    uint64_t next_us; /* deadline of the next frame */
    uint32_t period_us;
    uint32_t resyncs; /* times it fell more than MC_CLOCK_MAX_BEHIND frames behind */
} mc_clock_t;
#define MC_CLOCK_MAX_BEHIND 5

void mc_clock_start(mc_clock_t *clk, uint64_t now_us);
/* Frames due at now_us (each advances the deadline by exactly one period, so there is no
 * drift); when more than MC_CLOCK_MAX_BEHIND are due, the clock resyncs and returns 1. */
unsigned mc_clock_due(mc_clock_t *clk, uint64_t now_us);
/* Microseconds until the next deadline (0 when due). */
uint32_t mc_clock_wait_us(const mc_clock_t *clk, uint64_t now_us);

/* ---- jitter buffer ----------------------------------------------------------------------- */

typedef struct {
    bool used;
    uint16_t seq;
    uint16_t len;
    uint8_t data[MC_MAX_PAYLOAD];
} mc_slot_t;

typedef enum {
    MC_POP_WAIT = 0, /* not playing (prefilling or idle): play silence, count nothing */
    MC_POP_FRAME,    /* a frame: *data, *len */
    MC_POP_LOST,     /* the frame due is missing: conceal it */
} mc_pop_t;

typedef struct {
    mc_slot_t slot[MC_JITTER_SLOTS];
    bool playing;
    bool have_next;
    uint16_t next_seq; /* the sequence number due at the next pop */
    unsigned buffered;
    unsigned misses; /* consecutive pops with nothing at all buffered */
    /* counters */
    uint32_t late;       /* arrived after its playout time */
    uint32_t duplicates; /* a sequence number already buffered */
    uint32_t resets;     /* jumps too far ahead: the buffer restarted */
    uint32_t dropped;    /* dropped to keep the delay down */
} mc_jitter_t;

void mc_jitter_reset(mc_jitter_t *jb);
/* Stores a payload; false if it was late, a duplicate or too big. */
bool mc_jitter_push(mc_jitter_t *jb, uint16_t seq, const uint8_t *payload, size_t len);
/* One frame's worth of playout. The slot it returns stays valid until the next push. */
mc_pop_t mc_jitter_pop(mc_jitter_t *jb, const uint8_t **data, size_t *len);

/* ---- Opus, from the platform ------------------------------------------------------------- */

typedef struct {
    void *ctx;
    /* Mono, `rate` Hz (one of the core rates), 20 ms frames. NULL on failure. */
    void *(*dec_new)(void *ctx, uint32_t rate);
    /* data NULL: conceal one frame (PLC). Returns samples written (<= max), < 0 on error. */
    int (*decode)(void *dec, const uint8_t *data, size_t len, int16_t *pcm, size_t max);
    void (*dec_free)(void *dec);
    void *(*enc_new)(void *ctx, uint32_t rate, uint32_t bitrate);
    /* One frame in, bytes written (<= cap), < 0 on error. */
    int (*encode)(void *enc, const int16_t *pcm, size_t n, uint8_t *out, size_t cap);
    void (*enc_free)(void *enc);
} mc_opus_ops_t;

/* ---- the core ---------------------------------------------------------------------------- */

typedef struct {
    uint32_t packets_sent;
    uint32_t packets_received;
    uint32_t packets_lost; /* frames concealed while playing */
    uint32_t late;
    uint32_t duplicates;
    uint32_t bad_packets;   /* not RTP, wrong payload type, or would not decode */
    uint64_t bytes_received; /* RTP payload bytes */
    uint64_t bytes_sent;
    double jitter_ms; /* RFC 3550 interarrival jitter */
    double level;     /* RMS of the last decoded frame, 0..1 */
} mc_peer_stats_t;

typedef struct {
    bool used;
    uint32_t id; /* the caller's handle */
    mc_codec_t codec;
    uint8_t pt;
    bool send;
    bool recv;
    /* receive */
    mc_jitter_t jb;
    void *dec; /* Opus decoder */
    bool have_transit;
    int64_t last_transit;
    double jitter_ts; /* in RTP clock units */
    int16_t last[MC_MAX_FRAME]; /* G.711 concealment: the last good frame, at the core rate */
    unsigned concealed_run;
    int16_t up_prev; /* G.711 upsampling: the last sample of the previous frame */
    /* send */
    uint16_t seq;
    uint32_t ts;
    uint32_t ssrc;
    mc_peer_stats_t stats;
} mc_peer_t;

/* What the core hands out per frame: one RTP packet for one peer (a stack that does RTP
 * itself takes the payload after MC_RTP_HEADER bytes and the timestamp in the header). */
typedef void (*mc_send_fn)(void *ctx, uint32_t peer_id, const uint8_t *rtp, size_t len);

typedef struct {
    uint32_t rate;         /* PCM rate of mic and speaker */
    uint32_t opus_bitrate; /* bits/s, 0 = 32000 */
    const mc_opus_ops_t *opus; /* NULL: no Opus in this build */
    mc_send_fn send;
    void *send_ctx;
    uint32_t ssrc_seed; /* the first peer's SSRC; each next peer gets the next one */
} mc_config_t;

/* The announcement player: frames in a byte ring (each with its length), played in order. */
typedef struct {
    uint8_t buf[MC_ANN_BYTES];
    struct {
        uint16_t off, len;
        uint16_t pad;  /* bytes skipped at buf's end before this frame */
        uint8_t codec; /* mc_codec_t */
    } frame[MC_ANN_FRAMES];
    size_t head, count; /* frame[] ring */
    size_t write;       /* where the next frame's bytes go in buf */
    size_t used;        /* bytes of buf held, skipped tail bytes included */
    uint32_t played;    /* frames played since the last flush */
    void *dec;          /* its own Opus decoder (the peers' keep their state) */
    int16_t up_prev;    /* PCMU upsampling */
    int32_t duck_q24;   /* the meeting's gain now, 1.0 = 1 << 24 */
    bool ring;
    uint32_t ring_pos; /* samples since the ring started */
} mc_ann_t;

typedef struct {
    mc_config_t cfg;
    size_t frame;           /* samples per frame at cfg.rate */
    bool mic_on;
    int volume;             /* 0..100 */
    int32_t gain_q15;       /* volume as a Q15 factor */
    void *enc;              /* Opus encoder, made when the first Opus peer is added */
    mc_peer_t peer[MC_MAX_PEERS];
    uint32_t next_ssrc;
    uint32_t clipped;       /* speaker samples clipped since start */
    double mic_level;       /* RMS of the last mic frame after the gate, 0..1 */
    uint32_t frames;        /* frames run */
    mc_ann_t ann;
    /* scratch */
    uint8_t enc_opus[MC_MAX_PAYLOAD];
    uint8_t enc_pcmu[MC_MAX_FRAME / 6]; /* 160: 20 ms at 8 kHz */
    uint8_t enc_pcma[MC_MAX_FRAME / 6];
    int16_t pcm[MC_MAX_FRAME];
    int16_t ann_pcm[MC_MAX_FRAME];
    int32_t acc[MC_MAX_FRAME];
    uint8_t pkt[MC_MAX_RTP];
} mc_t;

/* False for a rate the core does not run at. */
bool mc_init(mc_t *m, const mc_config_t *cfg);
/* Frees codec state; the core can be mc_init'ed again afterwards. */
void mc_deinit(mc_t *m);
size_t mc_frame_samples(const mc_t *m);

void mc_set_mic(mc_t *m, bool on);
void mc_set_volume(mc_t *m, int volume); /* clamped to 0..100; 100 = unity gain */

/* A negotiated connection. send/recv follow the SDP direction. False: no free slot, id in
 * use, or the codec is not available (Opus without ops). */
bool mc_peer_add(mc_t *m, uint32_t id, mc_codec_t codec, uint8_t pt, bool send, bool recv);
void mc_peer_remove(mc_t *m, uint32_t id);
/* The SSRC we send to this peer with, where the WebRTC stack announced one in its SDP. */
bool mc_peer_set_ssrc(mc_t *m, uint32_t id, uint32_t ssrc);
const mc_peer_stats_t *mc_peer_stats(const mc_t *m, uint32_t id);
size_t mc_peer_count(const mc_t *m);

/* An RTP packet from a peer, arrived at now_ms (for jitter). False if it was refused. */
bool mc_peer_rtp(mc_t *m, uint32_t id, const uint8_t *pkt, size_t len, uint64_t now_ms);
/* The same for a stack that does RTP itself (esp_peer hands out frames): one 20 ms payload
 * with its sequence number and RTP timestamp. */
bool mc_peer_payload(mc_t *m, uint32_t id, uint16_t seq, uint32_t ts, const uint8_t *payload,
                     size_t len, uint64_t now_ms);

/* One 20 ms frame: mic (frame samples, NULL = silence) goes through the gate and out to
 * every sending peer as RTP; the speaker frame is the mix of every receiving peer. */
void mc_frame(mc_t *m, const int16_t *mic, int16_t *speaker);

/* ---- announcements and the ring tone ----------------------------------------------------- */

/* Queues one encoded 20 ms frame (MC_CODEC_OPUS: any size up to MC_ANN_FRAME_MAX, needs the
 * Opus ops; MC_CODEC_PCMU: 160 bytes). False: the queue is full, or the frame is refused. */
bool mc_ann_push(mc_t *m, mc_codec_t codec, const uint8_t *data, size_t len);
/* Drops what is queued and zeroes the played count (the ducking ramps back up). */
void mc_ann_flush(mc_t *m);
/* Frames queued and not played yet; frames played since the last flush. */
void mc_ann_progress(const mc_t *m, uint32_t *queued, uint32_t *played);
/* The ring pattern on (from its start) or off. */
void mc_ring(mc_t *m, bool on);
/* The meeting's gain now (1.0, MC_DUCK_GAIN, or on a ramp between). */
double mc_duck_gain(const mc_t *m);

/* RMS of n samples, 0..1 (used for levels). */
double mc_rms(const int16_t *pcm, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* MEDIA_CORE_H */
